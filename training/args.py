"""Argument checks shared by `mousai train` / `mousai init` and the Python API (training.train.train).

Every check runs before anything is created or written, and raises ValueError with a one-line message that names
the argument, its allowed range and the value given. No torch import: the CLI calls these before loading torch.
"""
from __future__ import annotations

import math
from typing import Any

MAX_SEED = 2**63 - 1  # torch.manual_seed and numpy's SeedSequence both take [0, 2^63)
MAX_STEPS = 10**9
MAX_BATCH = 4096
MAX_CROP = 2**24  # samples per crop (350 s at 48 kHz)
MAX_THREADS = 1024


def _is_int(v: Any) -> bool:
    import numbers

    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    import numbers

    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def check_int(name: str, v: Any, lo: int, hi: int, optional: bool = False) -> int | None:
    if v is None and optional:
        return None
    if not _is_int(v) or not lo <= v <= hi:
        raise ValueError(f"{name} must be an integer in [{lo:,}, {hi:,}], got {v!r}")
    return int(v)


def check_float(name: str, v: Any, lo: float, hi: float, optional: bool = False, lo_open: bool = False,
                hi_open: bool = False) -> float | None:
    if v is None and optional:
        return None
    ok = _is_real(v) and math.isfinite(float(v))
    if ok:
        x = float(v)
        ok = (lo < x if lo_open else lo <= x) and (x < hi if hi_open else x <= hi)
    if not ok:
        rng = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise ValueError(f"{name} must be a finite number in {rng}, got {v!r}")
    return float(v)


def check_seed(name: str, v: Any, optional: bool = False) -> int | None:
    return check_int(name, v, 0, MAX_SEED, optional)


def check_train_args(*, steps: Any, batch_size: Any, crop_length: Any, lr: Any, seed: Any, threads: Any,
                     ckpt_every: Any, sample_every: Any, log_every: Any, grad_clip: Any, ema_beta: Any,
                     ema_power: Any, sample_steps: Any, genre_balance: Any = None,
                     short_captions: Any = None) -> None:
    """ValueError (one line) for the first training argument outside its range; None = the default / the run's."""
    check_int("steps", steps, 0, MAX_STEPS)
    check_int("batch_size", batch_size, 1, MAX_BATCH, optional=True)
    check_int("crop_length", crop_length, 1, MAX_CROP, optional=True)
    check_float("lr", lr, 0.0, 1.0, optional=True, lo_open=True)
    check_seed("seed", seed, optional=True)
    check_int("threads", threads, 1, MAX_THREADS, optional=True)
    check_int("ckpt_every", ckpt_every, 0, MAX_STEPS)
    check_int("sample_every", sample_every, 0, MAX_STEPS)
    check_int("log_every", log_every, 0, MAX_STEPS)
    check_float("grad_clip", grad_clip, 0.0, 1e6)
    check_float("ema_beta", ema_beta, 0.0, 1.0, hi_open=True)
    check_float("ema_power", ema_power, 0.0, 100.0, lo_open=True)
    check_int("sample_steps", sample_steps, 1, 10000)
    check_float("genre_balance", genre_balance, 0.0, 1.0, optional=True)
    check_float("short_captions", short_captions, 0.0, 1.0, optional=True)
