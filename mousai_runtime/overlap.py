"""What overlapping generator windows (windowed.py) and decoder chunks (decode.py) share: lengths rounded up to a
multiple, and the raised-cosine crossfade whose fade-in and fade-out sum to exactly 1."""
from __future__ import annotations

import numpy as np


def round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def raised_cosine(length: int) -> np.ndarray:
    """The fade-in f [length] (float32, 0 -> 1): f(k) = 0.5 - 0.5 cos(pi (k + 0.5) / length); the matching fade-out
    is float32(1) - f, and f + (1 - f) == 1."""
    k = np.arange(length, dtype=np.float64)
    return (0.5 - 0.5 * np.cos(np.pi * (k + 0.5) / length)).astype(np.float32)
