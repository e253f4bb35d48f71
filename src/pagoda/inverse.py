"""Inverse problems and controllable generation with the grown decoder (paper Sec. 5.2, measured here).

Forward operators are explicit objects with `forward` and `adjoint`, passed to the solvers. PaGoDA
solves super-resolution by *inversion*: the teacher encodes the low-resolution observation into the
latent that the grown decoder turns into a high-resolution image in one step. The other tasks use
*latent optimisation*: z* = argmin_z ||y - A(G(z, c))||^2 with Adam (METHOD.md).
"""

import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import edm
from .data import resize


# ----------------------------------------------------------------------------
# Forward operators (linear, acting on images in [-1, 1]).

class LinearOperator:
    """y = A x. `adjoint` is the exact transpose, from autograd's vector-Jacobian product of `forward`."""

    def __init__(self, in_shape):
        self.in_shape = tuple(in_shape)  # (C, H, W) of x

    def forward(self, x):
        raise NotImplementedError

    def adjoint(self, y):
        x0 = torch.zeros((y.shape[0], *self.in_shape), dtype=y.dtype, device=y.device)
        return torch.func.vjp(self.forward, x0)[1](y)[0]

    def __call__(self, x):
        return self.forward(x)


class Downsample(LinearOperator):
    """Super-resolution: the project's one resampling operator down to `resolution`."""

    def __init__(self, in_shape, resolution):
        super().__init__(in_shape)
        self.resolution = resolution

    def forward(self, x):
        return resize(x, self.resolution)


class Mask(LinearOperator):
    """Inpainting: keep the pixels where mask = 1 (mask (1 or N, 1, H, W)); self-adjoint."""

    def __init__(self, mask):
        super().__init__((1, *mask.shape[-2:]))
        self.mask = mask.float()

    def forward(self, x):
        return x * self.mask.to(x.device)

    def adjoint(self, y):
        return y * self.mask.to(y.device)


class GaussianBlur(LinearOperator):
    """Deblurring: separable Gaussian of std `sigma` pixels, radius round(3 sigma), mirror padding."""

    def __init__(self, in_shape, sigma):
        super().__init__(in_shape)
        self.sigma = sigma
        radius = int(3 * sigma + 0.5)
        t = torch.arange(-radius, radius + 1, dtype=torch.float32)
        k = torch.exp(-t ** 2 / (2 * sigma ** 2))
        self.kernel = k / k.sum()
        self.radius = radius

    def forward(self, x):
        c = x.shape[1]
        k = self.kernel.to(x.device, x.dtype)
        x = F.pad(x, [self.radius] * 4, mode="reflect")
        x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def center_box_mask(resolution, fraction=0.5):
    """1 outside a centred square covering `fraction` of the side, 0 inside."""
    m = torch.ones(1, 1, resolution, resolution)
    s = int(round(resolution * fraction))
    a = (resolution - s) // 2
    m[..., a:a + s, a:a + s] = 0
    return m


def random_pixel_mask(n, resolution, *, missing=0.5, seed=0):
    """Per image, a random `missing` fraction of pixels removed."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, resolution, resolution, generator=g) >= missing).float()


# ----------------------------------------------------------------------------
# PaGoDA's two ways to solve them.

@torch.no_grad()
def encode(teacher, images, labels, *, num_points=40, clamp=True, batch_size=500):
    """Teacher PF-ODE inversion of images at the teacher's resolution to latents (the Stage-2 encoder)."""
    zs = []
    for b in range(0, len(images), batch_size):
        y = labels[b:b + batch_size] if labels is not None else None
        zs.append(edm.ode_to_noise(teacher, images[b:b + batch_size], y, num_points=num_points, clamp=clamp)[0])
    return torch.cat(zs)


@torch.no_grad()
def decode(G, z, labels, *, batch_size=500, sigma_max=edm.SIGMA_MAX):
    return torch.cat([edm.generate(G, z[b:b + batch_size], labels[b:b + batch_size] if labels is not None else None,
                               sigma_max=sigma_max).clamp(-1, 1) for b in range(0, len(z), batch_size)])


def super_resolve_by_inversion(G, teacher, y_low, labels, *, num_points=40):
    """x = G(z(y)): encode the low-resolution observation, decode it once at the high resolution."""
    return decode(G, encode(teacher, y_low, labels, num_points=num_points), labels)


def optimize_latent(G, operator, y, labels, *, z0, steps=100, lr=0.05, sigma_max=edm.SIGMA_MAX, progress=False):
    """z* = argmin_z ||y - A(G(z, c))||^2 by Adam (lr in units of sigma_max); returns (G(z*), z*, losses)."""
    z = (z0 / sigma_max).clone().requires_grad_(True)  # optimise in unit scale so lr is scale-free
    opt = torch.optim.Adam([z], lr=lr)
    losses = []
    for _ in tqdm(range(steps), disable=not progress, desc="latent optimisation", mininterval=5.0):
        x = edm.generate(G, z * sigma_max, labels, sigma_max=sigma_max)
        loss = (operator(x) - y).flatten(1).square().sum(1)
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
        losses.append(float(loss.detach().mean()))
    with torch.no_grad():
        x = edm.generate(G, z * sigma_max, labels, sigma_max=sigma_max).clamp(-1, 1)
    return x, (z * sigma_max).detach(), losses


