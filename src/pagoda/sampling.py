"""Drawing images: per-image seeded noise, the teacher's multi-step ODE sampler."""

import numpy as np
import torch
from tqdm import tqdm

from . import edm


def image_noise(seeds, shape, device="cpu"):
    """Standard normal noise of `shape` per image, each from its own seed (independent of batching)."""
    out = torch.empty(len(seeds), *shape)
    for i, s in enumerate(seeds):
        out[i] = torch.randn(shape, generator=torch.Generator().manual_seed(int(s)))
    return out.to(device)


def class_labels(n, num_classes, *, seed=0, balanced=True):
    """n labels: cycling through the classes (balanced) or uniform draws."""
    if num_classes == 0:
        return None
    if balanced:
        return torch.arange(n) % num_classes
    return torch.randint(num_classes, (n,), generator=torch.Generator().manual_seed(seed))


def batched(fn, n, batch_size, *, progress=False, desc=None):
    """Concatenate fn(slice) over consecutive slices of range(n)."""
    outs = []
    for start in tqdm(range(0, n, batch_size), disable=not progress, desc=desc, mininterval=5.0):
        outs.append(fn(slice(start, min(start + batch_size, n))))
    return torch.cat(outs)


@torch.no_grad()
def sample_teacher(net, labels, *, seeds, num_points=40, omega=None, batch_size=500, device="cpu", progress=False):
    """The teacher's deterministic Heun sampler (EDM Alg. 1): n images in [-1, 1] (CPU) and NFE/image.
    With `omega`, classifier-free guided at that scale (2 network evaluations per denoiser call)."""
    net = net.to(device).eval()
    cfg = net.config
    shape = (cfg.in_channels, cfg.img_resolution, cfg.img_resolution)
    seeds = list(seeds)
    nfe = [0]

    def one(sl):
        y = None if labels is None else labels[sl].to(device)
        z = edm.SIGMA_MAX * image_noise(seeds[sl], shape, device)
        x, nfe[0] = edm.ode_to_data(net, z, y, num_points=num_points, omega=omega)
        return x.cpu()
    images = batched(one, len(seeds), batch_size, progress=progress, desc="teacher ODE")
    return images, nfe[0]


def seeds_for(n, seed):
    """n consecutive per-image seeds starting at seed * 10^6 (disjoint sets for seeds < 1000s)."""
    return np.arange(n) + int(seed) * 1_000_000


@torch.no_grad()
def sample_decoder(net, labels, *, seeds, sigma_max=edm.SIGMA_MAX, omega=None, batch_size=500, device="cpu",
                   progress=False):
    """PaGoDA's one-step sampler: G(sigma_max n, y[, omega]), clamped to [-1, 1]; images on the CPU and NFE = 1."""
    net = net.to(device).eval()
    cfg = net.config
    shape = (cfg.in_channels, cfg.img_resolution, cfg.img_resolution)
    seeds = list(seeds)

    def one(sl):
        y = None if labels is None else labels[sl].to(device)
        z = sigma_max * image_noise(seeds[sl], shape, device)
        return edm.generate(net, z, y, omega=omega, sigma_max=sigma_max).clamp(-1, 1).cpu()
    return batched(one, len(seeds), batch_size, progress=progress, desc="one-step"), 1


def load_sampler(path, *, device="cpu", num_points=40, omega=None, batch_size=500, progress=False):
    """A checkpoint's sampler as one callable (labels, seeds) -> (images in [-1, 1], NFE per image).

    Teacher checkpoints sample with the Heun ODE solver (`num_points` grid points), decoder checkpoints
    in one step; evaluation treats both alike. `omega`: the guidance scale (a guided teacher's CFG, a
    guided decoder's input). Also returns the checkpoint's meta dict.
    """
    from .checkpoints import load_checkpoint, load_network
    kind = load_checkpoint(path)["kind"]
    net, meta = load_network(path, device=device)
    if kind == "teacher":
        def sampler(labels, seeds):
            return sample_teacher(net, labels, seeds=seeds, num_points=num_points, omega=omega,
                                  batch_size=batch_size, device=device, progress=progress)
    else:
        def sampler(labels, seeds):
            return sample_decoder(net, labels, seeds=seeds, sigma_max=meta.get("sigma_max", edm.SIGMA_MAX),
                                  omega=omega, batch_size=batch_size, device=device, progress=progress)
    return sampler, {**meta, "kind": kind, "num_classes": net.config.num_classes,
                     "resolution": net.config.out_resolution}
