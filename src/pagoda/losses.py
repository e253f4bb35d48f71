"""PaGoDA's losses: the reconstruction distance d(x, x'), hinge GAN terms and the adaptive GAN weight.

Stage 2 minimises L_rec + lambda L_adv (METHOD.md): L_rec = E_x d(x, G(z(x), y)) with d a feature
distance on frozen ImageNet features, L_adv the hinge GAN loss of a projected discriminator on
G(z', y) with fresh prior noise z', and lambda = w clip(|grad L_rec| / (|grad L_adv| + 1e-4), 0.01, 10)
taken at the generator's last layer (VQGAN's adaptive weight).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import diffaug
from .features import EfficientNetLite0, RandomProjection

DISTANCES = ("feature", "pseudo_huber", "l2")


def normalized_feature_distance(maps_a, maps_b, eps=1e-10):
    """sum_k sum_c mean_hw (a_k / |a_k|_c - b_k / |b_k|_c)^2 per sample (channel-normalised, LPIPS-like)."""
    total = 0
    for a, b in zip(maps_a, maps_b):
        a = a / (a.square().sum(1, keepdim=True).sqrt() + eps)
        b = b / (b.square().sum(1, keepdim=True).sqrt() + eps)
        total = total + (a - b).square().mean(dim=(2, 3)).sum(1)
    return total


def pseudo_huber(x, y, c=None):
    """sqrt(|x - y|^2 + c^2) - c per sample, c = 0.00054 sqrt(dim) (Song & Dhariwal 2023)."""
    d = x[0].numel()
    c = 0.00054 * math.sqrt(d) if c is None else c
    return ((x - y).flatten(1).square().sum(1) + c ** 2).sqrt() - c


def l2(x, y):
    return (x - y).flatten(1).square().mean(1)


class ReconstructionDistance(nn.Module):
    """d(x_hat, x) per sample: the paper's feature distance or a pixel-space alternative.

    feature:      frozen ImageNet feature maps (EfficientNet-lite0; the paper adds DeiT-B: `backbone`
                  may be a list, whose distances are summed) through fixed random 1x1 projections,
                  compared with `normalized_feature_distance`, after the same DiffAugment draw on both.
    pseudo_huber: in pixel space (no augmentation).
    l2:           mean squared error in pixel space.
    """

    def __init__(self, kind="feature", *, backbone=None, input_size=224, augment=True, projection_seed=1):
        super().__init__()
        if kind not in DISTANCES:
            raise ValueError(f"unknown distance {kind!r}; choose one of {DISTANCES}")
        self.kind = kind
        self.augment = augment
        if kind == "feature":
            backbones = backbone if isinstance(backbone, (list, tuple)) else [backbone or EfficientNetLite0(input_size)]
            self.backbones = nn.ModuleList(backbones)
            self.projections = nn.ModuleList(RandomProjection(b.channels, seed=projection_seed + 10 * i)
                                             for i, b in enumerate(backbones))

    def forward(self, x_hat, x, params=None):
        """Per-sample distance; `params` (diffaug.sample_params) are drawn here when not given."""
        if self.kind == "pseudo_huber":
            return pseudo_huber(x_hat, x)
        if self.kind == "l2":
            return l2(x_hat, x)
        if self.augment:
            params = params if params is not None else diffaug.sample_params(len(x), x.shape[-1], device=x.device)
            x_hat, x = diffaug.augment(x_hat, params), diffaug.augment(x, params)
        total = 0
        for backbone, projection in zip(self.backbones, self.projections):
            with torch.no_grad():
                target = projection(backbone(x))
            total = total + normalized_feature_distance(projection(backbone(x_hat)), target)
        return total


# ----------------------------------------------------------------------------
# Hinge GAN (METHOD.md: D loss = mean relu(1 - D(real)) + mean relu(1 + D(fake)); G term = -mean D(fake)).

def d_hinge_loss(logits_real, logits_fake):
    return F.relu(1 - logits_real).mean() + F.relu(1 + logits_fake).mean()


def g_hinge_loss(logits_fake):
    return -logits_fake.mean()


# ----------------------------------------------------------------------------
# Adaptive weight.

def adaptive_weight(grad_rec, grad_adv, *, weight=0.2, eps=1e-4, lo=0.01, hi=10.0):
    """lambda = w * clip(|grad_W L_rec| / (|grad_W L_adv| + eps), lo, hi), detached (plain L2 norms)."""
    ratio = grad_rec.norm() / (grad_adv.norm() + eps)
    return weight * ratio.clamp(lo, hi).detach()
