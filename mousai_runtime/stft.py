"""The one numpy STFT: the encoder's magnitude input, the post-filter's analysis / resynthesis, the evaluation.

Frames are centred (reflect pad n_fft // 2 both sides) and windowed by a periodic Hann window of length n_fft.

- `magnitude_stft`: the contract's encoder input, normalized (window / sqrt(n_fft)), |rfft| ->
  [channels * (n_fft // 2 + 1), frames]; identical to torch.stft(..., center=True, normalized=True,
  window=torch.hann_window(n_fft)).abs(). Float32 throughout (scipy.fft when installed: about 2x numpy.fft here),
  computed in blocks of frames so memory stays bounded for long inputs.
- `stft` / `istft`: the complex STFT [..., frames = 1 + L // hop, bins] (not normalized) and its least-squares
  inverse, with numpy.fft (double precision inside): float64 in stays float64, anything else comes back as
  complex64 / float32.
"""
from __future__ import annotations

import numpy as np

_FFT = None


def _fft_module():
    """scipy.fft when installed (float32 in -> complex64 out), else numpy.fft."""
    global _FFT
    if _FFT is None:
        try:
            from scipy import fft as f  # type: ignore
        except ImportError:  # pragma: no cover
            f = np.fft
        _FFT = f
    return _FFT


def hann_periodic(n: int) -> np.ndarray:
    k = np.arange(n, dtype=np.float64)
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * k / n)).astype(np.float32)


def stft_frames(length: int, n_fft: int, hop: int, center: bool = True) -> int:
    padded = length + 2 * (n_fft // 2) if center else length
    if padded < n_fft:
        raise ValueError(f"signal of {length} samples is too short for n_fft {n_fft}")
    return 1 + (padded - n_fft) // hop


def frames(x: np.ndarray, n_fft: int, hop: int, center: bool = True) -> np.ndarray:
    """[..., L] -> a strided view [..., frames, n_fft] (centred: reflect-padded by n_fft // 2 first)."""
    if center:
        pad = n_fft // 2
        x = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
    return np.lib.stride_tricks.sliding_window_view(x, n_fft, axis=-1)[..., ::hop, :]


def magnitude_stft(audio: np.ndarray, n_fft: int, hop: int, center: bool = True, normalized: bool = True,
                   block_frames: int = 2048) -> np.ndarray:
    """audio [..., C, L] float -> magnitude [..., C * (n_fft // 2 + 1), frames] float32."""
    audio = np.asarray(audio, dtype=np.float32)
    lead, (c, n) = audio.shape[:-2], audio.shape[-2:]
    if center and n <= n_fft // 2:
        raise ValueError(f"reflect padding needs more than {n_fft // 2} samples, got {n}")
    count = stft_frames(n, n_fft, hop, center)
    view = frames(audio.reshape(-1, n), n_fft, hop, center)[:, :count]  # [R, frames, n_fft]
    bins = n_fft // 2 + 1
    window = hann_periodic(n_fft)
    if normalized:
        window = window / np.float32(np.sqrt(n_fft))
    out = np.empty((view.shape[0], bins, count), dtype=np.float32)
    fft = _fft_module()
    for s in range(0, count, block_frames):
        e = min(count, s + block_frames)
        spec = fft.rfft(view[:, s:e] * window, axis=-1)  # [R, f, bins] complex64 (float32 input)
        out[:, :, s:e] = np.abs(spec).transpose(0, 2, 1)
    return out.reshape(*lead, c * bins, count)


def stft(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """[..., L] -> [..., frames = 1 + L // hop, n_fft // 2 + 1]: centred (reflect), periodic Hann, not normalized.
    float64 input stays float64 (complex128; the evaluation's metrics), anything else comes back as complex64."""
    dt = np.float64 if np.asarray(x).dtype == np.float64 else np.float32
    x = np.asarray(x, dt)
    view = frames(x, n_fft, hop)[..., :1 + x.shape[-1] // hop, :]
    spec = np.fft.rfft(view * hann_periodic(n_fft).astype(dt), axis=-1)
    return spec if dt == np.float64 else spec.astype(np.complex64)


def istft(spec: np.ndarray, n_fft: int, hop: int, length: int) -> np.ndarray:
    """Least-squares inverse of `stft` (windowed overlap-add over the summed squared window); hop divides n_fft.
    complex128 in -> float64 out, else float32."""
    if n_fft % hop:
        raise ValueError(f"hop {hop} does not divide n_fft {n_fft}")
    dt = np.float64 if np.asarray(spec).dtype == np.complex128 else np.float32
    w = hann_periodic(n_fft).astype(dt)
    windowed = np.fft.irfft(spec, n=n_fft, axis=-1).astype(dt) * w  # [..., F, n_fft]
    lead, f = windowed.shape[:-2], windowed.shape[-2]
    k = n_fft // hop
    blocks = np.zeros(lead + (f + k - 1, hop), dt)
    norm = np.zeros((f + k - 1, hop), dt)
    parts, wparts = windowed.reshape(lead + (f, k, hop)), (w * w).reshape(k, hop)
    for j in range(k):  # frame i's j-th hop-long part lands in block i + j
        blocks[..., j:j + f, :] += parts[..., :, j, :]
        norm[j:j + f] += wparts[j]
    out = (blocks / np.maximum(norm, 1e-8)).reshape(lead + (-1,))
    pad = n_fft // 2
    return np.ascontiguousarray(out[..., pad:pad + length])
