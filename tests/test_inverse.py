"""Inverse problems: forward operators and adjoints, latent optimisation, baselines, the stage on tiny data."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from pagoda import decoder, inverse, inverse_study, judge
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
        y = A(decoder.generate(G, z_true, labels))
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
