"""Inverse problems: forward operators and adjoints, latent optimisation, baselines, the stage on tiny data."""

import re

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from pagoda import decoder, edm, inverse, inverse_study, judge
from pagoda.checkpoints import save_network
from pagoda.data import resize


def operators():
    shape = (1, 16, 16)
    return [inverse.Downsample(shape, 4), inverse.Mask(inverse.center_box_mask(16)),
            inverse.Mask(inverse.random_pixel_mask(1, 16, seed=1)), inverse.GaussianBlur(shape, 1.2)]


@pytest.mark.parametrize("op", operators(), ids=["downsample", "box", "random", "blur"])
def test_adjoint_is_the_transpose_of_the_operators_matrix(op):
    # The matrix of A, column by column from A applied to basis images (forward only, no autograd), then
    # A^T y against op.adjoint(y): an adjoint that is not the transpose (e.g. A itself for the blur, whose
    # mirror padding makes A non-symmetric) fails.
    n = 16 * 16
    basis = torch.eye(n, dtype=torch.float64).view(n, 1, 16, 16)
    matrix = torch.cat([op(basis[i:i + 1]) for i in range(n)]).flatten(1).T  # (m, n)
    y = torch.randn(1, *op(basis[:1]).shape[1:], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(op.adjoint(y).flatten(), matrix.T @ y.flatten(), rtol=1e-10, atol=1e-12)
    assert not torch.allclose(matrix, torch.zeros_like(matrix))


def test_operators_match_direct_computations():
    x = torch.rand(2, 1, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(inverse.Downsample((1, 16, 16), 4)(x), resize(x, 4))
    mask = inverse.center_box_mask(16, 0.5)
    assert mask[0, 0, 4:12, 4:12].eq(0).all() and mask.sum() == 256 - 64
    torch.testing.assert_close(inverse.Mask(mask)(x), x * mask)
    blur = inverse.GaussianBlur((1, 16, 16), 1.2)
    expected = np.stack([ndimage.gaussian_filter(a[0], 1.2, mode="mirror", truncate=3.0)[None] for a in x.numpy()])
    np.testing.assert_allclose(blur(x).numpy(), expected, rtol=1e-6, atol=1e-9)
    m = inverse.random_pixel_mask(50, 16, missing=0.5, seed=0)
    assert abs(m.mean().item() - 0.5) < 0.02


def test_slerp_endpoints_and_norm():
    a, b = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    torch.testing.assert_close(inverse.slerp(a, b, torch.zeros(2, 1)), a)
    torch.testing.assert_close(inverse.slerp(a, b, torch.ones(2, 1)), b, rtol=1e-4, atol=1e-5)
    unit = lambda v: v / v.flatten(1).norm(dim=1).view(-1, 1, 1, 1)  # noqa: E731
    b = a * 3 + 0.5 * torch.randn_like(a)
    mid = inverse.slerp(unit(a), unit(b), torch.full((2, 1), 0.5))  # stays on the unit sphere
    assert mid.flatten(1).norm(dim=1).allclose(torch.ones(2), atol=1e-4)


@pytest.fixture(scope="module")
def grown(tiny_teacher, tmp_path_factory):
    """A decoder grown 8 -> 16 from the tiny teacher (perturbed so the new layers are not zero)."""
    G = decoder.init_decoder(tiny_teacher, resolution=16)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in G.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("grown") / "decoder.pt"
    save_network(path, G, kind="decoder", meta={"sigma_max": 80.0})
    return path


def test_latent_optimisation_lowers_the_data_fit_on_a_known_case(grown):
    # y comes from the generator itself, so a perfect latent exists; Adam must close most of the gap.
    from pagoda.checkpoints import load_network
    G, _ = load_network(grown)
    labels = torch.tensor([0, 1, 2, 3])
    z_true = 80 * torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    A = inverse.Mask(inverse.center_box_mask(16))
    with torch.no_grad():
        y = A(edm.generate(G, z_true, labels))
    z0 = 80 * torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    x, z, losses = inverse.optimize_latent(G, A, y, labels, z0=z0, steps=60, lr=0.05)
    assert losses[-1] < 0.2 * losses[0]
    assert x.shape == (4, 1, 16, 16) and x.abs().max() <= 1


def test_baselines_restore_something():
    x = -torch.ones(2, 1, 16, 16)  # black background, as in Fashion-MNIST
    x[:, :, 4:12, 4:12] = 0.8
    m = inverse.random_pixel_mask(2, 16, seed=0)
    filled = inverse.biharmonic(x * m, m)
    assert (filled - x).abs().mean() < (x * m - x).abs().mean()
    blur = inverse.GaussianBlur((1, 16, 16), 1.0)
    y = blur(x)
    sharp = inverse.richardson_lucy(y, blur, iterations=30)
    assert (sharp - x).abs().mean() < (y - x).abs().mean()
    assert inverse.psnr(x, x).min() > 100 and inverse.ssim(x, x).min() == pytest.approx(1.0)


def test_ssim_uses_the_gaussian_window_of_wang_et_al():
    # One white pixel on black, 21x21: where x = 0 the SSIM map is, with w the normalised 11x11 Gaussian
    # (sigma 1.5, truncated at radius 5) weight at the pixel's offset from the white one, mu_y = w and the
    # population variance sigma_y^2 = w - w^2:  C1 / (w^2 + C1) * C2 / (w - w^2 + C2);  1 farther away.
    # scikit-image averages the map without a border of 5, i.e. over exactly the 11x11 offsets.
    t = np.arange(-5, 6)
    g = np.exp(-t ** 2 / (2 * 1.5 ** 2))
    w = np.outer(g, g) / g.sum() ** 2
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    expected = np.mean(c1 / (w ** 2 + c1) * c2 / (w - w ** 2 + c2))
    black = -torch.ones(1, 1, 21, 21)
    dot = black.clone()
    dot[0, 0, 10, 10] = 1
    assert float(inverse.ssim(dot, black)[0]) == pytest.approx(expected, rel=1e-6)
    # The uniform 7x7 window of scikit-image's default gives another number.
    uniform = np.full((7, 7), 1 / 49)
    assert abs(expected - np.mean(c1 / (uniform ** 2 + c1) * c2 / (uniform - uniform ** 2 + c2))) > 0.01


def test_psnr_is_on_the_0_1_scale():
    ref = torch.zeros(2, 1, 4, 4)
    x = ref + 0.2  # 0.1 on [0, 1]: MSE 0.01, 20 dB (13.98 dB if it were measured on [-1, 1])
    torch.testing.assert_close(inverse.psnr(x, ref), torch.full((2,), 20.0))


def test_feature_distance_is_zero_for_equal_directions_and_four_for_opposite():
    f = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]])
    np.testing.assert_allclose(inverse.feature_distance(f, 3 * f), 0, atol=1e-12)
    np.testing.assert_allclose(inverse.feature_distance(f, -f), 4)
    np.testing.assert_allclose(inverse.feature_distance(np.array([[1.0, 0.0]]), np.array([[0.0, 2.0]])), 2)


