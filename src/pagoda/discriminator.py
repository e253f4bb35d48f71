"""Projected discriminator (Sauer et al. 2021) as PaGoDA uses it: frozen pretrained features, trainable heads.

Images -> DiffAugment -> frozen feature network(s) (EfficientNet-lite0; the paper adds DeiT-B), 4 maps
each -> fixed random 1x1 projections -> one spectral-norm head per map -> per-position logits,
class-conditioned by projection (logit = <h, E[y]> / sqrt(cmap_dim)). All logits of all heads are
concatenated per sample. The guided discriminator of PaGoDA Sec. 4 also projects onto an embedding of the
guidance scale omega in every head: logit = <h, E[y] + E[omega]> / sqrt(cmap_dim).
"""

import math

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from .features import EfficientNetLite0, RandomProjection
from .networks import OMEGA_SCALE, timestep_embedding

OMEGA_CHANNELS = 64  # sinusoidal features of OMEGA_SCALE * omega before each head's linear map


def _sn_conv(cin, cout, k, stride=1, padding=0, bias=True):
    return spectral_norm(nn.Conv2d(cin, cout, k, stride, padding, bias=bias))


class DownBlock(nn.Sequential):
    def __init__(self, cin, cout):
        super().__init__(_sn_conv(cin, cout, 4, 2, 1), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2))


class Head(nn.Module):
    """One scale: stride-2 DownBlocks until the map is at most 4x4, then per-position logits."""

    def __init__(self, channels, size, *, num_classes, omega_conditioned=False, cmap_dim=64, max_channels=256):
        super().__init__()
        layers, c = [], channels
        while size > 4:
            layers.append(DownBlock(c, min(2 * c, max_channels)))
            c, size = min(2 * c, max_channels), size // 2
        self.body = nn.Sequential(*layers)
        self.cmap_dim = cmap_dim if num_classes or omega_conditioned else 1
        self.out = _sn_conv(c, self.cmap_dim, 1, bias=False)
        self.embed = nn.Embedding(num_classes, cmap_dim) if num_classes else None
        self.omega_embed = nn.Linear(OMEGA_CHANNELS, cmap_dim) if omega_conditioned else None

    def forward(self, h, labels, omega=None):
        h = self.out(self.body(h))
        if self.embed is None and self.omega_embed is None:
            return h.flatten(1)
        cmap = 0
        if self.embed is not None:
            cmap = cmap + self.embed(labels)
        if self.omega_embed is not None:
            if omega is None:
                raise ValueError("this discriminator is guidance-conditioned: pass omega")
            omega = torch.as_tensor(omega, dtype=torch.float32, device=h.device).reshape(-1).expand(h.shape[0])
            cmap = cmap + self.omega_embed(timestep_embedding(OMEGA_SCALE * omega, OMEGA_CHANNELS))
        return (h * cmap[:, :, None, None]).sum(1).flatten(1) / math.sqrt(self.cmap_dim)


class ProjectedDiscriminator(nn.Module):
    """D(x, y) -> logits (N, K). `backbone` (a frozen feature network, or a list of them) may be shared
    with the reconstruction distance."""

    def __init__(self, *, num_classes, omega_conditioned=False, backbone=None, input_size=224,
                 proj_channels=(32, 64, 128, 256), cmap_dim=64, projection_seed=2):
        super().__init__()
        backbones = backbone if isinstance(backbone, (list, tuple)) else [backbone or EfficientNetLite0(input_size)]
        self.backbones = nn.ModuleList(backbones)
        self.projections = nn.ModuleList(RandomProjection(b.channels, proj_channels, seed=projection_seed + 10 * i)
                                         for i, b in enumerate(backbones))
        self.heads = nn.ModuleList(
            Head(c, max(1, b.input_size // s), num_classes=num_classes, omega_conditioned=omega_conditioned,
                 cmap_dim=cmap_dim)
            for b in backbones for c, s in zip(proj_channels, b.strides))

    def trainable_parameters(self):
        """The heads' parameters; the backbone and the projections stay frozen."""
        return list(self.heads.parameters())

    def forward(self, x, labels, omega=None):
        # The frozen features need a graph only when gradients flow back to the generator's images.
        with torch.set_grad_enabled(torch.is_grad_enabled() and x.requires_grad):
            maps = [m for b, p in zip(self.backbones, self.projections) for m in p(b(x))]
        return torch.cat([head(m, labels, omega) for head, m in zip(self.heads, maps)], dim=1)
