"""Audio distances for the evaluation report, in numpy (lower is better for every one of them).

- `log_mel_l1`: mean |log(1e-5 + mel(x)) - log(1e-5 + mel(y))| with 128 mel bands, n_fft 2048, hop 512 (power-1
  magnitude mel), per channel, averaged.
- `mrstft_l1`: the multi-resolution STFT distance: mean over (n_fft, hop) in (512, 128), (1024, 256), (2048, 512) of
  spectral convergence ||Y| - |X||_F / ||X||_F  plus  mean |log(1e-5 + |X|) - log(1e-5 + |Y|)|.
- `griffin_lim`: the phase-retrieval baseline: 64 iterations from the true magnitude (n_fft 1024, hop 256).

These are the numbers of training/RECIPE.md and the README's evaluation table; they compare spectra, never waveforms,
because the DMAE generates its own phase.
"""
from __future__ import annotations

import numpy as np

from mousai_runtime import stft as _stft

EPS = 1e-5
MEL_BANDS, MEL_FFT, MEL_HOP = 128, 2048, 512
MRSTFT_RESOLUTIONS = ((512, 128), (1024, 256), (2048, 512))


def stft(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """Complex STFT [..., frames, n_fft // 2 + 1] with a periodic Hann window (float64; the runtime's own STFT)."""
    return _stft.stft(np.asarray(x, np.float64), n_fft, hop)


def istft(spec: np.ndarray, n_fft: int, hop: int, length: int) -> np.ndarray:
    """Least-squares inverse of `stft` (windowed overlap-add divided by the summed squared window)."""
    return _stft.istft(np.asarray(spec, np.complex128), n_fft, hop, length)


def mel_filterbank(sr: int, n_fft: int = MEL_FFT, bands: int = MEL_BANDS) -> np.ndarray:
    """Triangular HTK-mel filters [bands, n_fft // 2 + 1], each normalised to unit area (Slaney-style)."""
    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    def mel_to_hz(m):
        return 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)

    freqs = np.linspace(0.0, sr / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sr / 2), bands + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    fb = np.maximum(0.0, np.minimum((freqs - lower) / (centre - lower), (upper - freqs) / (upper - centre)))
    return fb * (2.0 / (upper - lower))


_MEL_CACHE: dict[int, np.ndarray] = {}


def log_mel(x: np.ndarray, sr: int) -> np.ndarray:
    """log(1e-5 + mel magnitude) [..., bands, frames] of audio [..., L]."""
    fb = _MEL_CACHE.get(sr)
    if fb is None:
        fb = _MEL_CACHE[sr] = mel_filterbank(sr)
    mag = np.abs(stft(x, MEL_FFT, MEL_HOP))  # [..., frames, bins]
    return np.log(EPS + np.einsum("...tf,bf->...bt", mag, fb))


def _check_pair(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape:
        raise ValueError(f"clips differ in shape: {x.shape} vs {y.shape}")
    return x, y


def log_mel_l1(x: np.ndarray, y: np.ndarray, sr: int = 48000) -> float:
    x, y = _check_pair(x, y)
    return float(np.mean(np.abs(log_mel(x, sr) - log_mel(y, sr))))


def mrstft_l1(x: np.ndarray, y: np.ndarray) -> float:
    """x is the reference (spectral convergence is relative to it)."""
    x, y = _check_pair(x, y)
    total = 0.0
    for n_fft, hop in MRSTFT_RESOLUTIONS:
        mx, my = np.abs(stft(x, n_fft, hop)), np.abs(stft(y, n_fft, hop))
        sc = np.linalg.norm(my - mx) / max(np.linalg.norm(mx), 1e-12)
        total += sc + float(np.mean(np.abs(np.log(EPS + mx) - np.log(EPS + my))))
    return total / len(MRSTFT_RESOLUTIONS)


def griffin_lim(magnitude: np.ndarray, n_fft: int, hop: int, length: int, iterations: int = 64,
                seed: int = 0) -> np.ndarray:
    """Audio whose STFT magnitude approaches `magnitude` [..., frames, bins] (random initial phase, `seed`)."""
    rng = np.random.default_rng(seed)
    phase = np.exp(2j * np.pi * rng.random(magnitude.shape))
    audio = istft(magnitude * phase, n_fft, hop, length)
    for _ in range(iterations):
        spec = stft(audio, n_fft, hop)
        audio = istft(magnitude * np.exp(1j * np.angle(spec)), n_fft, hop, length)
    return audio


def griffin_lim_reconstruction(x: np.ndarray, iterations: int = 64, n_fft: int = 1024, hop: int = 256) -> np.ndarray:
    """The baseline the DMAE is compared with: Griffin-Lim from x's own (uncompressed) magnitude."""
    x = np.asarray(x, np.float64)
    return griffin_lim(np.abs(stft(x, n_fft, hop)), n_fft, hop, x.shape[-1], iterations).astype(np.float32)