def test_inverse_stage_on_tiny_data(tiny_teacher, grown, tiny_data, tmp_path):
    j = judge.train_judge(data_dir=tiny_data, resolution=16, run_dir=tmp_path / "judge", out_path=tmp_path / "judge.pt",
                          steps=5, batch_size=8, width=4, feature_dim=8, progress=False, device="cpu")
    with pytest.raises(ValueError, match="judges 8 px images"):
        judge.train_judge(data_dir=tiny_data, resolution=8, run_dir=tmp_path / "j8", out_path=tmp_path / "j8.pt",
                          steps=1, batch_size=8, width=4, feature_dim=8, progress=False, device="cpu")
        inverse_study.run_study(data_dir=tiny_data, teacher_path=tiny_teacher, decoder_path=grown,
                                judge_path=tmp_path / "j8.pt", n_images=4, num_points=3, feature_size=32, device="cpu",
                                opt_steps=1, rl_iterations=1)
    study = inverse_study.run_study(data_dir=tiny_data, teacher_path=tiny_teacher, decoder_path=grown,
                                    judge_path=tmp_path / "judge.pt", n_images=12, num_points=5, feature_size=32,
                                    device="cpu", opt_steps=3, rl_iterations=5)
    table = study["table"]
    assert set(zip(table.task, table.method)) == {
        ("sr2", "pagoda"), ("sr2", "pagoda_optim"), ("sr2", "bicubic"), ("inpaint_box", "pagoda"),
        ("inpaint_box", "biharmonic"), ("inpaint_random", "pagoda"), ("inpaint_random", "biharmonic"),
        ("deblur", "pagoda"), ("deblur", "richardson_lucy")}
    assert list(table.columns) == ["task", "method", "psnr", "ssim", "judge_distance", "kid_judge", "effnet_distance",
                                   "sec_per_image", "n_images"]
    assert np.isfinite(table[["psnr", "ssim", "judge_distance", "kid_judge", "effnet_distance"]].to_numpy()).all()
    t = study["transfer"].iloc[0]
    assert t.judge_test_accuracy == j["test_accuracy"] and t.n_images == 12
    assert len(study["interpolation"]) >= 1 and study["interpolation"][0].shape == (8, 1, 16, 16)


