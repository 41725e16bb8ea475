"""The contract's magnitude STFT in numpy (what the encoder graph expects as input).

Per channel: centred frames (reflect pad n_fft // 2 both sides), periodic Hann window of length n_fft,
normalized (divided by sqrt(n_fft)), |rfft| -> [channels * (n_fft // 2 + 1), frames]; identical to
torch.stft(..., center=True, normalized=True, window=torch.hann_window(n_fft)).abs(). Frames are processed in
blocks so memory stays bounded for long inputs.
"""
from __future__ import annotations

import numpy as np

_FFT = None


def _fft_module():
    """scipy.fft when installed (~2x faster than numpy.fft here, and float32 in -> complex64 out), else numpy.fft."""
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


def magnitude_stft(audio: np.ndarray, n_fft: int, hop: int, center: bool = True, normalized: bool = True,
                   block_frames: int = 2048) -> np.ndarray:
    """audio [..., C, L] float -> magnitude [..., C * (n_fft // 2 + 1), frames] float32."""
    audio = np.asarray(audio, dtype=np.float32)
    lead, (c, n) = audio.shape[:-2], audio.shape[-2:]
    flat = audio.reshape(-1, n)
    if center:
        pad = n_fft // 2
        if n <= pad:
            raise ValueError(f"reflect padding needs more than {pad} samples, got {n}")
        flat = np.pad(flat, ((0, 0), (pad, pad)), mode="reflect")
    frames = stft_frames(n, n_fft, hop, center)
    bins = n_fft // 2 + 1
    window = hann_periodic(n_fft)
    if normalized:
        window = window / np.float32(np.sqrt(n_fft))
    out = np.empty((flat.shape[0], bins, frames), dtype=np.float32)
    fft = _fft_module()
    view = np.lib.stride_tricks.sliding_window_view(flat, n_fft, axis=-1)[:, ::hop][:, :frames]  # [R, frames, n_fft]
    for s in range(0, frames, block_frames):
        e = min(frames, s + block_frames)
        spec = fft.rfft(view[:, s:e] * window, axis=-1)  # [R, f, bins] complex64 (float32 input)
        out[:, :, s:e] = np.abs(spec).transpose(0, 2, 1)
    return out.reshape(*lead, c * bins, frames)
