"""The guidance scale of an image (PaGoDA Sec. 4, App. A.2): an estimator omega_phi(x, c).

A guided decoder's discriminator sees (image, class, omega). For its fake images omega is the one G was
given; a real image has none, so the paper trains a small network with MSE to predict omega from the
teacher's classifier-free-guided samples at known omega, and labels each real image with its prediction.
The simpler choice it is compared with draws the real images' omega uniformly (`decoder.DecoderTask`).
"""

import pathlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import edm, loop
from .checkpoints import load_network, load_small_network, save_small_network
from .data import load_dataset, to_model
from .encode import encoding_omegas
from .judge import FlippedBatchTask
from .sampling import batched, class_labels, image_noise, seeds_for

SAMPLE_SEED_OFFSET = 500  # the estimator's teacher samples use seeds_for(n, seed + 500): not the evaluation's


class OmegaEstimator(nn.Module):
    """omega_phi(x, c): stride-2 conv-SiLU stages down to 4x4, global average pool, plus a class embedding,
    then a two-layer MLP to one number."""

    def __init__(self, in_channels=1, num_classes=10, resolution=8, width=32):
        super().__init__()
        layers, c, r = [nn.Conv2d(in_channels, width, 3, padding=1), nn.SiLU()], width, resolution
        while r > 4:
            layers += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.SiLU()]
            c, r = 2 * c, r // 2
        self.body = nn.Sequential(*layers)
        self.embed = nn.Embedding(num_classes, c)
        self.head = nn.Sequential(nn.Linear(c, c), nn.SiLU(), nn.Linear(c, 1))
        self.hparams = {"in_channels": in_channels, "num_classes": num_classes, "resolution": resolution,
                        "width": width}

    def forward(self, x, labels):
        return self.head(self.body(x).mean(dim=(2, 3)) + self.embed(labels)).squeeze(1)


@torch.no_grad()
def guided_samples(net, *, n, omega_range, num_points=40, seed=0, batch_size=500, device="cpu", progress=False):
    """n classifier-free-guided teacher samples at omega ~ U(omega_range), balanced classes: (x, labels, omega)."""
    cfg = net.config
    labels = class_labels(n, cfg.num_classes)
    omega = torch.as_tensor(encoding_omegas(n, omega_range, seed=seed + SAMPLE_SEED_OFFSET))
    seeds = seeds_for(n, seed + SAMPLE_SEED_OFFSET)

    def one(sl):
        z = edm.SIGMA_MAX * image_noise(seeds[sl], (cfg.in_channels, cfg.img_resolution, cfg.img_resolution), device)
        x, _ = edm.ode_to_data(net, z, labels[sl].to(device), num_points=num_points, omega=omega[sl].to(device))
        return x.cpu()
    return batched(one, n, batch_size, progress=progress, desc="guided teacher samples"), labels, omega


class OmegaTask(FlippedBatchTask):
    """MSE between omega_phi(x, c) and the omega the teacher's sample x was drawn at (flips leave omega as it is)."""

    def __init__(self, net, x, labels, omega, **kwargs):
        super().__init__(net, len(x), **kwargs)
        self.x, self.labels, self.omega = x, labels, omega

    def inputs(self, idx):
        return self.x[idx]

    def loss(self, x, idx):
        return F.mse_loss(self.net(x, self.labels[idx].to(self.device)), self.omega[idx].to(self.device))


@torch.no_grad()
def predict_omega(net, x, labels, *, batch_size=1000):
    """omega_phi of images in [-1, 1] (a float32 numpy array)."""
    net.eval()
    dev = next(net.parameters()).device
    return torch.cat([net(x[b:b + batch_size].to(dev), labels[b:b + batch_size].to(dev)).cpu()
                      for b in range(0, len(x), batch_size)]).numpy()