class _PaintLabel(torch.nn.Module):
    """A stand-in decoder: every pixel of G(z, y) is the grey level of class y (0 -> -1, k - 1 -> 1)."""

    def __init__(self, k, resolution):
        super().__init__()
        self.k, self.resolution, self.scale = k, resolution, torch.nn.Parameter(torch.ones(()))

    def forward(self, x, c_noise, labels):
        grey = -1 + 2 * labels.float() / (self.k - 1)
        return self.scale * grey.view(-1, 1, 1, 1).expand(-1, 1, self.resolution, self.resolution)


class _ReadGrey(torch.nn.Module):
    """A stand-in judge that reads the class back from the mean grey level."""

    def __init__(self, k):
        super().__init__()
        self.centres = torch.nn.Parameter(-1 + 2 * torch.arange(k).float() / (k - 1))

    def forward(self, x):
        return -(x.mean((1, 2, 3))[:, None] - self.centres).abs()


def test_class_transfer_scores_the_judges_predictions_against_the_target_labels():
    # With a decoder that paints its label and a judge that reads it back, every transferred image is
    # judged as its target class and none as its source class; decoding with the true label gives the
    # source image itself (SSIM 1) when the source images are the painted ones.
    from types import SimpleNamespace
    k, n = 5, 20
    labels = torch.arange(n) % k
    G = _PaintLabel(k, 16)
    with torch.no_grad():
        x = G(None, None, labels)
    ctx = SimpleNamespace(classes=[f"c{i}" for i in range(k)], seed=3, labels=labels, x=x, base=8, G=G, sigma_max=80.0,
                          judge=_ReadGrey(k), judge_meta={"test_accuracy": 0.75}, device="cpu",
                          encode_low=lambda y: torch.zeros(len(y), 1, 8, 8))
    table, shown, names = inverse_study.class_transfer(ctx, examples=4)
    t = table.iloc[0]
    assert t.target_accuracy == 1.0 and t.source_label_rate == 0.0 and t.judge_test_accuracy == 0.75
    assert t.ssim_same_label == pytest.approx(1.0) and t.ssim_to_source < 1 and t.n_images == n
    assert len(names) == 4 and all(name != f"c{int(y)}" for name, y in zip(names, labels[:4]))
    torch.testing.assert_close(shown["same label"], x[:4])
    assert pd.isna(t.silhouette_iou)  # flat grey images have no dark background: no silhouette is reported


def test_dark_background_tells_fashion_mnist_from_photographs(tiny_fmnist):
    from pagoda import data
    fm = data.to_model(data.load_fashion_mnist(tiny_fmnist, "train")[0])
    assert inverse.dark_background(fm)
    photo = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert not inverse.dark_background(photo)
    x = -torch.ones(2, 1, 12, 12)
    x[:, :, 2:10, 2:10] = 1  # an object filling all but the 2-pixel frame: still a dark background
    assert inverse.dark_background(x)
    x[:, :, 0, :] = 1  # the top row lit: 12 of the 80 frame pixels (15%) are bright
    assert not inverse.dark_background(x)


# ----------------------------------------------------------------------------
# Exact answers on small hand-made inputs.

def test_operators_record_the_shape_of_x_they_act_on():
    # in_shape is what the default adjoint builds its zero image from: (C, H, W) of x, whatever A's output.
    assert inverse.Downsample((3, 16, 16), 4).in_shape == (3, 16, 16)
    assert inverse.Downsample((3, 16, 16), 4).resolution == 4
    assert inverse.Mask(torch.ones(2, 1, 6, 5)).in_shape == (1, 6, 5)
    blur = inverse.GaussianBlur([3, 9, 9], 0.8)
    assert blur.in_shape == (3, 9, 9) and blur.sigma == 0.8


def test_mask_operator_keeps_masked_pixels_and_zeroes_the_rest():
    m = torch.tensor([[[[1, 0], [0, 1]]]], dtype=torch.bool)  # a bool mask works as 0/1
    op = inverse.Mask(m)
    assert op.mask.dtype == torch.float32
    x = torch.tensor([[[[2.0, 3.0], [5.0, 7.0]]]])
    torch.testing.assert_close(op(x), torch.tensor([[[[2.0, 0.0], [0.0, 7.0]]]]))
    torch.testing.assert_close(op.adjoint(x), torch.tensor([[[[2.0, 0.0], [0.0, 7.0]]]]))


def test_adjoint_and_noise_follow_the_inputs_device_and_dtype():
    # The default adjoint builds its zero image like y: on the meta device (a stand-in for a GPU) a zero
    # image left on the CPU fails, and a float32 one fails the vjp of a float64 y.
    op = inverse.Downsample((3, 16, 16), 4)
    y = torch.empty(2, 3, 4, 4, device="meta")
    assert op.adjoint(y).device.type == "meta" and op.adjoint(y).shape == (2, 3, 16, 16)
    y64 = torch.ones(2, 3, 4, 4, dtype=torch.float64)
    assert op.adjoint(y64).dtype == torch.float64
    assert inverse.gaussian_noise_like(torch.empty(2, 3, device="meta"), 1.0).device.type == "meta"


