"""v-objective diffusion: the training loss, the schedule as a tensor, and the samplers on tensors.

sigma in [0, 1]; alpha = cos(sigma pi / 2), beta = sin(sigma pi / 2); x_sigma = alpha x0 + beta eps;
the network predicts v = alpha eps - beta x0.

The samplers (DDIM, DPM-Solver++(2M)) are mousai_runtime/sampling.py's: its loop and step maths are plain
arithmetic on floats and arrays, so they run on tensors unchanged (one copy; a parity test runs both).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from mousai_runtime import sampling

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


class TorchOps:
    """The sampling loop's array operations on tensors (mousai_runtime.sampling.ArrayOps for numpy). No finiteness
    check: a training sample with NaN is written as it is, not raised."""

    @staticmethod
    def sigma(x: Tensor, value: float) -> Tensor:
        return torch.full((x.shape[0],), value, dtype=x.dtype, device=x.device)

    @staticmethod
    def cast(new: Tensor, like: Tensor) -> Tensor:
        return new

    @staticmethod
    def finite(x: Tensor) -> bool:
        return True


@torch.no_grad()
def sample(sampler: str, model_fn: ModelFn, x: Tensor, sigmas: Tensor,
           callback: Callable[[int, Tensor], None] | None = None) -> Tensor:
    """Run the sampler named `sampler` ("ddim" or "dpmpp-2m", as in a bundle manifest's defaults): the runtime's
    own loop and step maths (mousai_runtime.sampling), on tensors."""
    return sampling.sample(sampler, model_fn, x, sigmas, callback, ops=TorchOps)


def ddim_sample(model_fn: ModelFn, x: Tensor, sigmas: Tensor, callback: Callable[[int, Tensor], None] | None = None) -> Tensor:
    """Deterministic DDIM from x (noise at sigmas[0]) to sigmas[-1]."""
    return sample("ddim", model_fn, x, sigmas, callback)


def dpmpp_2m_sample(model_fn: ModelFn, x: Tensor, sigmas: Tensor,
                    callback: Callable[[int, Tensor], None] | None = None) -> Tensor:
    """DPM-Solver++(2M) from x (noise at sigmas[0]) to sigmas[-1]; the same model calls as DDIM."""
    return sample("dpmpp-2m", model_fn, x, sigmas, callback)
