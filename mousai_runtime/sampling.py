"""v-objective samplers in numpy: a line-for-line mirror of training/model/diffusion.py (a parity test runs both).

sigma in [0, 1]; alpha = cos(sigma pi / 2), beta = sin(sigma pi / 2); the model predicts v = alpha eps - beta x0.
Samplers are plain functions of (model_fn, x, sigmas): DDIM (first order) and DPM-Solver++(2M) (second order,
multistep, data prediction in log-SNR lambda = log(alpha / beta)); `sample(name, ...)` picks one by its manifest name.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

ModelFn = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (x_sigma [B, ...], sigma [B]) -> v


class NonFiniteError(FloatingPointError):
    """A NaN or infinity appeared in a model output or the sampler state (names the component and, in the
    denoising loops, the step)."""

    def __init__(self, component: str, step: int | None = None, steps: int | None = None,
                 sigma: float | None = None, note: str = ""):
        self.component, self.step, self.steps, self.sigma = component, step, steps, sigma
        where = (f"at denoising step {step + 1}/{steps} (sigma {sigma:.4f})" if step is not None
                 else "in its output")
        super().__init__(f"non-finite values in the {component} {where}{note}: the model or its input is broken "
                         "(try another seed, fp32, or --fp16-fallback with an fp16 bundle)")


def alpha_beta(sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    angle = sigma * (math.pi / 2)
    return np.cos(angle), np.sin(angle)


def linear_sigmas(steps: int) -> np.ndarray:
    """The schedule as data: steps + 1 noise levels from 1 down to 0 (float32, as torch.linspace)."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError("steps must be >= 1")
    return np.linspace(1.0, 0.0, int(steps) + 1, dtype=np.float32)


def ddim_step(v: np.ndarray, x: np.ndarray, sigma: float, sigma_next: float) -> np.ndarray:
    alpha, beta = math.cos(sigma * math.pi / 2), math.sin(sigma * math.pi / 2)
    alpha_next, beta_next = math.cos(sigma_next * math.pi / 2), math.sin(sigma_next * math.pi / 2)
    x0 = alpha * x - beta * v
    eps = beta * x + alpha * v
    return alpha_next * x0 + beta_next * eps


def _check_finite(x: np.ndarray, component: str, i: int, steps: int, sigma: float) -> None:
    if not np.isfinite(x).all():
        raise NonFiniteError(component, i, steps, sigma)


def ddim_sample(model_fn: ModelFn, x: np.ndarray, sigmas: np.ndarray,
                callback: Callable[[int, np.ndarray], None] | None = None, component: str = "model") -> np.ndarray:
    """Deterministic DDIM from x (noise at sigmas[0]) to sigmas[-1].

    `callback(i, x)` runs after each step (progress; it may raise to cancel). A NaN/inf in x after any step raises
    NonFiniteError naming the step and `component`.
    """
    b = x.shape[0]
    steps = len(sigmas) - 1
    for i in range(steps):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        v = model_fn(x, np.full((b,), sigma, dtype=x.dtype))
        with np.errstate(invalid="ignore", over="ignore"):  # reported below, with the step and component
            x = ddim_step(v, x, sigma, sigma_next).astype(x.dtype, copy=False)
        _check_finite(x, component, i, steps, sigma)
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


def dpmpp_2m_step(v: np.ndarray, x: np.ndarray, sigma: float, sigma_next: float,
                  prev: tuple[np.ndarray, float] | None) -> tuple[np.ndarray, tuple[np.ndarray, float]]:
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


def dpmpp_2m_sample(model_fn: ModelFn, x: np.ndarray, sigmas: np.ndarray,
                    callback: Callable[[int, np.ndarray], None] | None = None,
                    component: str = "model") -> np.ndarray:
    """DPM-Solver++(2M) from x (noise at sigmas[0]) to sigmas[-1]; same model calls, callback and checks as DDIM."""
    b, dtype = x.shape[0], x.dtype
    steps = len(sigmas) - 1
    prev = None
    for i in range(steps):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        v = model_fn(x, np.full((b,), sigma, dtype=x.dtype))
        with np.errstate(invalid="ignore", over="ignore"):  # reported below, with the step and component
            x, prev = dpmpp_2m_step(v, x, sigma, sigma_next, prev)
            x = x.astype(dtype, copy=False)
        _check_finite(x, component, i, steps, sigma)
        if callback is not None:
            callback(i, x)
    return x


SAMPLERS: dict[str, Callable[..., np.ndarray]] = {"ddim": ddim_sample, "dpmpp-2m": dpmpp_2m_sample}
SCHEDULES: dict[str, Callable[[int], np.ndarray]] = {"linear": linear_sigmas}


def check_sampler(name: object) -> str:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}: use {' or '.join(SAMPLERS)}")
    return str(name)


def sample(sampler: str, model_fn: ModelFn, x: np.ndarray, sigmas: np.ndarray,
           callback: Callable[[int, np.ndarray], None] | None = None, component: str = "model") -> np.ndarray:
    """Run the sampler named `sampler` ("ddim" or "dpmpp-2m", as in the manifest's defaults)."""
    return SAMPLERS[check_sampler(sampler)](model_fn, x, sigmas, callback=callback, component=component)