def test_gaussian_kernel_values_and_radius():
    # sigma 1: radius int(3.5) = 3, weights exp(-t^2 / 2) for t = -3..3, normalised.
    blur = inverse.GaussianBlur((1, 8, 8), 1.0)
    t = np.arange(-3, 4)
    k = np.exp(-t ** 2 / 2.0)
    assert blur.radius == 3
    np.testing.assert_allclose(blur.kernel.numpy(), k / k.sum(), rtol=1e-6)
    # sigma 0.5: 3 sigma + 0.5 = 2 exactly, so radius 2 (int(2.0)), not 1 or 3.
    blur = inverse.GaussianBlur((1, 8, 8), 0.5)
    t = np.arange(-2, 3)
    k = np.exp(-t ** 2 / 0.5)
    assert blur.radius == 2 and blur.kernel.dtype == torch.float32
    np.testing.assert_allclose(blur.kernel.numpy(), k / k.sum(), rtol=1e-6)


def test_blur_is_per_channel_and_matches_scipy_on_rgb_batches():
    # Three channels with different content: a blur that mixed channels or used one channel's kernel
    # for all would differ from scipy's per-channel filter. float64 x checks that the kernel follows x's dtype
    # (the float32 kernel limits the agreement to ~1e-8).
    x = torch.rand(2, 3, 12, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for sigma in (0.7, 1.5):
        blur = inverse.GaussianBlur((3, 12, 10), sigma)
        expected = ndimage.gaussian_filter(x.numpy(), (0, 0, sigma, sigma), mode="mirror", truncate=3.0)
        assert blur(x).dtype == torch.float64
        np.testing.assert_allclose(blur(x).numpy(), expected, rtol=1e-7, atol=1e-9)


def test_center_box_mask_by_hand():
    # 6 px, half the side: a 3 px hole starting at (6 - 3) // 2 = 1.
    m = inverse.center_box_mask(6)
    assert m.shape == (1, 1, 6, 6) and m.dtype == torch.float32
    expected = torch.ones(6, 6)
    expected[1:4, 1:4] = 0
    torch.testing.assert_close(m[0, 0], expected)
    # 7 px, fraction 3/7: a 3 px hole at 2.
    expected = torch.ones(7, 7)
    expected[2:5, 2:5] = 0
    torch.testing.assert_close(inverse.center_box_mask(7, 3 / 7)[0, 0], expected)
    # 8 px, fraction 3/4: a 6 px hole at 1.
    expected = torch.ones(8, 8)
    expected[1:7, 1:7] = 0
    torch.testing.assert_close(inverse.center_box_mask(8, 0.75)[0, 0], expected)


def test_random_pixel_mask_shape_seed_and_fraction():
    m = inverse.random_pixel_mask(3, 5)
    assert m.shape == (3, 1, 5, 5) and m.dtype == torch.float32 and set(m.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(m, inverse.random_pixel_mask(3, 5, seed=0))  # the default seed is 0
    assert not torch.equal(inverse.random_pixel_mask(3, 16), inverse.random_pixel_mask(3, 16, seed=1))
    assert not torch.equal(m[0], m[1])  # each image has its own mask
    assert inverse.random_pixel_mask(2, 8, missing=0.0).eq(1).all()
    assert inverse.random_pixel_mask(2, 8, missing=1.0).eq(0).all()
    assert abs(inverse.random_pixel_mask(40, 16, missing=0.25).mean().item() - 0.75) < 0.02
    # A pixel is removed where its uniform draw falls below `missing`: nested masks for growing fractions.
    assert (inverse.random_pixel_mask(2, 8, missing=0.7) <= inverse.random_pixel_mask(2, 8, missing=0.3)).all()


def test_slerp_by_hand():
    # Image 0: a = (2, 0), b = (0, 1), omega = pi/2, t = 1/2: sin(pi/4) (a + b) = (sqrt 2, sqrt 2 / 2).
    # Image 1: a = (1, 0), b = (1, 1), omega = pi/4, t = 1/4: sin(3 pi/16) / sin(pi/4) a + sin(pi/16) / sin(pi/4) b.
    a = torch.tensor([[[[2.0, 0.0]]], [[[1.0, 0.0]]]], dtype=torch.float64)
    b = torch.tensor([[[[0.0, 1.0]]], [[[1.0, 1.0]]]], dtype=torch.float64)
    t = torch.tensor([[0.5], [0.25]], dtype=torch.float64)
    s = np.sin
    expected = torch.tensor([[[[np.sqrt(2), np.sqrt(2) / 2]]],
                             [[[(s(3 * np.pi / 16) + s(np.pi / 16)) / s(np.pi / 4), s(np.pi / 16) / s(np.pi / 4)]]]],
                            dtype=torch.float64)
    out = inverse.slerp(a, b, t)
    assert out.shape == a.shape
    torch.testing.assert_close(out, expected)


def test_psnr_of_identical_images_is_capped_at_120_db():
    x = torch.rand(3, 1, 4, 4)
    torch.testing.assert_close(inverse.psnr(x, x), torch.full((3,), 120.0))  # MSE floored at 1e-12
    ref = torch.zeros(2, 1, 2, 2)
    x = ref.clone()
    x[1, 0, 0, 0] = 2.0  # image 1: one pixel off by 1 on [0, 1], MSE 1/4, 6.02 dB; image 0 exact
    torch.testing.assert_close(inverse.psnr(x, ref), torch.tensor([120.0, -10 * np.log10(0.25)], dtype=torch.float32))


def _ssim_of_a_dot(w):
    # SSIM where the reference is 0 (black) and x has local mean w and population variance w - w^2.
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    return c1 / (w ** 2 + c1) * c2 / (w - w ** 2 + c2)


def test_ssim_on_images_smaller_than_the_window():
    # The 11-tap Gaussian (sigma 1.5) filter stays, only the crop shrinks: 9 x 13 -> window 9, crop 4, the map's
    # row 4 and columns 4..8; 8 x 8 -> window 7, crop 3, the map's 2 x 2 centre. No reflected copy of the dot
    # reaches these pixels, so the weights are those of the unbounded window.
    t = np.arange(-5, 6)
    g = np.exp(-t ** 2 / (2 * 1.5 ** 2))
    w = np.outer(g, g) / g.sum() ** 2
    black = -torch.ones(1, 1, 9, 13)
    dot = black.clone()
    dot[0, 0, 4, 6] = 1
    assert float(inverse.ssim(dot, black)[0]) == pytest.approx(np.mean(_ssim_of_a_dot(w[5, 3:8])), rel=1e-6)
    black = -torch.ones(2, 3, 8, 8)
    dots = black.clone()
    dots[0, 0, 3, 3] = 1  # image 0: the dot in the red channel only; image 1 equals the reference
    dots[0, 1:] = 0.3 * torch.rand(2, 8, 8) - 1  # green, blue: a reference-independent difference
    expected0 = (np.mean(_ssim_of_a_dot(w[5:7, 5:7])) + sum(
        float(inverse.ssim(dots[:1, c:c + 1], black[:1, :1])[0]) for c in (1, 2))) / 3
    out = inverse.ssim(dots, black)
    assert out.shape == (2,) and float(out[1]) == pytest.approx(1.0)
    assert float(out[0]) == pytest.approx(expected0, rel=1e-6)
    assert float(inverse.ssim(dots[:1, :1], black[:1, :1])[0]) == pytest.approx(np.mean(_ssim_of_a_dot(w[5:7, 5:7])),
                                                                              rel=1e-6)


def test_ssim_sigma_sets_the_gaussian_window():
    t = np.arange(-4, 5)  # sigma 1.2: scikit-image truncates at 3.5 sigma, radius int(4.7) = 4 -> 9 taps
    g = np.exp(-t ** 2 / (2 * 1.2 ** 2))
    w = np.outer(g, g) / g.sum() ** 2
    black = -torch.ones(1, 1, 9, 9)
    dot = black.clone()
    dot[0, 0, 4, 4] = 1
    assert float(inverse.ssim(dot, black, sigma=1.2)[0]) == pytest.approx(float(_ssim_of_a_dot(w[4, 4])), rel=1e-6)


def test_feature_distance_normalises_tiny_and_zero_features():
    # A tiny feature still has a direction; an all-zero one stays zero (no division by zero).
    np.testing.assert_allclose(inverse.feature_distance(np.array([[1e-6, 0.0]]), np.array([[5.0, 0.0]])), [0.0],
                               atol=1e-12)
    np.testing.assert_allclose(inverse.feature_distance(np.array([[0.0, 0.0]]), np.array([[3.0, 4.0]])), [1.0])
    # Per row: [3, 4] vs [4, -3] is orthogonal (2); [1, 1] vs [2, 2] equal (0).
    out = inverse.feature_distance(np.array([[3.0, 4.0], [1.0, 1.0]]), np.array([[4.0, -3.0], [2.0, 2.0]]))
    np.testing.assert_allclose(out, [2.0, 0.0], atol=1e-12)


def test_timed_returns_the_result_and_the_elapsed_seconds():
    import time

    def slow_add(a, b=0):
        time.sleep(0.02)
        return a + b

    out, sec = inverse.timed(slow_add, 2, b=3)
    assert out == 5 and 0.02 <= sec < 2


def test_gaussian_noise_like_is_seeded_and_scaled():
    x = torch.zeros(4, 1, 8, 8)
    n = inverse.gaussian_noise_like(x, 0.5)
    assert n.shape == x.shape
    torch.testing.assert_close(n, inverse.gaussian_noise_like(x, 0.5, seed=0))
    torch.testing.assert_close(inverse.gaussian_noise_like(x, 1.5), 3 * n)
    assert not torch.equal(n, inverse.gaussian_noise_like(x, 0.5, seed=1))
    assert abs(inverse.gaussian_noise_like(torch.zeros(100, 100), 2.0).std().item() - 2.0) < 0.05


def test_conversions_to_and_from_the_0_1_scale():
    a = inverse._to01(torch.tensor([-3.0, -1.0, 0.0, 0.5, 1.0, 4.0]))  # out-of-range values clamp first
    assert isinstance(a, np.ndarray)
    np.testing.assert_allclose(a, [0.0, 0.0, 0.5, 0.75, 1.0, 1.0])
    x = inverse._from01(np.array([0.0, 0.25, 1.0], dtype=np.float64))
    assert x.dtype == torch.float32
    torch.testing.assert_close(x, torch.tensor([-1.0, -0.5, 1.0]))


def test_bicubic_baseline_is_the_clamped_project_resize():
    # A hard edge: bicubic overshoots past +-1, the baseline clamps it back to the image range.
    y = -torch.ones(2, 1, 4, 4)
    y[:, :, :, 2:] = 1
    up = resize(y, 16)
    assert up.max() > 1 and up.min() < -1
    torch.testing.assert_close(inverse.bicubic(y, 16), up.clamp(-1, 1))


def test_biharmonic_matches_scikit_image_per_image():
    from skimage.restoration import inpaint_biharmonic
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 10, 10, generator=g) * 2 - 1
    for mask in (inverse.center_box_mask(10), inverse.random_pixel_mask(2, 10, seed=2)):  # shared, per image
        out = inverse.biharmonic(x * mask, mask)
        m = mask.expand_as(x)
        for i in range(2):
            ref = inpaint_biharmonic(((x[i, 0] * m[i, 0] + 1) / 2).numpy(), (m[i, 0] == 0).numpy())
            np.testing.assert_allclose(out[i, 0].numpy(), ref * 2 - 1, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out * mask, x * mask)  # observed pixels are kept


def test_richardson_lucy_matches_scikit_image_with_the_blur_psf():
    from skimage.restoration import richardson_lucy
    x = -torch.ones(2, 1, 12, 12)
    x[0, :, 3:9, 3:9] = 1  # a white square: unclipped RL overshoots past 1 on it
    x[1, :, 2:6, 5:11] = 0.5
    blur = inverse.GaussianBlur((1, 12, 12), 1.0)
    y = blur(x)
    psf = np.outer(blur.kernel.numpy(), blur.kernel.numpy())
    out = inverse.richardson_lucy(y, blur)  # 30 iterations by default
    for i in range(2):
        ref = richardson_lucy(((y[i, 0] + 1) / 2).numpy(), psf, num_iter=30, clip=True)
        np.testing.assert_allclose(out[i, 0].numpy(), ref * 2 - 1, rtol=1e-5, atol=1e-5)
    assert richardson_lucy(((y[0, 0] + 1) / 2).numpy(), psf, num_iter=30, clip=False).max() > 1.1
    few = inverse.richardson_lucy(y, blur, iterations=2)
    ref = richardson_lucy(((y[1, 0] + 1) / 2).numpy(), psf, num_iter=2, clip=True)
    np.testing.assert_allclose(few[1, 0].numpy(), ref * 2 - 1, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------
# Latent optimisation and inversion with stand-in networks whose answers are known in closed form.

def _shift_by_label(x, c_noise, labels):
    """A stand-in decoder F(x, c_noise, y) = x + y / 10, so G(z, y) = c_in(sigma_max) z + y / 10."""
    return x + 0.1 * labels.to(x.dtype).view(-1, 1, 1, 1)


def _latent_problem(sigma_max):
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 3])
    z0 = sigma_max * 1.5 * torch.randn(2, 1, 4, 4, generator=g)
    A = inverse.Mask(inverse.center_box_mask(4))  # the central 2 x 2 pixels are unobserved
    y = A(torch.rand(2, 1, 4, 4, generator=g) - 0.5)
    c = 1 / np.sqrt(sigma_max ** 2 + 0.25)  # c_in with sigma_data = 0.5
    return labels, z0, A, y, c


