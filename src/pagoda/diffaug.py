"""DiffAugment (Zhao et al. 2020) with explicit parameters, so that two images can share one draw.

PaGoDA applies colour, translation (up to 1/8 of the image) and cutout (0.2 of the image) to every
sample: to both images of a reconstruction pair with the same parameters, and to the real and fake
batch of a discriminator step with the same per-index parameters (METHOD.md, Stage 2).
"""

import torch
import torch.nn.functional as F


def sample_params(n, resolution, *, generator=None, device="cpu", translation=0.125, cutout=0.2):
    """Per-sample augmentation parameters for n images of size `resolution`."""
    g = dict(generator=generator, device=device)
    shift = int(resolution * translation + 0.5)
    size = int(resolution * cutout + 0.5)
    return {
        "brightness": torch.rand(n, **g) - 0.5,                      # x + U(-0.5, 0.5)
        "saturation": torch.rand(n, **g) * 2,                        # about the channel mean, x U(0, 2)
        "contrast": torch.rand(n, **g) + 0.5,                        # about the image mean, x U(0.5, 1.5)
        "shift": torch.randint(-shift, shift + 1, (n, 2), **g),      # integer (dy, dx), zero padding
        "cutout_size": size,
        "cutout_center": torch.randint(0, resolution + (1 - size % 2), (n, 2), **g),
    }


def augment(x, params):
    """Apply one draw of `sample_params` to a batch x (N, C, H, W) in [-1, 1] (rows are independent)."""
    v = lambda t: t.to(x.dtype).view(-1, 1, 1, 1)  # noqa: E731
    x = x + v(params["brightness"])
    mean_c = x.mean(dim=1, keepdim=True)
    x = (x - mean_c) * v(params["saturation"]) + mean_c
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * v(params["contrast"]) + mean
    x = translate(x, params["shift"])
    return cut_out(x, params["cutout_center"], params["cutout_size"])


def translate(x, shift):
    """Shift each image by integer (dy, dx), filling with zeros (as DiffAugment does)."""
    n, _, h, w = x.shape
    dev = x.device
    iy = (torch.arange(h, device=dev).view(1, h, 1) - shift[:, 0].to(dev).view(n, 1, 1)).expand(n, h, w)
    ix = (torch.arange(w, device=dev).view(1, 1, w) - shift[:, 1].to(dev).view(n, 1, 1)).expand(n, h, w)
    padded = F.pad(x, [1, 1, 1, 1])  # index 0 and h+1 are the zero border
    iy = iy.clamp(-1, h) + 1
    ix = ix.clamp(-1, w) + 1
    flat = padded.flatten(2)                                          # N, C, (H+2)(W+2)
    idx = (iy * (w + 2) + ix).flatten(1).unsqueeze(1).expand(-1, x.shape[1], -1)
    return flat.gather(2, idx).view_as(x)


def cut_out(x, center, size):
    """Zero a size x size square per image, centred at `center` (clipped at the border)."""
    if size <= 0:
        return x
    n, _, h, w = x.shape
    dev = x.device
    y0 = (center[:, 0].to(dev) - size // 2).view(n, 1, 1)
    x0 = (center[:, 1].to(dev) - size // 2).view(n, 1, 1)
    ys = torch.arange(h, device=dev).view(1, h, 1)
    xs = torch.arange(w, device=dev).view(1, 1, w)
    inside = (ys >= y0) & (ys < y0 + size) & (xs >= x0) & (xs < x0 + size)
    return x * (~inside).unsqueeze(1).to(x.dtype)
