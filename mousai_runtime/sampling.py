"""v-objective samplers: the single source of the step maths and the sampling loop (training/model/diffusion.py
runs the same functions on torch tensors; a parity test runs both).

sigma in [0, 1]; alpha = cos(sigma pi / 2), beta = sin(sigma pi / 2); the model predicts v = alpha eps - beta x0.
Samplers are plain functions of (model_fn, x, sigmas): DDIM (first order) and DPM-Solver++(2M) (second order,
multistep, data prediction in log-SNR lambda = log(alpha / beta)); `sample(name, ...)` picks one by its manifest name.
The steps are arithmetic on python floats and arrays, so they serve numpy arrays and torch tensors alike.
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


# ------------------------------------------------------------------------------------------------- the loop


def ddim_update(v, x, sigma: float, sigma_next: float, prev: object = None) -> tuple:
    """DDIM as a multistep update with no history (the shape every update in UPDATES has)."""
    return ddim_step(v, x, sigma, sigma_next), None


# name (manifest defaults.sampler) -> update(v, x, sigma, sigma_next, history) -> (x at sigma_next, history)
UPDATES: dict[str, Callable[..., tuple]] = {"ddim": ddim_update, "dpmpp-2m": dpmpp_2m_step}
SAMPLERS = tuple(UPDATES)
SCHEDULES: dict[str, Callable[[int], np.ndarray]] = {"linear": linear_sigmas}


class ArrayOps:
    """What the loop needs of an array library beyond arithmetic (numpy here; training's torch loop passes its own):
    a batch of one noise level like x, the cast back to x's dtype, and whether x is still finite."""

    @staticmethod
    def sigma(x: np.ndarray, value: float) -> np.ndarray:
        return np.full((x.shape[0],), value, dtype=x.dtype)

    @staticmethod
    def cast(new: np.ndarray, like: np.ndarray) -> np.ndarray:
        return new.astype(like.dtype, copy=False)

    @staticmethod
    def finite(x: np.ndarray) -> bool:
        return bool(np.isfinite(x).all())


def check_sampler(name: object) -> str:
    if name not in UPDATES:
        raise ValueError(f"unknown sampler {name!r}: use {' or '.join(SAMPLERS)}")
    return str(name)


def sample(sampler: str, model_fn: ModelFn, x, sigmas, callback: Callable[[int, object], None] | None = None,
           component: str = "model", ops: type = ArrayOps):
    """Run the sampler named `sampler` ("ddim" or "dpmpp-2m", as in the manifest's defaults) from x (noise at
    sigmas[0]) to sigmas[-1], one model call per step.

    `callback(i, x)` runs after each step (progress; it may raise to cancel). A NaN/inf in x after any step raises
    NonFiniteError naming the step and `component` (unless `ops.finite` says all is well).
    """
    update = UPDATES[check_sampler(sampler)]
    steps = len(sigmas) - 1
    prev = None
    for i in range(steps):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        v = model_fn(x, ops.sigma(x, sigma))
        with np.errstate(invalid="ignore", over="ignore"):  # reported below, with the step and component
            new, prev = update(v, x, sigma, sigma_next, prev)
            x = ops.cast(new, x)
        if not ops.finite(x):
            raise NonFiniteError(component, i, steps, sigma)
        if callback is not None:
            callback(i, x)
    return x


def ddim_sample(model_fn: ModelFn, x: np.ndarray, sigmas: np.ndarray,
                callback: Callable[[int, np.ndarray], None] | None = None, component: str = "model") -> np.ndarray:
    """Deterministic DDIM from x (noise at sigmas[0]) to sigmas[-1]."""
    return sample("ddim", model_fn, x, sigmas, callback, component)


def dpmpp_2m_sample(model_fn: ModelFn, x: np.ndarray, sigmas: np.ndarray,
                    callback: Callable[[int, np.ndarray], None] | None = None,
                    component: str = "model") -> np.ndarray:
    """DPM-Solver++(2M) from x (noise at sigmas[0]) to sigmas[-1]; the same model calls as DDIM."""
    return sample("dpmpp-2m", model_fn, x, sigmas, callback, component)
