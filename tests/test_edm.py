"""EDM maths: preconditioning identities, loss weight, Karras grid, and the Heun solver on Gaussian data."""

import math

import pytest
import torch

from pagoda import edm

SD = edm.SIGMA_DATA


@pytest.mark.parametrize("sigma", [0.002, 0.1, 0.5, 1.0, 10.0, 80.0])
def test_preconditioning_identities(sigma):
    # EDM Appendix B.6: unit-variance training target and input.
    assert edm.c_skip(sigma) ** 2 * 0 + edm.c_in(sigma) ** 2 * (sigma ** 2 + SD ** 2) == pytest.approx(1)
    # The effective target F* = (x - c_skip (x + n)) / c_out has unit variance for x ~ (0, sd^2), n ~ (0, sigma^2).
    target_var = ((1 - edm.c_skip(sigma)) ** 2 * SD ** 2 + edm.c_skip(sigma) ** 2 * sigma ** 2) / edm.c_out(sigma) ** 2
    assert target_var == pytest.approx(1)
    # c_skip -> 1 and c_out -> 0 as sigma -> 0; c_skip + (c_out / sd)^2 = 1.
    assert edm.c_skip(sigma) + (edm.c_out(sigma) / SD) ** 2 == pytest.approx(1)
    # The loss weight is 1 / c_out^2, which makes lambda * c_out^2 = 1 (EDM eq. 8 -> 2).
    assert edm.loss_weight(sigma) * edm.c_out(sigma) ** 2 == pytest.approx(1)
    assert edm.c_noise(sigma) == pytest.approx(math.log(sigma) / 4)
    assert edm.c_noise(torch.tensor(sigma, dtype=torch.float64)).item() == pytest.approx(math.log(sigma) / 4)


def test_karras_grid_endpoints_and_monotonicity():
    s = edm.karras_sigmas(40)
    assert len(s) == 40
    assert s[0].item() == pytest.approx(80.0)
    assert s[-1].item() == pytest.approx(0.002)
    assert bool((s[1:] < s[:-1]).all())
    # rho = 7 concentrates points at small sigma: the median grid point is far below the arithmetic middle.
    assert s[20].item() < 5.0
    with pytest.raises(ValueError):
        edm.karras_sigmas(1)


def gaussian_denoiser(sd):
    # Exact denoiser for x ~ N(0, sd^2 I): D(x, sigma) = sd^2 / (sd^2 + sigma^2) x.
    return lambda x, sigma: sd ** 2 / (sd ** 2 + sigma ** 2) * x


def exact_flow(x, sigma_from, sigma_to, sd):
    # PF-ODE dx/dsigma = x sigma / (sd^2 + sigma^2) for Gaussian data: x(s) = x0 sqrt((sd^2 + s^2) / (sd^2 + s0^2)).
    return x * math.sqrt((sd ** 2 + sigma_to ** 2) / (sd ** 2 + sigma_from ** 2))


def test_heun_inversion_then_sampling_round_trip_is_exact_for_gaussian_data():
    torch.manual_seed(0)
    x0 = SD * torch.randn(256, 1, 8, 8, dtype=torch.float64)
    sigmas = edm.karras_sigmas(40)
    den = gaussian_denoiser(SD)
    z, nfe_inv = edm.heun_solve(den, x0, sigmas.flip(0))
    x_back, nfe = edm.heun_solve(den, z, sigmas)
    assert ((x_back - x0).norm() / x0.norm()).item() < 1e-3
    # The latent is the exact ODE solution up to Heun's discretisation error, which is O(h^2):
    # under 1% at 40 points and ~4x smaller with twice the points.
    z_exact = exact_flow(x0, 0.002, 80.0, SD)
    err40 = ((z - z_exact).norm() / z_exact.norm()).item()
    z79, _ = edm.heun_solve(den, x0, edm.karras_sigmas(79).flip(0))
    err79 = ((z79 - z_exact).norm() / z_exact.norm()).item()
    assert err40 < 1e-2
    assert 3.0 < err40 / err79 < 5.0
    assert z.std().item() == pytest.approx(80.0 * x0.std().item() / SD, rel=1e-2)
    assert nfe_inv == nfe == 78
    _, nfe_final = edm.heun_solve(den, z, sigmas, final_denoise=True)
    assert nfe_final == 79


