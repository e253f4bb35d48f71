"""Stage 1: the EDM teacher diffusion model at the base resolution (PaGoDA Sec. 3.1; EDM Sec. 5)."""

import copy

import torch

from . import edm, loop
from .adm import save_imported_teacher
from .checkpoints import save_network
from .data import as_images, dataset_path, load_dataset, to_model
from .networks import NULL_LABEL, UNet, UNetConfig, num_params


class TeacherTask:
    """One Adam step on the EDM loss per call, EMA after every step."""

    def __init__(self, net, images, labels, *, batch_size=128, lr=1e-3, lr_warmup_steps=200, ema_decay=0.999,
                 p_mean=-1.2, p_std=1.2, label_dropout=0.0, sigma_data=edm.SIGMA_DATA, device="cpu"):
        self.net = net.to(device).train()
        self.ema = copy.deepcopy(self.net).eval().requires_grad_(False)
        self.images = as_images(images)          # uint8 (N, C, R, R), kept on CPU
        self.labels = torch.as_tensor(labels)
        self.batch_size, self.lr, self.lr_warmup_steps = batch_size, lr, lr_warmup_steps
        self.ema_decay, self.p_mean, self.p_std, self.sigma_data = ema_decay, p_mean, p_std, sigma_data
        self.label_dropout = label_dropout
        self.device = device
        self.opt = torch.optim.Adam(self.net.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8)

    def modules(self):
        return {"net": self.net, "ema": self.ema}

    def optimizers(self):
        return {"adam": self.opt}

    def save_snapshot(self, path, *, step):
        """The EMA network after `step` steps, in the teacher's format: a weaker teacher (teacher_quality ablation)."""
        save_network(path, self.ema, kind="teacher", meta={"steps": step})

    def step(self, step, generator):
        loss = self.gradients(step, generator)
        lr = self.lr * min(1.0, (step + 1) / max(1, self.lr_warmup_steps))
        for group in self.opt.param_groups:
            group["lr"] = lr
        for p in self.net.parameters():  # EDM: zero out non-finite gradients instead of crashing
            if p.grad is not None:
                torch.nan_to_num_(p.grad, nan=0, posinf=0, neginf=0)
        self.opt.step()
        loop.ema_update(self.ema, self.net, decay=self.ema_decay, step=step)
        return {"loss": loss, "lr": lr}

    def gradients(self, step, generator):
        """Fill .grad with the global-batch mean gradient of the EDM loss; return the loss."""
        # The whole global batch is drawn on every rank from the step's generator; each rank keeps its slice.
        n = self.batch_size
        idx = torch.randint(len(self.images), (n,), generator=generator, device=generator.device).cpu()
        sigma = edm.sample_training_sigma(n, p_mean=self.p_mean, p_std=self.p_std, generator=generator,
                                          device=generator.device)
        noise = torch.randn((n, *self.images.shape[1:]), generator=generator, device=generator.device)
        sl = loop.rank_slice(n)
        x = to_model(self.images[idx[sl]]).to(self.device)
        y = self.labels[idx[sl]].to(self.device) if self.net.label_emb is not None else None
        if y is not None and self.label_dropout > 0:  # drawn last: without dropout the batch stays as it was
            drop = torch.rand(n, generator=generator, device=generator.device)[sl].to(self.device) < self.label_dropout
            y = torch.where(drop, NULL_LABEL, y)  # classifier-free guidance's null class (Ho & Salimans 2022)
        loss = edm.edm_loss(self.net, x, y, sigma=sigma[sl].to(self.device), noise=noise[sl].to(self.device),
                            sigma_data=self.sigma_data).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        loop.average_gradients(self.net.parameters())
        return loop.mean_over_ranks(loss.detach()).item()


def train_teacher(*, data_dir, resolution, run_dir, out_path, network, total_steps=2000, batch_size=128,
                  lr=1e-3, lr_warmup_steps=200, ema_decay=0.999, p_mean=-1.2, p_std=1.2, label_dropout=0.0, seed=0,
                  checkpoint_every=500, snapshot_steps=(), log_every=None, device="auto", progress=True,
                  max_steps_this_call=None, import_path=None):
    """Train the class-conditional teacher on {data_dir}/train_{resolution}.npz; write `out_path` when done.

    `network` is a dict of UNetConfig fields (img_resolution, channels and classes come from the data).
    With `import_path` (paper scale) nothing is trained: the ADM-format checkpoint there (the EDM
    ImageNet-64 teacher) is mapped onto that network and written to `out_path` (`pagoda.adm`).
    At each of `snapshot_steps` the EMA network is also kept, as run_dir/snapshots/step-*.pt: the weaker
    teachers of the teacher_quality ablation. `label_dropout`: the fraction of training labels replaced by
    the null class, so that one network is also the unconditional denoiser of classifier-free guidance.
    Returns a summary dict (steps, final loss, parameter count, seconds, device).
    """
    device = loop.resolve_device(device)
    loop.init_distributed(device)
    images, labels, classes = load_dataset(data_dir, "train", resolution)
    cfg = UNetConfig(**{**network, "img_resolution": resolution, "in_channels": images.shape[1],
                        "out_channels": images.shape[1], "num_classes": len(classes)})
    if import_path is not None:
        meta = save_imported_teacher(import_path, out_path, network=cfg) if loop.rank() == 0 else {}
        return {"imported_from": str(import_path), **meta, "classes": list(classes), "resolution": resolution}
    torch.manual_seed(seed)  # the initial weights
    task = TeacherTask(UNet(cfg), images, labels, batch_size=batch_size, lr=lr, lr_warmup_steps=lr_warmup_steps,
                       ema_decay=ema_decay, p_mean=p_mean, p_std=p_std, label_dropout=label_dropout, device=device)
    loop.prepare_run_dir(run_dir, {"stage": "teacher", "network": cfg.to_dict(), "batch_size": batch_size, "lr": lr,
                                   "lr_warmup_steps": lr_warmup_steps, "ema_decay": ema_decay, "p_mean": p_mean,
                                   "p_std": p_std, "label_dropout": label_dropout, "seed": seed,
                                   "snapshot_steps": sorted(snapshot_steps), "world_size": loop.world_size(),
                                   "data": loop.file_fingerprint(dataset_path(data_dir, "train", resolution))})
    rows = loop.run(task, run_dir=run_dir, total_steps=total_steps, seed=seed, checkpoint_every=checkpoint_every,
                    snapshot_steps=set(snapshot_steps), log_every=log_every, device=device, progress=progress,
                    desc="teacher", max_steps_this_call=max_steps_this_call)
    done = bool(rows) and rows[-1]["step"] == total_steps
    timing = loop.read_timing(run_dir)
    summary = {"steps": rows[-1]["step"] if rows else 0, "final_loss": rows[-1]["loss"] if rows else None,
               "params": num_params(task.net), "seconds": timing["seconds"], "device": timing["device"],
               "classes": list(classes), "resolution": resolution,
               **({"label_dropout": label_dropout} if label_dropout else {})}  # recorded where there is a null class
    if done and loop.rank() == 0:
        save_network(out_path, task.net, kind="teacher", ema=task.ema, meta=summary)
    return summary
