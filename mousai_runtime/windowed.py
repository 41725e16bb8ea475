"""Windowed latent generation: one denoising step of a long latent as overlapping windows (MultiDiffusion-style).

The generator attends over its whole input, so one call on a long latent costs memory quadratic in its length. When
the (padded) latent is longer than `window` frames, every denoising step instead runs the generator on overlapping
windows of the current x (each `window` frames, starts on the generator's length multiple, consecutive windows
overlapping by `overlap` frames, the last window aligned to the end, so every call has the same shape) and combines
the windows' v with complementary raised-cosine weights before the (unchanged) DDIM update:

    v(t) = sum_i w_i(t) v_i(t)        sum_i w_i(t) == 1 exactly (float32), at most two windows weigh in at any t

Window i has weight 1 where it alone is used; at the join with window i+1 a crossfade of `overlap` frames runs from
window i (1 - f) to window i+1 (f), f(k) = 0.5 - 0.5 cos(pi (k + 0.5) / overlap). Between regularly spaced windows
the crossfade is the whole overlap; the last window, aligned to the end, overlaps its neighbour by more, and its
crossfade sits in the middle of the part of that overlap not already used by the previous crossfade.

Memory is flat in the clip length: windows are run one at a time (or `batch` at a time), and only x, the v
accumulator and the per-window weights exist at latent size (32 x T floats, a few MB for 10 minutes).
A latent of at most `window` frames is not windowed at all (the caller makes its usual single call).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .overlap import raised_cosine
from .sampling import ModelFn

DEFAULT_WINDOW_FRAMES = 512  # ~10.9 s at 48 kHz / hop 1024
DEFAULT_OVERLAP_FRAMES = 64


def check_window(window: int, overlap: int, multiple: int = 1, what: str = "window") -> tuple[int, int]:
    """Validated (window, overlap): integers, multiples of `multiple`, 1 <= overlap and 2 overlap <= window."""
    for name, v in ((f"{what} frames", window), ("overlap frames", overlap)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {v!r}")
    window, overlap = int(window), int(overlap)
    if window < 1 or overlap < 1:
        raise ValueError(f"{what} frames ({window}) and overlap frames ({overlap}) must be >= 1")
    if window % multiple or overlap % multiple:
        raise ValueError(f"{what} frames ({window}) and overlap frames ({overlap}) must be multiples of the "
                         f"generator's length multiple {multiple}")
    if 2 * overlap > window:
        raise ValueError(f"overlap frames ({overlap}) must be at most half the {what} frames ({window})")
    return window, overlap


@dataclass(frozen=True)
class WindowPlan:
    frames: int  # latent frames covered (already a multiple of the generator's length multiple)
    window: int
    overlap: int
    starts: tuple[int, ...]  # window i covers [starts[i], starts[i] + window)
    fades: tuple[tuple[int, int], ...]  # (start frame, length) of the crossfade between window i and i+1
    weights: tuple[np.ndarray, ...]  # float32 [window] per window
    support: tuple[tuple[int, int], ...]  # [a, b) inside window i where its weight is > 0

    def __len__(self) -> int:
        return len(self.starts)


def plan_windows(frames: int, window: int, overlap: int, multiple: int = 1) -> WindowPlan:
    """Windows and weights over `frames` latent frames (`frames`, `window`, `overlap` multiples of `multiple`)."""
    window, overlap = check_window(window, overlap, multiple)
    if frames < 1 or frames % multiple:
        raise ValueError(f"frames {frames} must be >= 1 and a multiple of {multiple}")
    if frames <= window:
        w = np.ones(frames, np.float32)
        return WindowPlan(frames, frames, overlap, (0,), (), (w,), ((0, frames),))
    stride = window - overlap
    starts = [0]
    while starts[-1] + window < frames:
        nxt = starts[-1] + stride
        starts.append(min(nxt, frames - window))
    fades = []
    prev_end = 0
    for s0, s1 in zip(starts, starts[1:]):
        lo, hi = max(s1, prev_end), s0 + window
        length = min(overlap, hi - lo)
        assert length == overlap, (s0, s1, lo, hi, overlap)  # 2 overlap <= window guarantees room
        start = lo + (hi - lo - length) // 2
        fades.append((start, length))
        prev_end = start + length
    f = raised_cosine(overlap)
    g = np.float32(1) - f
    weights, support = [], []
    n = len(starts)
    for i, s in enumerate(starts):
        w = np.ones(window, np.float32)
        a, b = 0, window
        if i > 0:
            f0, fl = fades[i - 1]
            a = f0 - s
            w[:a] = 0
            w[a:a + fl] = f
        if i < n - 1:
            f0, fl = fades[i]
            b = f0 - s + fl
            w[f0 - s:b] = g
            w[b:] = 0
        w.setflags(write=False)
        weights.append(w)
        support.append((a, b))
    return WindowPlan(frames, window, overlap, tuple(starts), tuple(fades), tuple(weights), tuple(support))


class WindowedModel:
    """(x [B, C, T], sigma [B]) -> v [B, C, T] from `model_fn` run on the plan's windows, `batch` windows per call.

    `on_call()` runs after every model call (progress; it may raise to cancel).
    """

    def __init__(self, model_fn: ModelFn, plan: WindowPlan, batch: int = 1,
                 on_call: Callable[[], None] | None = None):
        if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
            raise ValueError(f"window batch must be an integer >= 1, got {batch!r}")
        self.model_fn, self.plan, self.batch, self.on_call = model_fn, plan, int(batch), on_call

    @property
    def calls_per_step(self) -> int:
        return -(-len(self.plan) // self.batch)

    def __call__(self, x: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        p = self.plan
        b = x.shape[0]
        if x.shape[-1] != p.frames:
            raise ValueError(f"x has {x.shape[-1]} frames, the window plan {p.frames}")
        acc = np.zeros(x.shape, dtype=np.float32)
        for g0 in range(0, len(p), self.batch):
            idx = range(g0, min(g0 + self.batch, len(p)))
            xs = np.concatenate([x[..., p.starts[i]:p.starts[i] + p.window] for i in idx], axis=0) \
                if len(idx) > 1 else np.ascontiguousarray(x[..., p.starts[g0]:p.starts[g0] + p.window])
            v = self.model_fn(xs, np.tile(sigma, len(idx)))
            for j, i in enumerate(idx):
                a, e = p.support[i]
                s = p.starts[i]
                acc[..., s + a:s + e] += p.weights[i][a:e] * v[j * b:(j + 1) * b, :, a:e]
            del xs, v
            if self.on_call is not None:
                self.on_call()
        return acc