def test_heun_is_second_order():
    # Halving the step count should multiply the error by ~4 for a 2nd-order method.
    x0 = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    den = gaussian_denoiser(SD)
    exact = exact_flow(x0, 1.0, 0.1, SD)
    errs = []
    for n in (9, 17, 33):
        sig = torch.linspace(1.0, 0.1, n, dtype=torch.float64)
        x, _ = edm.heun_solve(den, x0, sig)
        errs.append((x - exact).abs().item())
    assert 3.0 < errs[0] / errs[1] < 5.0
    assert 3.0 < errs[1] / errs[2] < 5.0


def test_clamp_limits_denoiser_outputs():
    seen = []

    def den(x, s):
        out = 10 * torch.ones_like(x)
        return out

    def spy(x, s):
        d = den(x, s)
        seen.append(d)
        return d
    x = torch.zeros(2, 1, 2, 2, dtype=torch.float64)
    x_c, _ = edm.heun_solve(spy, x, torch.tensor([1.0, 0.5]), clamp=True)
    x_u, _ = edm.heun_solve(spy, x, torch.tensor([1.0, 0.5]), clamp=False)
    # With the clamp the drift pulls x towards 1, not towards 10.
    assert x_c.max().item() < 1.0 < x_u.max().item()


class ExactGaussianNet(torch.nn.Module):
    """F such that D(x, sigma) = c_skip x + c_out F(c_in x) is the exact Gaussian denoiser (F* = 0 for sd = SD)."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, c_noise, labels=None):
        return torch.zeros_like(x) + 0 * self.dummy


def test_network_wrappers_use_the_denoiser_and_keep_nfe():
    # With F = 0, D = c_skip x, which is exact for N(0, SD^2): ode_to_data(ode_to_noise(x)) ~ x.
    net = ExactGaussianNet()
    torch.manual_seed(1)
    x0 = SD * torch.randn(64, 1, 4, 4)
    z, nfe = edm.ode_to_noise(net, x0, clamp=False)
    assert nfe == 78
    assert ((z - exact_flow(x0, 0.002, 80.0, SD)).norm() / z.norm()).item() < 1e-2
    x_back, nfe = edm.ode_to_data(net, z, num_points=40)
    assert nfe == 79  # the final denoise at sigma_min shrinks x by c_skip(0.002) ~ 1 - 1.6e-5
    assert ((x_back - x0.clamp(-1, 1)).norm() / x0.norm()).item() < 1e-3


def test_edm_loss_is_weighted_denoising_error():
    net = ExactGaussianNet()
    x = torch.randn(4, 1, 2, 2)
    sigma = torch.tensor([0.1, 1.0, 2.0, 5.0])
    noise = torch.randn_like(x)
    loss = edm.edm_loss(net, x, sigma=sigma, noise=noise)
    s = sigma.view(-1, 1, 1, 1)
    d = edm.c_skip(s) * (x + s * noise)
    expected = (edm.loss_weight(s) * (d - x) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(loss, expected)
    g = torch.Generator().manual_seed(0)
    sig = edm.sample_training_sigma(20000, generator=g)
    assert sig.log().mean().item() == pytest.approx(-1.2, abs=0.05)
    assert sig.log().std().item() == pytest.approx(1.2, abs=0.05)


# ----------------------------------------------------------------------------
# Exact values on hand-made inputs (sigma_data = 1 unless said: every sigma_data must reach Table 1).

class AffineNet(torch.nn.Module):
    """F(x_in, c_noise, y) = 2 x_in + c_noise + y / 2, recording what the network sees."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x_in, c_noise, labels=None):
        self.calls.append((x_in, c_noise, labels))
        y = 0 if labels is None else labels.to(x_in.dtype).view(-1, *([1] * (x_in.ndim - 1))) / 2
        return 2 * x_in + c_noise.view(-1, *([1] * (x_in.ndim - 1))) + y


