"""Multi-scale sliced Wasserstein distance in pixel space (Karras et al. 2018, "Progressive Growing of GANs",
Sec. 5 and App. D): a view of sample quality through no network at all.

Each image set is decomposed into a Laplacian pyramid (5-tap binomial filter, mirror padding); from every
level, 7x7 neighbourhoods at random positions are the descriptors; each set's descriptors of a level are
normalised by their own per-channel mean and standard deviation; the distance per level is the sliced
Wasserstein-1 distance between the two descriptor sets (POT's `ot.sliced_wasserstein_distance`), reported
x10^3 as Karras et al. do. The finest level holds the highest octave of detail, which is what a growth
stage adds; the coarsest is the Gaussian residual, i.e. layout and brightness.
"""

import numpy as np
import torch
import torch.nn.functional as F

BINOMIAL_5 = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16  # separable; outer product = Karras' 5x5 filter


def _blur(x):
    """The 5x5 binomial filter with mirror (reflect) padding, per channel."""
    c, k = x.shape[1], BINOMIAL_5.to(x.dtype)
    x = F.pad(x, [2, 2, 2, 2], mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, 5).expand(c, 1, 1, 5), groups=c)
    return F.conv2d(x, k.view(1, 1, 5, 1).expand(c, 1, 5, 1), groups=c)


def pyr_down(x):
    """Blur, keep every second pixel (as cv2.pyrDown)."""
    return _blur(x)[..., ::2, ::2]


def pyr_up(x):
    """Zero-insertion upsampling, blur with 4x the filter (as cv2.pyrUp)."""
    n, c, h, w = x.shape
    up = torch.zeros(n, c, 2 * h, 2 * w, dtype=x.dtype)
    up[..., ::2, ::2] = x
    return 4 * _blur(up)


def laplacian_pyramid(images, *, min_resolution=16):
    """[finest band, ..., Gaussian residual] of float images (N, C, R, R), one level per octave down to
    `min_resolution` (Karras et al.: 16). Summing the levels back up (pyr_up + add) restores the images."""
    levels, x = [], torch.as_tensor(images, dtype=torch.float64)
    while x.shape[-1] // 2 >= min_resolution:
        low = pyr_down(x)
        levels.append(x - pyr_up(low))
        x = low
    return levels + [x]


def patch_descriptors(level, *, per_image=128, size=7, rng):
    """`per_image` random size x size neighbourhoods of every image: (N * per_image, C * size * size)."""
    level = np.asarray(level)
    n, c, h, w = level.shape
    r = size // 2
    if h < size or w < size:
        raise ValueError(f"a {size}x{size} neighbourhood does not fit a {h}x{w} level")
    ys = rng.integers(r, h - r, size=(n, per_image))[..., None, None] + np.arange(-r, r + 1)[:, None]
    xs = rng.integers(r, w - r, size=(n, per_image))[..., None, None] + np.arange(-r, r + 1)[None, :]
    patches = level[np.arange(n)[:, None, None, None], :, ys, xs]  # (n, per_image, size, size, c)
    return patches.transpose(0, 1, 4, 2, 3).reshape(n * per_image, c * size * size)


def normalize_descriptors(desc, channels):
    """Zero mean, unit std per channel over all of a set's descriptors (Karras et al.'s finalisation)."""
    d = desc.reshape(len(desc), channels, -1)
    d = (d - d.mean(axis=(0, 2), keepdims=True)) / d.std(axis=(0, 2), keepdims=True).clip(1e-8)
    return d.reshape(len(desc), -1)


def sliced_wasserstein(a, b, *, n_projections=512, seed=0):
    """Sliced Wasserstein-1 distance of two descriptor sets along `n_projections` random unit directions
    (Karras et al.: 4 repeats x 128 directions), by POT."""
    import ot  # POT pulls in scikit-learn (~1 s): imported where used, not by every notebook that imports pagoda
    return float(ot.sliced_wasserstein_distance(a, b, n_projections=n_projections, p=1, seed=seed))


def multiscale_swd(images_a, images_b, *, min_resolution=16, descriptors_per_image=128, n_projections=512, seed=0):
    """{level resolution: SWD x 10^3} between two uint8 image sets (N, C, R, R) in [0, 255], plus
    'swd' (mean over levels, Karras et al.'s summary) and 'swd_finest' (the finest level)."""
    channels = np.shape(images_a)[1]
    levels_a = laplacian_pyramid(np.asarray(images_a, dtype=np.float64), min_resolution=min_resolution)
    levels_b = laplacian_pyramid(np.asarray(images_b, dtype=np.float64), min_resolution=min_resolution)
    out = {}
    for i, (la, lb) in enumerate(zip(levels_a, levels_b)):
        rng_a, rng_b = np.random.default_rng([seed, i, 0]), np.random.default_rng([seed, i, 1])
        da = normalize_descriptors(patch_descriptors(la.numpy(), per_image=descriptors_per_image, rng=rng_a), channels)
        db = normalize_descriptors(patch_descriptors(lb.numpy(), per_image=descriptors_per_image, rng=rng_b), channels)
        out[int(la.shape[-1])] = 1e3 * sliced_wasserstein(da.astype(np.float32), db.astype(np.float32),
                                                          n_projections=n_projections, seed=seed + i)
    per_level = dict(out)
    out["swd"] = float(np.mean(list(per_level.values())))
    out["swd_finest"] = per_level[max(per_level)]
    return out