def slerp(z0, z1, t):
    """Spherical interpolation between latents (per image, over all dimensions)."""
    a, b = z0.flatten(1), z1.flatten(1)
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    omega = torch.arccos(cos.clamp(-1, 1)).view(-1, 1)
    so = torch.sin(omega)
    # Parallel latents (omega -> 0): slerp's limit, linear interpolation, instead of 0 / 0.
    apart = omega > 1e-4
    w0 = torch.where(apart, torch.sin((1 - t) * omega) / so, 1 - t)
    w1 = torch.where(apart, torch.sin(t * omega) / so, t)
    return (w0 * a + w1 * b).view_as(z0)


# ----------------------------------------------------------------------------
# Baselines (scikit-image), on [0, 1] images.

def _to01(x):
    return ((x.clamp(-1, 1) + 1) / 2).cpu().numpy()


def _from01(a):
    return torch.as_tensor(np.asarray(a), dtype=torch.float32) * 2 - 1


def bicubic(y_low, resolution):
    return resize(y_low, resolution).clamp(-1, 1)


def biharmonic(y, mask):
    """scikit-image's biharmonic inpainting of the pixels where mask = 0, every channel of (N, C, H, W)."""
    from skimage.restoration import inpaint_biharmonic
    a, m = _to01(y), (mask.expand_as(y) == 0).cpu().numpy()
    out = np.stack([[inpaint_biharmonic(a[i, c], m[i, c]) for c in range(a.shape[1])] for i in range(len(a))])
    return _from01(out)


def richardson_lucy(y, blur, *, iterations=30):
    """scikit-image's Richardson-Lucy deconvolution with the known Gaussian PSF, every channel of (N, C, H, W)."""
    from skimage.restoration import richardson_lucy as rl
    k = blur.kernel.numpy()
    psf = np.outer(k, k)
    a = _to01(y)
    out = np.stack([[rl(a[i, c], psf, num_iter=iterations, clip=True) for c in range(a.shape[1])]
                    for i in range(len(a))])
    return _from01(out)


# ----------------------------------------------------------------------------
# Metrics.

def psnr(x, ref):
    """dB per image on [0, 1] images."""
    mse = ((x - ref) / 2).flatten(1).square().mean(1).clamp_min(1e-12)
    return -10 * torch.log10(mse)


def ssim(x, ref, *, sigma=1.5):
    """SSIM per image on [0, 1] images (grey or RGB) as Wang et al. 2004 define it and published numbers use:
    an 11x11 Gaussian window of std 1.5 and population (not sample) covariances, by scikit-image. On images
    smaller than 11 px the same filter is used, and the border left out of the mean shrinks to fit."""
    from skimage.metrics import structural_similarity
    a, b = _to01(x), _to01(ref)
    side = min(a.shape[-2:])
    win_size = min(11, side if side % 2 else side - 1)  # only sets the border crop: the filter stays 11-tap
    return torch.tensor([structural_similarity(b[i].transpose(1, 2, 0), a[i].transpose(1, 2, 0), data_range=1.0,
                                               channel_axis=-1, gaussian_weights=True, sigma=sigma,
                                               win_size=win_size, use_sample_covariance=False)
                         for i in range(len(a))])


def dark_background(x, *, border=2, level=-0.9, fraction=0.9):
    """Whether images in [-1, 1] lie on a black background (Fashion-MNIST): at least `fraction` of the pixels
    in a `border`-pixel frame darker than `level`. Foreground masks by threshold only mean something then."""
    frame = torch.ones(x.shape[-2:], dtype=torch.bool)
    frame[border:-border, border:-border] = False
    return bool(((x[..., frame] < level).float().mean() >= fraction).item())


def feature_distance(features, ref_features):
    """Per image, ||f/|f| - g/|g|||^2 between feature vectors (numpy, N x D): LPIPS' unit normalisation,
    so the value lies in [0, 4] and does not reward feature magnitude."""
    unit = lambda f: f / np.linalg.norm(f, axis=1, keepdims=True).clip(1e-12)  # noqa: E731
    return np.square(unit(features) - unit(ref_features)).sum(axis=1)


def timed(fn, *args, **kwargs):
    """(result, seconds)."""
    t0 = time.time()
    out = fn(*args, **kwargs)
    return out, time.time() - t0


def gaussian_noise_like(x, std, seed=0):
    g = torch.Generator().manual_seed(seed)
    return std * torch.randn(x.shape, generator=g).to(x.device)