def test_denoise_is_eq7_with_float32_network_inputs():
    # sd = 1. sigma = 1: c_skip = 1/2, c_out = c_in = 1/sqrt2, c_noise = 0, F = sqrt2 x + y/2,
    # so D = 3x/2 + y/(2 sqrt2). sigma = 2: c_skip = 1/5, c_out = 2/sqrt5, c_in = 1/sqrt5, c_noise = ln2/4,
    # so D = x/5 + 4x/5 + 2/sqrt5 (ln2/4 + y/2).
    net = AffineNet()
    x = torch.tensor([[[[1.0, -2.0]]], [[[3.0, 0.5]]]], dtype=torch.float64)
    y = torch.tensor([3, 7])
    d = edm.denoise(net, x, torch.tensor([1.0, 2.0]), y, sigma_data=1.0)
    expected = torch.stack([1.5 * x[0] + 3 / (2 * math.sqrt(2)),
                            x[1] + 2 / math.sqrt(5) * (math.log(2) / 4 + 7 / 2)])
    assert d.dtype == torch.float64
    torch.testing.assert_close(d, expected)
    x_in, c_noise, labels = net.calls[0]
    assert x_in.dtype == c_noise.dtype == torch.float32 and c_noise.shape == (2,)
    torch.testing.assert_close(x_in, torch.stack([x[0] / math.sqrt(2), x[1] / math.sqrt(5)]).float())
    torch.testing.assert_close(c_noise, torch.tensor([0.0, math.log(2) / 4]))
    assert labels is y


def test_denoise_keeps_a_low_precision_state_dtype_and_device():
    # The skip path stays in x's dtype even when sigma is a Python float and F runs in float32.
    x = torch.full((2, 1, 2, 2), 0.75, dtype=torch.bfloat16)
    d = edm.denoise(AffineNet(), x, 1.0, sigma_data=1.0)
    assert d.dtype == torch.bfloat16
    torch.testing.assert_close(d, torch.full_like(x, 1.125))  # 1.5 x, c_noise = 0, no labels
    # sigma is broadcast per sample on x's device (meta: shapes and devices only).
    d = edm.denoise(lambda x_in, c, y: x_in, torch.zeros(3, 1, 4, 4, device="meta"), torch.ones(3))
    assert d.device.type == "meta" and d.shape == (3, 1, 4, 4)


def test_sigma_batch_shape_dtype_and_values():
    x = torch.zeros(3, 2, 4, 4, dtype=torch.float64)
    s = edm._as_batch(0.1, x)
    assert s.shape == (3, 1, 1, 1) and s.dtype == torch.float64 and bool((s == 0.1).all())
    s = edm._as_batch(torch.tensor([1.0, 2.0, 3.0]), x)
    assert s.dtype == torch.float64 and s.flatten().tolist() == [1.0, 2.0, 3.0]
    assert edm._as_batch(0.5, torch.zeros(2, 3, device="meta")).device.type == "meta"


def test_training_sigma_is_lognormal_draw_from_the_generator():
    n = edm.sample_training_sigma(5, p_mean=0.3, p_std=2.0, generator=torch.Generator().manual_seed(3))
    ref = (torch.randn(5, generator=torch.Generator().manual_seed(3)) * 2.0 + 0.3).exp()
    torch.testing.assert_close(n, ref)
    assert edm.sample_training_sigma(4, device="meta").device.type == "meta"