def estimator_accuracy(predicted, omega, *, bins=5):
    """How well predictions match the true omegas: RMSE, Pearson r, and the mean prediction per omega bin."""
    predicted, omega = np.asarray(predicted, np.float64), np.asarray(omega, np.float64)
    edges = np.linspace(omega.min(), omega.max(), bins + 1)
    which = np.clip(np.searchsorted(edges, omega, side="right") - 1, 0, bins - 1)
    return {"rmse": float(np.sqrt(np.mean((predicted - omega) ** 2))),
            "pearson_r": float(np.corrcoef(predicted, omega)[0, 1]),
            "bins": [{"omega": float(omega[which == b].mean()), "predicted": float(predicted[which == b].mean()),
                      "n": int((which == b).sum())} for b in range(bins) if (which == b).any()]}


def train_omega_estimator(*, teacher_path, run_dir, out_path, omega_range, n_train=2000, n_test=500, num_points=40,
                          steps=1000, batch_size=128, lr=3e-3, width=32, seed=0, device="auto", progress=True):
    """Train omega_phi on `n_train` guided teacher samples; measure it on `n_test` held-out ones.

    The samples are kept in run_dir/samples.npz (they are most of the cost), so a resumed run draws none again.
    """
    device = loop.resolve_device(device)
    teacher, meta = load_network(teacher_path, device=device, expect_kind="teacher")
    if not meta.get("label_dropout"):
        raise ValueError(f"{teacher_path} was trained without label dropout: it has no null class to guide with")
    fingerprint = {"stage": "omega_estimator", "teacher": loop.file_fingerprint(teacher_path),
                   "omega_range": list(omega_range), "n_train": n_train, "n_test": n_test, "num_points": num_points,
                   "steps": steps, "batch_size": batch_size, "lr": lr, "width": width, "seed": seed}
    loop.prepare_run_dir(run_dir, fingerprint, stale=("checkpoints", "metrics.jsonl", "timing.json", "samples.npz"))
    cache = pathlib.Path(run_dir, "samples.npz")
    if not cache.exists():
        x, y, w = guided_samples(teacher, n=n_train + n_test, omega_range=omega_range, num_points=num_points,
                                 seed=seed, device=device, progress=progress)
        np.savez(cache.with_name("samples.tmp.npz"), x=x.numpy(), labels=y.numpy(), omega=w.numpy())
        cache.with_name("samples.tmp.npz").replace(cache)
    with np.load(cache) as f:
        x, y, w = (torch.as_tensor(f[k]) for k in ("x", "labels", "omega"))
    cfg = teacher.config
    torch.manual_seed(seed)
    net = OmegaEstimator(cfg.in_channels, cfg.num_classes, cfg.img_resolution, width)
    task = OmegaTask(net, x[:n_train], y[:n_train], w[:n_train], total_steps=steps, batch_size=batch_size, lr=lr,
                     device=device)
    rows = loop.run(task, run_dir=run_dir, total_steps=steps, seed=seed, checkpoint_every=max(1, steps // 3),
                    device=device, progress=progress, desc="omega estimator")
    held_out = estimator_accuracy(predict_omega(net, x[n_train:], y[n_train:]), w[n_train:].numpy())
    summary = {"steps": rows[-1]["step"], "final_loss": rows[-1]["loss"], "omega_range": list(omega_range),
               "n_train": n_train, "n_test": n_test, "held_out": held_out,
               "seconds": loop.read_timing(run_dir)["seconds"]}
    save_small_network(out_path, net, summary)
    return summary


def load_omega_estimator(path, device="cpu"):
    """(OmegaEstimator in eval mode, frozen; its training summary)."""
    return load_small_network(path, OmegaEstimator, device)


def label_real_images(*, estimator_path, data_dir, out_path, device="cpu"):
    """omega_phi of every training image at the estimator's resolution: {out_path} holds `omega`, one per image
    in the training set's order (the same images at every resolution), for the guided GAN's real term."""
    net, _ = load_omega_estimator(estimator_path, device=device)
    images, labels, _ = load_dataset(data_dir, "train", net.hparams["resolution"])
    omega = np.concatenate([predict_omega(net, to_model(images[b:b + 1000]), torch.as_tensor(labels[b:b + 1000]))
                            for b in range(0, len(images), 1000)]).astype(np.float32)
    pathlib.Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    np.savez(out_path, omega=omega)
    return {"images": len(omega), "mean": float(omega.mean()), "std": float(omega.std()),
            "quantiles": {q: float(np.quantile(omega, q)) for q in (0.05, 0.5, 0.95)}}
