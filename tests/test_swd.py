"""The multi-scale sliced Wasserstein distance on cases with known answers."""

import numpy as np
import pytest
import torch

from pagoda import swd
from pagoda.data import resize


def smooth_images(n, size=32, seed=0):
    """Random blobs (smooth at every scale, with edges), uint8 (n, 1, size, size)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 1, size // 4, size // 4, generator=g)
    x = resize(low, size) + 0.3 * (torch.rand(n, 1, size, size, generator=g) > 0.9)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def test_laplacian_pyramid_levels_and_exact_reconstruction():
    x = torch.rand(3, 2, 32, 32, dtype=torch.float64)
    levels = swd.laplacian_pyramid(x, min_resolution=8)
    assert [lv.shape[-1] for lv in levels] == [32, 16, 8]
    y = levels[-1]
    for band in reversed(levels[:-1]):
        y = swd.pyr_up(y) + band
    torch.testing.assert_close(y, x)
    # A constant image has no detail: its band-pass levels are zero (mirror padding keeps it constant).
    flat = swd.laplacian_pyramid(torch.full((1, 1, 16, 16), 7.0, dtype=torch.float64), min_resolution=8)
    assert flat[0].abs().max() < 1e-12 and torch.allclose(flat[-1], torch.tensor(7.0, dtype=torch.float64))


def test_patch_descriptors_are_the_pixels_at_the_drawn_positions():
    level = np.arange(2 * 3 * 9 * 9, dtype=np.float64).reshape(2, 3, 9, 9)
    d = swd.patch_descriptors(level, per_image=4, size=7, rng=np.random.default_rng(0))
    assert d.shape == (8, 3 * 49)
    ys = np.random.default_rng(0).integers(3, 6, size=(2, 4))  # the same draws: rows first
    xs = np.random.default_rng(0)
    xs.integers(3, 6, size=(2, 4))
    xs = xs.integers(3, 6, size=(2, 4))
    expected = level[1, :, ys[1, 2] - 3:ys[1, 2] + 4, xs[1, 2] - 3:xs[1, 2] + 4].reshape(-1)
    np.testing.assert_array_equal(d[4 + 2], expected)
    with pytest.raises(ValueError, match="does not fit"):
        swd.patch_descriptors(level[..., :5, :5], rng=np.random.default_rng(0))


def test_swd_of_a_set_with_itself_is_near_zero_and_grows_with_blur_at_the_finest_level():
    a = smooth_images(300, seed=0)
    kw = dict(min_resolution=8, descriptors_per_image=32, n_projections=64, seed=0)
    same = swd.multiscale_swd(a, a, **kw)
    other_draw = swd.multiscale_swd(a, smooth_images(300, seed=1), **kw)
    blurred = []
    for factor in (2, 4):
        b = torch.as_tensor(a).float()
        b = resize(resize(b, 32 // factor), 32).round().clamp(0, 255).to(torch.uint8).numpy()
        blurred.append(swd.multiscale_swd(a, b, **kw))
    assert set(same) == {32, 16, 8, "swd", "swd_finest"} and same["swd_finest"] == same[32]
    # Itself: only descriptor sampling noise, well below what losing one octave of detail costs.
    assert same["swd_finest"] < 0.2 * blurred[0]["swd_finest"]
    assert other_draw["swd_finest"] < 0.3 * blurred[0]["swd_finest"]  # a new sample of the same distribution
    assert same["swd_finest"] < blurred[0]["swd_finest"] < blurred[1]["swd_finest"]
    assert same["swd"] < blurred[0]["swd"] < blurred[1]["swd"]


def test_swd_is_reproducible_and_blind_to_a_global_gain():
    a, b = smooth_images(50, 16, seed=2), smooth_images(50, 16, seed=3)
    kw = dict(min_resolution=8, descriptors_per_image=8, n_projections=32, seed=5)
    first = swd.multiscale_swd(a, b, **kw)
    assert first == swd.multiscale_swd(a, b, **kw)
    # Each set's descriptors are normalised by their own mean and std (Karras et al.): a gain changes nothing.
    dimmer = swd.multiscale_swd(a.astype(np.float64) * 0.5, b, **kw)
    for key, v in first.items():
        assert dimmer[key] == pytest.approx(v, rel=1e-5)