def test_edm_loss_draws_sigma_then_noise_from_the_generator():
    """lambda(s) |D(x + s n, s, y) - x|^2 with ln s ~ N(P_mean, P_std^2) and n ~ N(0, I), both from `generator`."""
    # 32 values: enough that float32 and float64 draws of torch.randn differ (the noise must be x's dtype).
    x = torch.linspace(-1, 1, 32, dtype=torch.float64).view(2, 1, 4, 4)
    y = torch.tensor([1, 4])

    def expected(seed, p_mean, p_std):
        g = torch.Generator().manual_seed(seed)
        s = (torch.randn(2, generator=g) * p_std + p_mean).exp().double().view(-1, 1, 1, 1)
        n = torch.randn(x.shape, generator=g, dtype=torch.float64)
        xn = x + s * n
        # Table 1 with sd = 1, F = 2 c_in xn + ln(s)/4 + y/2 (AffineNet), F in float32.
        f = (2 * xn / (s ** 2 + 1).sqrt()).float() + (s.log() / 4).float() + y.view(-1, 1, 1, 1) / 2
        d = xn / (s ** 2 + 1) + s / (s ** 2 + 1).sqrt() * f.double()
        return ((s ** 2 + 1) / s ** 2 * (d - x) ** 2).flatten(1).mean(1)

    loss = edm.edm_loss(AffineNet(), x, y, sigma_data=1.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loss, expected(0, -1.2, 1.2))  # EDM's P_mean, P_std
    loss = edm.edm_loss(AffineNet(), x, y, p_mean=0.5, p_std=0.3, sigma_data=1.0,
                        generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(loss, expected(1, 0.5, 0.3))
    assert loss.dtype == torch.float64 and loss.shape == (2,)
    # Drawn on the batch's device.
    meta = edm.edm_loss(lambda x_in, c, y: x_in, torch.zeros(3, 1, 2, 2, device="meta"))
    assert meta.device.type == "meta" and meta.shape == (3,)


def test_karras_grid_exact_values_defaults_and_minimum_size():
    # rho = 2, sigma 9 -> 1: (3 + i/2 (1 - 3))^2 = 9, 4, 1.
    s = edm.karras_sigmas(3, sigma_min=1.0, sigma_max=9.0, rho=2.0)
    assert s.dtype == torch.float64
    torch.testing.assert_close(s, torch.tensor([9.0, 4.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(edm.karras_sigmas(2), torch.tensor([80.0, 0.002], dtype=torch.float64))
    s = edm.karras_sigmas()
    assert len(s) == 40 and s[1].item() == pytest.approx((80 ** (1 / 7) + (0.002 ** (1 / 7) - 80 ** (1 / 7)) / 39) ** 7)
    assert edm.karras_sigmas(3, device="meta").device.type == "meta"
    with pytest.raises(ValueError, match="at least 2 points, got 1"):
        edm.karras_sigmas(1)


def test_heun_one_step_by_hand():
    # D(x, s) = s, grid 2 -> 1, x = 3: d = (3 - 2)/2 = 0.5, x_euler = 3 - 0.5 = 2.5,
    # d' = (2.5 - 1)/1 = 1.5, x = 3 - (0.5 + 1.5)/2 = 2. The final denoise returns D(2, 1) = 1.
    seen = []

    def den(x, s):
        seen.append(s)
        return torch.full_like(x, s)
    x = torch.full((1, 1, 1, 1), 3.0, dtype=torch.float64)
    out, nfe = edm.heun_solve(den, x, torch.tensor([2.0, 1.0]))
    assert out.item() == 2.0 and nfe == 2 and seen == [2.0, 1.0] and all(type(s) is float for s in seen)
    out, nfe = edm.heun_solve(den, x, torch.tensor([2.0, 1.0]), final_denoise=True)
    assert out.item() == 1.0 and nfe == 3


def test_heun_clamp_is_to_minus_one_one():
    # Constant D = c, one step 2 -> 1 from x = 0: d = -c/2, x_euler = c/2, d' = -c/2, x = c/2.
    c = torch.tensor([-5.0, 0.3, 5.0], dtype=torch.float64)
    den = lambda x, s: c.clone()  # noqa: E731
    x = torch.zeros(3, dtype=torch.float64)
    out, _ = edm.heun_solve(den, x, torch.tensor([2.0, 1.0]), clamp=True)
    torch.testing.assert_close(out, torch.tensor([-0.5, 0.15, 0.5], dtype=torch.float64))
    out, _ = edm.heun_solve(den, x, torch.tensor([2.0, 1.0]))
    torch.testing.assert_close(out, c / 2)
    out, _ = edm.heun_solve(den, x, torch.tensor([2.0, 1.0]), clamp=True, final_denoise=True)
    torch.testing.assert_close(out, torch.tensor([-1.0, 0.3, 1.0], dtype=torch.float64))


class LabelNet(torch.nn.Module):
    """F = (y - 1) c_noise: independent of x_in (the float32 network never rounds the state), large at high
    sigma and of the other sign below sigma = 1, so that clamping D changes the result."""

    def forward(self, x_in, c_noise, labels):
        return ((labels.to(x_in.dtype) - 1) * c_noise).view(-1, 1, 1, 1).expand_as(x_in)


def table1_denoiser(labels, sd):
    # D = c_skip x + c_out F by EDM Table 1, written out here (F in float32 as the network computes it).
    def den(x, s):
        f = ((labels.float() - 1) * (torch.tensor(s, dtype=torch.float64).log() / 4).float()).double()
        return sd ** 2 / (s ** 2 + sd ** 2) * x + s * sd / math.sqrt(s ** 2 + sd ** 2) * f.view(-1, 1, 1, 1)
    return den


def test_ode_wrappers_follow_the_requested_grid_with_a_float64_state():
    """ode_to_data / ode_to_noise = Heun on the Karras grid (rho = 2: 4, 1.5625, 0.25) with D(x, sigma, y)."""
    y = torch.tensor([-6, 8])
    grid = torch.tensor([4.0, 1.5625, 0.25], dtype=torch.float64)
    kw = dict(num_points=3, sigma_min=0.25, sigma_max=4.0, rho=2.0, sigma_data=1.0)
    # A float16 latent: the state must be float64 and rounded to float16 once, at the end.
    z = torch.tensor([-4.0, -3.0, 3.0, 4.0], dtype=torch.float16).view(2, 1, 1, 2)
    out = {}
    for clamp in (False, True):
        ref, _ = edm.heun_solve(table1_denoiser(y, 1.0), z.double(), grid, clamp=clamp, final_denoise=True)
        assert bool((ref.abs() < 1).all())
        out[clamp], nfe = edm.ode_to_data(LabelNet(), z, y, clamp=clamp, **kw)
        assert nfe == 5 and out[clamp].dtype == torch.float16
        assert torch.equal(out[clamp], ref.half())
    assert (out[True] - out[False]).abs().min() > 0.05  # clamping D matters here ...
    assert torch.equal(edm.ode_to_data(LabelNet(), z, y, **kw)[0], out[False])  # ... and sampling does not clamp
    # Values beyond [-1, 1] are clamped at the end.
    x, _ = edm.ode_to_data(LabelNet(), 4 * z, y, **kw)
    ref, _ = edm.heun_solve(table1_denoiser(y, 1.0), 4 * z.double(), grid, final_denoise=True)
    assert ref.abs().max() > 1 and torch.equal(x, ref.clamp(-1, 1).half())
    # Inversion runs up the same grid and, by default, clamps every D (the released encoder does).
    images = torch.tensor([-1.0, -0.25, 0.5, 1.0], dtype=torch.float16).view(2, 1, 1, 2)
    for clamp in (False, True):
        ref, _ = edm.heun_solve(table1_denoiser(y, 1.0), images.double(), grid.flip(0), clamp=clamp)
        out[clamp], nfe = edm.ode_to_noise(LabelNet(), images, y, clamp=clamp, **kw)
        assert nfe == 4 and out[clamp].dtype == torch.float16 and torch.equal(out[clamp], ref.half())
    assert not torch.equal(out[True], out[False])
    assert torch.equal(edm.ode_to_noise(LabelNet(), images, y, **kw)[0], out[True])


def test_ode_to_data_default_grid_is_40_points():
    x, nfe = edm.ode_to_data(ExactGaussianNet(), torch.zeros(1, 1, 1, 1))
    assert nfe == 79 and x.shape == (1, 1, 1, 1)
