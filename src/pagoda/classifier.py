"""A small CNN classifier of the real images, the judge of class transfer (paper Sec. 5.2)."""

import torch
import torch.nn.functional as F
from torch import nn

from . import loop
from .checkpoints import load_checkpoint
from .data import as_images, load_dataset, to_model


class SmallCNN(nn.Module):
    """conv-bn-relu x2 per stage, max-pool between stages, global average pool, linear."""

    def __init__(self, in_channels=1, num_classes=10, width=32):
        super().__init__()
        layers, c = [], in_channels
        for w in (width, 2 * width, 4 * width):
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
                       nn.Conv2d(w, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2)]
            c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, num_classes)
        self.hparams = {"in_channels": in_channels, "num_classes": num_classes, "width": width}

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


class ClassifierTask:
    def __init__(self, net, images, labels, *, batch_size=128, lr=2e-3, device="cpu"):
        self.net = net.to(device).train()
        self.images, self.labels = as_images(images), torch.as_tensor(labels)
        self.batch_size, self.device = batch_size, device
        self.opt = torch.optim.Adam(self.net.parameters(), lr=lr)

    def modules(self):
        return {"net": self.net}

    def optimizers(self):
        return {"adam": self.opt}

    def step(self, step, generator):
        n = self.batch_size
        idx = torch.randint(len(self.images), (n,), generator=generator, device=generator.device).cpu()
        flip = (torch.rand(n, generator=generator, device=generator.device) < 0.5).cpu()[loop.rank_slice(n)]
        idx = idx[loop.rank_slice(n)]
        x = to_model(self.images[idx])
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x).to(self.device)
        loss = F.cross_entropy(self.net(x), self.labels[idx].to(self.device))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        loop.average_gradients(self.net.parameters())
        self.opt.step()
        return {"loss": loop.mean_over_ranks(loss.detach()).item()}


@torch.no_grad()
def predict(net, x, *, batch_size=1000):
    net.eval()
    dev = next(net.parameters()).device
    return torch.cat([net(x[b:b + batch_size].to(dev)).argmax(1).cpu() for b in range(0, len(x), batch_size)])


def train_classifier(*, data_dir, resolution, run_dir, out_path, steps=600, batch_size=128, lr=2e-3, width=32, seed=0,
                     device="auto", progress=True):
    """Train on the training images at `resolution`; report accuracy on the held-out test images."""
    device = loop.resolve_device(device)
    images, labels, classes = load_dataset(data_dir, "train", resolution)
    torch.manual_seed(seed)
    net = SmallCNN(images.shape[1], len(classes), width)
    task = ClassifierTask(net, images, labels, batch_size=batch_size, lr=lr, device=device)
    loop.prepare_run_dir(run_dir, {"stage": "classifier", "resolution": resolution, "batch_size": batch_size, "lr": lr,
                                   "width": width, "seed": seed})
    rows = loop.run(task, run_dir=run_dir, total_steps=steps, seed=seed, checkpoint_every=max(1, steps // 3),
                    device=device, progress=progress, desc="classifier")
    test_x, test_y, _ = load_dataset(data_dir, "test", resolution)
    accuracy = float((predict(net, to_model(test_x)) == torch.as_tensor(test_y)).float().mean())
    summary = {"test_accuracy": accuracy, "steps": rows[-1]["step"], "resolution": resolution,
               "seconds": loop.read_timing(run_dir)["seconds"], "classes": list(classes)}
    loop.atomic_save({"hparams": net.hparams, "state": net.state_dict(), "meta": summary}, out_path)
    return summary


def load_classifier(path, device="cpu"):
    ckpt = load_checkpoint(path, device)
    net = SmallCNN(**ckpt["hparams"]).to(device)
    net.load_state_dict(ckpt["state"])
    return net.eval(), ckpt["meta"]