def test_one_adam_step_of_latent_optimisation_by_hand():
    # Adam's first step moves every coordinate with a nonzero gradient by exactly lr against the gradient's sign
    # (in units of sigma_max); unobserved pixels get no gradient and stay. Defaults: lr 0.05, sigma_max 80.
    labels, z0, A, y, c = _latent_problem(80.0)
    x0 = c * z0 + 0.1 * labels.view(-1, 1, 1, 1)
    assert ((A(x0) - y).abs() * A.mask).add(1 - A.mask).min() > 1e-3  # no ties at zero gradient
    x, z, losses = inverse.optimize_latent(_shift_by_label, A, y, labels, z0=z0, steps=1)
    z1 = z0 / 80 - 0.05 * torch.sign(A(x0) - y) * A.mask
    torch.testing.assert_close(z, 80 * z1)
    x1 = c * 80 * z1 + 0.1 * labels.view(-1, 1, 1, 1)
    assert x1.max() > 1 and x1.min() < -1  # so the returned images are visibly clamped
    torch.testing.assert_close(x, x1.clamp(-1, 1))
    assert losses == pytest.approx([float((A(x0) - y).square().sum((1, 2, 3)).mean())], rel=1e-6)
    assert not z.requires_grad


def test_two_adam_steps_of_latent_optimisation_at_another_sigma_max():
    # Adam with betas (0.9, 0.999), eps 1e-8, bias-corrected, written out; the loss is recorded before each step.
    sigma_max, lr = 10.0, 0.1
    labels, z0, A, y, c = _latent_problem(sigma_max)
    m = A.mask.double()
    shift = 0.1 * labels.view(-1, 1, 1, 1).double()
    u0, y64 = z0.double() / sigma_max, y.double()
    G = lambda u: c * sigma_max * u + shift  # noqa: E731
    grad = lambda u: 2 * (G(u) * m - y64) * m * c * sigma_max  # noqa: E731
    loss = lambda u: float((G(u) * m - y64).square().sum((1, 2, 3)).mean())  # noqa: E731
    g1 = grad(u0)
    u1 = u0 - lr * g1 / (g1.abs() + 1e-8)
    g2 = grad(u1)
    m2 = (0.9 * 0.1 * g1 + 0.1 * g2) / (1 - 0.9 ** 2)
    v2 = (0.999 * 0.001 * g1 ** 2 + 0.001 * g2 ** 2) / (1 - 0.999 ** 2)
    u2 = u1 - lr * m2 / (v2.sqrt() + 1e-8)
    x, z, losses = inverse.optimize_latent(_shift_by_label, A, y, labels, z0=z0, steps=2, lr=lr, sigma_max=sigma_max)
    torch.testing.assert_close(z.double(), sigma_max * u2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.double(), G(u2).clamp(-1, 1), rtol=1e-5, atol=1e-5)
    assert losses == pytest.approx([loss(u0), loss(u1)], rel=1e-5)


