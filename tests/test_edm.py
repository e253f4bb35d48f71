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
