"""Judge networks: CNN classifiers of the real images, one per resolution, that no generator trains against.

The decoder's reconstruction distance and its discriminator both look through EfficientNet-lite0, so
distances in that space reward what the decoder was optimised for. A judge is trained on the real
training images at one resolution only (never on generated images, never shown to the decoder, the
discriminator or the encoder), with a plain VGG-style architecture (3x3 conv, batch norm, ReLU, max
pooling; no depthwise convolutions, no squeeze-excitation, no ImageNet weights) so that its features
are not EfficientNet's in disguise. Its penultimate (global-average-pooled) features are the space of
the study's fd_judge, kid_judge and precision/recall_judge, and the top-resolution judge also scores
class transfer.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import loop
from .checkpoints import load_small_network, save_small_network
from .data import as_images, load_dataset, to_model


class JudgeCNN(nn.Module):
    """conv-bn-relu + 2x2 max-pool per stage until 4x4 (channels doubling from `width`, at most 8 width),
    then a conv to `feature_dim` channels, global average pool (the features), linear head."""

    def __init__(self, in_channels=1, num_classes=10, resolution=32, width=32, feature_dim=256):
        super().__init__()
        layers, c, w, r = [], in_channels, width, resolution
        while r > 4:
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2)]
            c, w, r = w, min(2 * w, 8 * width), r // 2
        layers += [nn.Conv2d(c, feature_dim, 3, padding=1), nn.BatchNorm2d(feature_dim), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(feature_dim, num_classes)
        self.hparams = {"in_channels": in_channels, "num_classes": num_classes, "resolution": resolution,
                        "width": width, "feature_dim": feature_dim}

    def features(self, x):
        """Penultimate features (N, feature_dim) of images in [-1, 1]."""
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x):
        return self.head(self.features(x))


def learning_rate(step, *, total_steps, lr, warmup_fraction=0.1):
    """Linear warm-up over the first `warmup_fraction` of the run, then cosine decay to 0: a function of the
    step alone, so a resumed run follows the same schedule."""
    warmup = max(1, int(warmup_fraction * total_steps))
    if step < warmup:
        return lr * (step + 1) / warmup
    return 0.5 * lr * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))


class FlippedBatchTask:
    """One Adam step of `loss(x, idx)` on a random batch of examples, each image flipped with probability 1/2,
    at the warm-up-then-cosine `learning_rate`: the judge's and the omega estimator's training."""

    def __init__(self, net, num_examples, *, total_steps, batch_size=128, lr=3e-3, device="cpu"):
        self.net = net.to(device).train()
        self.num_examples = num_examples
        self.total_steps, self.batch_size, self.lr, self.device = total_steps, batch_size, lr, device
        self.opt = torch.optim.Adam(self.net.parameters(), lr=lr)

    def modules(self):
        return {"net": self.net}

    def optimizers(self):
        return {"adam": self.opt}

    def step(self, step, generator):
        n = self.batch_size
        idx = torch.randint(self.num_examples, (n,), generator=generator, device=generator.device).cpu()
        flip = (torch.rand(n, generator=generator, device=generator.device) < 0.5).cpu()[loop.rank_slice(n)]
        idx = idx[loop.rank_slice(n)]
        x = self.inputs(idx)
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x).to(self.device)
        loss = self.loss(x, idx)
        for group in self.opt.param_groups:
            group["lr"] = learning_rate(step, total_steps=self.total_steps, lr=self.lr)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        loop.average_gradients(self.net.parameters())
        self.opt.step()
        return {"loss": loop.mean_over_ranks(loss.detach()).item()}


class JudgeTask(FlippedBatchTask):
    """Cross-entropy of the judge on the real training images."""

    def __init__(self, net, images, labels, **kwargs):
        super().__init__(net, len(images), **kwargs)
        self.images, self.labels = as_images(images), torch.as_tensor(labels)

    def inputs(self, idx):
        return to_model(self.images[idx])

    def loss(self, x, idx):
        return F.cross_entropy(self.net(x), self.labels[idx].to(self.device))


@torch.no_grad()
def _batched(net, method, x, batch_size):
    net.eval()
    dev = next(net.parameters()).device
    return torch.cat([getattr(net, method)(x[b:b + batch_size].to(dev)).cpu() for b in range(0, len(x), batch_size)])


def predict(net, x, *, batch_size=1000):
    """Predicted classes of images in [-1, 1]."""
    return _batched(net, "forward", x, batch_size).argmax(1)


def features(net, x, *, batch_size=1000):
    """Penultimate features (float64 numpy, N x feature_dim) of images in [-1, 1]."""
    return _batched(net, "features", x, batch_size).double().numpy()


def image_features(net, images, *, batch_size=1000):
    """`features` of uint8 images (N, C, R, R) at the judge's own resolution (no resizing)."""
    r = net.hparams["resolution"]
    if tuple(images.shape[-2:]) != (r, r):
        raise ValueError(f"the judge of {r}x{r} images cannot score {tuple(images.shape[-2:])} images: "
                         "every resolution has its own judge")
    return np.concatenate([features(net, to_model(np.asarray(images[b:b + batch_size])), batch_size=batch_size)
                           for b in range(0, len(images), batch_size)])


def train_judge(*, data_dir, resolution, run_dir, out_path, steps=1000, batch_size=128, lr=3e-3, width=32,
                feature_dim=256, seed=0, device="auto", progress=True):
    """Train the judge of `resolution` on the real training images; measure it on the held-out test images."""
    device = loop.resolve_device(device)
    images, labels, classes = load_dataset(data_dir, "train", resolution)
    torch.manual_seed(seed)
    net = JudgeCNN(images.shape[1], len(classes), resolution, width, feature_dim)
    task = JudgeTask(net, images, labels, total_steps=steps, batch_size=batch_size, lr=lr, device=device)
    loop.prepare_run_dir(run_dir, {"stage": "judge", **net.hparams, "steps": steps, "batch_size": batch_size,
                                   "lr": lr, "seed": seed})
    rows = loop.run(task, run_dir=run_dir, total_steps=steps, seed=seed, checkpoint_every=max(1, steps // 3),
                    device=device, progress=progress, desc=f"judge {resolution}")
    test_x, test_y, _ = load_dataset(data_dir, "test", resolution)
    accuracy = float((predict(net, to_model(test_x)) == torch.as_tensor(test_y)).float().mean())
    summary = {"resolution": resolution, "test_accuracy": accuracy, "steps": rows[-1]["step"],
               "seconds": loop.read_timing(run_dir)["seconds"], "parameters": sum(p.numel() for p in net.parameters()),
               "feature_dim": feature_dim, "classes": list(classes)}
    save_small_network(out_path, net, summary)
    return summary


def load_judge(path, device="cpu"):
    """(JudgeCNN in eval mode, frozen; its training summary)."""
    return load_small_network(path, JudgeCNN, device)
