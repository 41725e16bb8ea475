"""v-objective diffusion: the training loss and the samplers (DDIM, DPM-Solver++(2M)).

sigma in [0, 1]; alpha = cos(sigma pi / 2), beta = sin(sigma pi / 2); x_sigma = alpha x0 + beta eps;
the network predicts v = alpha eps - beta x0.

The sampler is a plain function of (model_fn, x, sigmas), mirrored line for line in numpy by
mousai_runtime/sampling.py (a parity test runs both).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

ModelFn = Callable[[Tensor, Tensor], Tensor]  # (x_sigma [B, ...], sigma [B]) -> v


def alpha_beta(sigma: Tensor) -> tuple[Tensor, Tensor]:
    angle = sigma * (math.pi / 2)
    return torch.cos(angle), torch.sin(angle)


def _bcast(t: Tensor, x: Tensor) -> Tensor:
    return t.reshape(-1, *([1] * (x.ndim - 1)))


def v_loss(model_fn: ModelFn, x0: Tensor, sigma: Tensor | None = None, noise: Tensor | None = None) -> Tensor:
    """MSE between model_fn(x_sigma, sigma) and the true v, with sigma ~ U[0, 1] per batch element."""
    b = x0.shape[0]
    if sigma is None:
        sigma = torch.rand(b, device=x0.device, dtype=x0.dtype)
    if noise is None:
        noise = torch.randn_like(x0)
    alpha, beta = (_bcast(t, x0) for t in alpha_beta(sigma))
    x_sigma = alpha * x0 + beta * noise
    v_target = alpha * noise - beta * x0
    return torch.mean((model_fn(x_sigma, sigma) - v_target) ** 2)


def linear_sigmas(steps: int) -> Tensor:
    """The schedule as data: steps + 1 noise levels from 1 down to 0."""
    if steps < 1:
        raise ValueError("steps must be >= 1")
    return torch.linspace(1.0, 0.0, steps + 1)


def ddim_step(v: Tensor, x: Tensor, sigma: float, sigma_next: float) -> Tensor:
    alpha, beta = math.cos(sigma * math.pi / 2), math.sin(sigma * math.pi / 2)
    alpha_next, beta_next = math.cos(sigma_next * math.pi / 2), math.sin(sigma_next * math.pi / 2)
    x0 = alpha * x - beta * v
    eps = beta * x + alpha * v
    return alpha_next * x0 + beta_next * eps


@torch.no_grad()
def ddim_sample(model_fn: ModelFn, x: Tensor, sigmas: Tensor, callback: Callable[[int, Tensor], None] | None = None) -> Tensor:
    """Deterministic DDIM from x (noise at sigmas[0]) to sigmas[-1]."""
    b = x.shape[0]
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        v = model_fn(x, torch.full((b,), sigma, dtype=x.dtype, device=x.device))
        x = ddim_step(v, x, sigma, sigma_next)
        if callback is not None:
            callback(i, x)
    return x


# ------------------------------------------------------------------------------------------------- DPM-Solver++(2M)


def alpha_beta_exact(sigma: float) -> tuple[float, float]:
    """(alpha, beta) with the end points exact: sigma 1 -> (0, 1) (lambda = -inf), sigma 0 -> (1, 0) (lambda = +inf)."""
    if sigma >= 1.0:
        return 0.0, 1.0
    if sigma <= 0.0:
        return 1.0, 0.0
    return math.cos(sigma * math.pi / 2), math.sin(sigma * math.pi / 2)


def log_snr(sigma: float) -> float:
    """lambda = log(alpha / beta): -inf at sigma 1 (pure noise), +inf at sigma 0 (clean data)."""
    alpha, beta = alpha_beta_exact(sigma)
    if alpha == 0.0:
        return -math.inf
    if beta == 0.0:
        return math.inf
    return math.log(alpha) - math.log(beta)


def dpmpp_2m_step(v: Tensor, x: Tensor, sigma: float, sigma_next: float,
                  prev: tuple[Tensor, float] | None) -> tuple[Tensor, tuple[Tensor, float]]:
    """One DPM-Solver++(2M) step: (x at sigma_next, (x0 estimate, h) to pass as `prev` to the next step).

    x0 = alpha x - beta v; h = lambda(sigma_next) - lambda(sigma);
    x' = (beta' / beta) x + alpha' (1 - e^-h) D with D = x0 + (x0 - x0_prev) / (2 r), r = h_prev / h.
    First order (D = x0, exactly the DDIM update) when there is no history or the history step was infinite (the
    step from sigma = 1, lambda = -inf: r = inf); the step to sigma = 0 (h = +inf) returns x0 itself.
    """
    alpha, beta = alpha_beta_exact(sigma)
    alpha_next, beta_next = alpha_beta_exact(sigma_next)
    x0 = alpha * x - beta * v
    h = log_snr(sigma_next) - log_snr(sigma)
    if beta_next == 0.0:  # to sigma = 0: x' = x0 (the limit of the update; no extrapolation across h = inf)
        return x0, (x0, h)
    if prev is None or not math.isfinite(prev[1]):
        d = x0
    else:
        r = prev[1] / h
        d = x0 + (x0 - prev[0]) * (1.0 / (2.0 * r))
    x_next = (beta_next / beta) * x + (alpha_next * -math.expm1(-h)) * d
    return x_next, (x0, h)


@torch.no_grad()
def dpmpp_2m_sample(model_fn: ModelFn, x: Tensor, sigmas: Tensor,
                    callback: Callable[[int, Tensor], None] | None = None) -> Tensor:
    """DPM-Solver++(2M) from x (noise at sigmas[0]) to sigmas[-1]; the same model calls as DDIM."""
    b = x.shape[0]
    prev = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        v = model_fn(x, torch.full((b,), sigma, dtype=x.dtype, device=x.device))
        x, prev = dpmpp_2m_step(v, x, sigma, sigma_next, prev)
        if callback is not None:
            callback(i, x)
    return x


SAMPLERS = {"ddim": ddim_sample, "dpmpp-2m": dpmpp_2m_sample}


def sample(sampler: str, model_fn: ModelFn, x: Tensor, sigmas: Tensor,
           callback: Callable[[int, Tensor], None] | None = None) -> Tensor:
    """Run the sampler named `sampler` ("ddim" or "dpmpp-2m", as in a bundle manifest's defaults)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}: use {' or '.join(SAMPLERS)}")
    return SAMPLERS[sampler](model_fn, x, sigmas, callback=callback)
