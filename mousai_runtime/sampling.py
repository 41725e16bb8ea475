"""v-objective DDIM in numpy: a line-for-line mirror of training/model/diffusion.py (a parity test runs both).

sigma in [0, 1]; alpha = cos(sigma pi / 2), beta = sin(sigma pi / 2); the model predicts v = alpha eps - beta x0.
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
        if not np.isfinite(x).all():
            raise NonFiniteError(component, i, steps, sigma)
        if callback is not None:
            callback(i, x)
    return x
