"""EDM maths (Karras et al. 2022, VE form): preconditioning, training loss, sigma grid, Heun PF-ODE solver.

Equation numbers refer to EDM's Table 1 and Algorithm 1; PaGoDA (Kim et al. 2024) uses the same
solver in both directions: noise -> data to sample and data -> noise to encode (its Sec. 3.1), and
with classifier-free guidance for its guided decoder (its Sec. 4).
"""

import math

import torch

from .networks import NULL_LABEL

SIGMA_DATA = 0.5
SIGMA_MIN = 0.002
SIGMA_MAX = 80.0
RHO = 7.0


# ----------------------------------------------------------------------------
# Preconditioning (EDM Table 1, "Network and preconditioning").

def c_skip(sigma, sigma_data=SIGMA_DATA):
    return sigma_data ** 2 / (sigma ** 2 + sigma_data ** 2)


def c_out(sigma, sigma_data=SIGMA_DATA):
    return sigma * sigma_data / (sigma ** 2 + sigma_data ** 2) ** 0.5


def c_in(sigma, sigma_data=SIGMA_DATA):
    return 1 / (sigma ** 2 + sigma_data ** 2) ** 0.5


def c_noise(sigma):
    # EDM: ln(sigma)/4. ADM-format networks take 1000x this (250 ln sigma); the network's
    # `time_scale` handles that, so every caller passes the EDM value.
    if isinstance(sigma, torch.Tensor):
        return sigma.log() / 4
    return math.log(sigma) / 4