def test_latent_optimisation_runs_100_quiet_steps_by_default(capfd):
    labels, z0, A, y, _ = _latent_problem(80.0)
    _, _, losses = inverse.optimize_latent(_shift_by_label, A, y, labels, z0=z0)
    assert len(losses) == 100 and losses[-1] < 0.01 * losses[0]
    assert capfd.readouterr().err == ""  # no progress bar unless asked
    inverse.optimize_latent(_shift_by_label, A, y, labels, z0=z0, steps=2, progress=True)
    assert re.search(r"(^|\r)latent optimisation: ", capfd.readouterr().err)  # the bar's label


class _TeacherStub(torch.nn.Module):
    """F(x, c_noise, y) = x / 2 + y / 10: a label-dependent stand-in for the teacher."""

    def forward(self, x, c_noise, labels):
        return 0.5 * x + 0.1 * labels.to(x.dtype).view(-1, 1, 1, 1)


def _upsample_decoder(x, c_noise, labels):
    """A stand-in decoder: nearest 2x upsampling of its input plus a label offset (8 -> 16 px)."""
    return 40 * F.interpolate(x, scale_factor=2) + 0.2 * labels.to(x.dtype).view(-1, 1, 1, 1)


def test_super_resolution_by_inversion_encodes_then_decodes_once():
    from pagoda import edm
    g = torch.Generator().manual_seed(0)
    y_low = torch.rand(3, 1, 8, 8, generator=g) * 2 - 1
    labels = torch.tensor([1, 4, 7])
    teacher = _TeacherStub()
    z, _ = edm.ode_to_noise(teacher, y_low, labels, num_points=40, clamp=True)  # the default: 40 points
    expected = edm.generate(_upsample_decoder, z, labels).clamp(-1, 1)
    out = inverse.super_resolve_by_inversion(_upsample_decoder, teacher, y_low, labels)
    assert out.shape == (3, 1, 16, 16)
    torch.testing.assert_close(out, expected)
    z5, _ = edm.ode_to_noise(teacher, y_low, labels, num_points=5, clamp=True)
    torch.testing.assert_close(inverse.super_resolve_by_inversion(_upsample_decoder, teacher, y_low, labels,
                                                                  num_points=5),
                               edm.generate(_upsample_decoder, z5, labels).clamp(-1, 1))
    assert not torch.allclose(z5, z)


def test_slerp_of_parallel_latents_is_their_linear_interpolation():
    # omega = 0 (or rounded to it): slerp's limit, (1 - t) a + t b, where the formula alone gives 0 / 0.
    a = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([[0.5], [0.25]])
    torch.testing.assert_close(inverse.slerp(a, a, t), a)
    torch.testing.assert_close(inverse.slerp(a, 2 * a, t), a * (1 + t.view(-1, 1, 1, 1)))


def test_slerp_guards_arccos_against_rounding_past_minus_one():
    # For b = -a the float32 cosine of this a rounds to -1 - 1.2e-7; unclamped, arccos would give NaN.
    a = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    cos = (a * -a).sum() / a.norm() ** 2
    assert cos < -1
    assert torch.isfinite(inverse.slerp(a, -a, torch.full((1, 1), 0.5))).all()


def test_baselines_restore_every_channel_of_rgb_images():
    # Each channel is its own grey image: the baselines must return (N, 3, H, W) with channel c equal to the
    # grey baseline applied to channel c (before: channel 0 only, one channel out, SSIM raised on RGB).
    g = torch.Generator().manual_seed(5)
    x = torch.rand(2, 3, 12, 12, generator=g) * 2 - 1
    m = inverse.random_pixel_mask(2, 12, seed=3)
    filled = inverse.biharmonic(x * m, m)
    blur = inverse.GaussianBlur((3, 12, 12), 1.0)
    sharp = inverse.richardson_lucy(blur(x), blur, iterations=5)
    assert filled.shape == sharp.shape == x.shape
    for c in range(3):
        grey = x[:, c:c + 1]
        torch.testing.assert_close(filled[:, c:c + 1], inverse.biharmonic(grey * m, m))
        grey_blur = inverse.GaussianBlur((1, 12, 12), 1.0)
        torch.testing.assert_close(sharp[:, c:c + 1], inverse.richardson_lucy(grey_blur(grey), grey_blur, iterations=5))
    assert inverse.ssim(filled, x).shape == (2,) and inverse.psnr(sharp, x).shape == (2,)