def loss_weight(sigma, sigma_data=SIGMA_DATA):
    # lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2  (EDM Table 1, "Training").
    return (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2


def _as_batch(sigma, x):
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    return sigma.reshape(-1, *([1] * (x.ndim - 1))).expand(x.shape[0], *([1] * (x.ndim - 1)))


def denoise(net, x, sigma, labels=None, *, sigma_data=SIGMA_DATA, net_dtype=torch.float32):
    """D(x, sigma, y) = c_skip x + c_out F(c_in x, c_noise, y)  (EDM eq. 7).

    The skip path stays in x's dtype (float64 inside the ODE solver); F runs in `net_dtype`.
    """
    sigma = _as_batch(sigma, x)
    f = net((c_in(sigma, sigma_data) * x).to(net_dtype), c_noise(sigma).flatten().to(net_dtype), labels)
    return c_skip(sigma, sigma_data) * x + c_out(sigma, sigma_data) * f.to(x.dtype)


def guided_denoise(net, x, sigma, labels, *, omega, sigma_data=SIGMA_DATA):
    """Classifier-free guidance (Ho & Salimans 2022): D_w(x, c) = D(x) + w (D(x, c) - D(x)), D(x) = D(x, null).

    omega (a number or one per image) = 1 gives the conditional denoiser, 0 the unconditional one.
    Two network evaluations per image, run as one batch.
    """
    sigma = _as_batch(sigma, x)
    d = denoise(net, torch.cat([x, x]), torch.cat([sigma, sigma]),
                torch.cat([labels, torch.full_like(labels, NULL_LABEL)]), sigma_data=sigma_data)
    d_cond, d_uncond = d.chunk(2)
    return d_uncond + _as_batch(omega, x) * (d_cond - d_uncond)


def generate(net, z, labels, *, omega=None, sigma_max=SIGMA_MAX, sigma_data=SIGMA_DATA):
    """PaGoDA's one-step decoder G(z, y) = F(c_in(sigma_max) z, c_noise(sigma_max), y): the network evaluated once
    at sigma_max, its raw output taken as the image (METHOD.md, "Stage 2"); z is on the sigma_max scale. A guided
    G also takes the guidance scale `omega` (a number or one per image)."""
    noise_level = torch.full((z.shape[0],), c_noise(sigma_max), device=z.device, dtype=z.dtype)
    if omega is None:
        return net(c_in(sigma_max, sigma_data) * z, noise_level, labels)
    return net(c_in(sigma_max, sigma_data) * z, noise_level, labels, omega)


# ----------------------------------------------------------------------------
# Training loss (EDM eq. 8 with Table 1's log-normal sigma and weight).

def sample_training_sigma(n, *, p_mean=-1.2, p_std=1.2, generator=None, device="cpu"):
    """ln sigma ~ N(P_mean, P_std^2)."""
    return (torch.randn(n, generator=generator, device=device) * p_std + p_mean).exp()


def edm_loss(net, x, labels=None, *, sigma=None, noise=None, p_mean=-1.2, p_std=1.2,
             sigma_data=SIGMA_DATA, generator=None):
    """Per-example lambda(sigma) ||D(x + sigma n, sigma, y) - x||^2, averaged over pixels.

    `sigma` and `noise` may be passed in (tests, reproducible resumption); otherwise they are drawn
    from `generator`.
    """
    if sigma is None:
        sigma = sample_training_sigma(x.shape[0], p_mean=p_mean, p_std=p_std,
                                      generator=generator, device=x.device)
    if noise is None:
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    sigma_b = _as_batch(sigma, x)
    d = denoise(net, x + sigma_b * noise, sigma, labels, sigma_data=sigma_data)
    w = loss_weight(sigma_b, sigma_data)
    return (w * (d - x) ** 2).flatten(1).mean(1)


# ----------------------------------------------------------------------------
# Sigma grid (EDM eq. 5).

def karras_sigmas(num_points=40, *, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rho=RHO,
                  dtype=torch.float64, device="cpu"):
    """sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho, i = 0..N-1 (decreasing)."""
    if num_points < 2:
        raise ValueError(f"a Karras grid needs at least 2 points, got {num_points}")
    i = torch.arange(num_points, dtype=dtype, device=device)
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (a + i / (num_points - 1) * (b - a)) ** rho


# ----------------------------------------------------------------------------
# Heun PF-ODE solver (EDM Algorithm 1 without churn), both directions.

def heun_solve(denoiser, x, sigmas, *, clamp=False, final_denoise=False):
    """Integrate dx/dsigma = (x - D(x, sigma)) / sigma along `sigmas` with Heun's 2nd-order method.

    denoiser:      callable (x, sigma) -> D(x, sigma), sigma a Python float.
    sigmas:        the grid to follow, in the order to follow it: decreasing = sampling
                   (noise -> data), increasing = inversion (data -> noise, PaGoDA's encoder,
                   starting from the clean image treated as the state at sigmas[0] = sigma_min).
    clamp:         clamp every D(x, sigma) to [-1, 1] (the released encoder does, METHOD.md).
    final_denoise: after the last step return D(x, sigmas[-1]) (EDM's sampler ends at sigma = 0,
                   i.e. with one more evaluation; 40 points -> 79 NFE).
    Returns (x, nfe): the final state and the number of denoiser evaluations per image.
    """
    sig = [float(s) for s in sigmas]
    nfe = 0

    def d_of(x_, s):
        nonlocal nfe
        nfe += 1
        d = denoiser(x_, s)
        return d.clamp(-1, 1) if clamp else d

    for s_cur, s_next in zip(sig[:-1], sig[1:]):
        dx = (x - d_of(x, s_cur)) / s_cur                       # Alg. 1 line 7
        x_euler = x + (s_next - s_cur) * dx                     # line 8
        dx2 = (x_euler - d_of(x_euler, s_next)) / s_next        # line 10
        x = x + (s_next - s_cur) * 0.5 * (dx + dx2)             # line 11
    if final_denoise:
        x = d_of(x, sig[-1])
    return x, nfe


def ode_to_data(net, z, labels=None, *, num_points=40, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rho=RHO,
                sigma_data=SIGMA_DATA, clamp=False, omega=None):
    """Teacher sampling / decoding: Heun from the latent z at sigma_max down the Karras grid, then a final
    denoise (2N - 1 denoiser calls). Sampling passes z = sigma_max n. With `omega` the denoiser is the
    guided one. Returns (images clamped to [-1, 1], nfe: network evaluations per image).
    """
    sigmas = karras_sigmas(num_points, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho)
    den, per_call = _float64_denoiser(net, labels, sigma_data, omega)
    x, calls = heun_solve(den, z.to(torch.float64), sigmas, clamp=clamp, final_denoise=True)
    return x.to(z.dtype).clamp(-1, 1), per_call * calls


def ode_to_noise(net, images, labels=None, *, num_points=40, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX,
                 rho=RHO, sigma_data=SIGMA_DATA, clamp=True, omega=None):
    """PaGoDA's encoder: the clean image is the state at sigma_min; Heun up the reversed grid to sigma_max.

    With `omega`, the guided PF-ODE (PaGoDA Sec. 4's latents). Returns (z, nfe) with z on the sigma_max
    scale (std ~ sigma_max for a good teacher) and nfe the network evaluations per image.
    """
    sigmas = karras_sigmas(num_points, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho).flip(0)
    den, per_call = _float64_denoiser(net, labels, sigma_data, omega)
    z, calls = heun_solve(den, images.to(torch.float64), sigmas, clamp=clamp)
    return z.to(images.dtype), per_call * calls


def _float64_denoiser(net, labels, sigma_data, omega):
    """The denoiser the ODE solver calls and its network evaluations per call (2 with guidance)."""
    # The ODE state is kept in float64 (as EDM's sampler does); the network runs in float32.
    if omega is None or (not torch.is_tensor(omega) and omega == 1):  # D_1(x, c) is D(x, c): one evaluation
        return (lambda x, s: denoise(net, x, s, labels, sigma_data=sigma_data)), 1
    return (lambda x, s: guided_denoise(net, x, s, labels, omega=omega, sigma_data=sigma_data)), 2