def test_sr_at_matched_compute_buys_adam_steps_with_the_inversions_time(tiny_teacher, grown, tiny_data, tmp_path,
                                                                        monkeypatch):
    judge.train_judge(data_dir=tiny_data, resolution=16, run_dir=tmp_path / "judge", out_path=tmp_path / "judge.pt",
                      steps=2, batch_size=8, width=4, feature_dim=8, progress=False, device="cpu")
    ctx = inverse_study.Context(data_dir=tiny_data, teacher_path=tiny_teacher, decoder_path=grown,
                                judge_path=tmp_path / "judge.pt", n_images=6, num_points=3, feature_size=32)
    calls = []
    real_optimize = inverse.optimize_latent

    def timed(fn, *args, **kwargs):  # a machine where inversion takes 2 s, decoding 1 s and an Adam step 0.5 s
        out = fn(*args, **kwargs)
        if fn is inverse.optimize_latent:
            calls.append((kwargs["steps"], kwargs["z0"]))
            return out, 0.5 * kwargs["steps"]
        return out, 2.0 if fn == ctx.encode_low else 1.0
    monkeypatch.setattr(inverse, "timed", timed)
    monkeypatch.setattr(inverse, "optimize_latent", lambda *a, **kw: real_optimize(*a, **{**kw, "steps": 0}))
    table = inverse_study.sr_at_matched_compute(ctx, multiples=(1, 4), probe_steps=3)
    # Budget 3 s: from the prior 3 / 0.5 = 6 steps; from the inversion (3 - 2) / 0.5 = 2; at 4x 24 and 20.
    assert [c[0] for c in calls] == [3, 6, 2, 24, 20]
    z_inv = ctx.encode_low(inverse.Downsample((1, 16, 16), 8)(ctx.x))
    assert torch.equal(calls[2][1], z_inv) and torch.equal(calls[1][1], ctx.prior())
    assert table.method.tolist() == ["inversion"] + ["optim_prior", "optim_inversion"] * 2
    assert table.budget.tolist() == [1.0, 1.0, 1.0, 4.0, 4.0] and table.steps.tolist() == [0, 6, 2, 24, 20]
    # Seconds per image: the budget's, with the inversion's 2 s counted where optimisation starts from it.
    assert table.sec_per_image.tolist() == pytest.approx([3 / 6, 3 / 6, (1 + 2) / 6, 12 / 6, (10 + 2) / 6])
    assert (table.task == "sr2").all()
