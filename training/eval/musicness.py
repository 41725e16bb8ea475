"""Musicness: does audio hold notes? Three chroma measures, numpy only.

The power spectrum (Hann, n_fft 8192 at 48 kHz, hop 2048, 55 Hz - 5 kHz, channels summed) is folded onto the 12
pitch classes with a triangular weight that is 1 at each semitone centre and 0 half a semitone away (each class's
weights scaled to the same total, so that white noise has a flat chroma). Then:

- agreement(x, y): the mean over frames of the cosine between the mean-removed log chroma of x and of y
  (1 = the same notes; ~0 = unrelated). For a round trip, y = decode(encode(x)).
- peakiness(x): per frame, the top class over the mean of the 12 classes; median over frames (white noise ~1.4,
  a single note or a chord much higher). A static comb (a buzz) is peaky too, hence motion:
- motion(x): the median over frames of 1 - cosine between mean-removed log chroma two frames apart (~0 for a drone
  or a buzz, ~0.2 for real music, ~0.5 for noise).

Frames more than 60 dB below the clip's loudest are left out (silence has no pitch class). The log chroma has a
floor 30 dB below each frame's top class, so that near-empty classes do not turn into large negative numbers.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

SR = 48_000
N_FFT = 8192
HOP = 2048
FMIN, FMAX = 55.0, 5000.0
SILENCE_DB = 60.0
FLOOR_DB = 30.0
MOTION_LAG = 2


@lru_cache(maxsize=8)
def chroma_filterbank(sr: int = SR, n_fft: int = N_FFT, fmin: float = FMIN, fmax: float = FMAX) -> np.ndarray:
    """[12, n_fft // 2 + 1]: pitch class (C = 0) x rfft bin, triangular within half a semitone."""
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    fb = np.zeros((12, freqs.size))
    idx = np.nonzero((freqs >= fmin) & (freqs <= fmax))[0]
    midi = 69.0 + 12.0 * np.log2(freqs[idx] / 440.0)
    nearest = np.round(midi)
    fb[nearest.astype(int) % 12, idx] = 1.0 - 2.0 * np.abs(midi - nearest)
    fb /= fb.sum(axis=1, keepdims=True)  # equal total weight per class: a flat spectrum gives a flat chroma
    fb.setflags(write=False)
    return fb


def _mono_power_frames(audio: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """[frames, n_fft // 2 + 1] power summed over channels; frame i is centred at sample i * hop."""
    x = np.asarray(audio, dtype=np.float64)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[-1] == 0:
        raise ValueError(f"audio must be [samples] or [channels, samples], got shape {np.shape(audio)}")
    pad = n_fft // 2
    x = np.pad(x, ((0, 0), (pad, pad)))
    n_frames = 1 + (x.shape[-1] - n_fft) // hop
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft, axis=-1)[:, ::hop][:, :n_frames]
    spec = np.fft.rfft(frames * np.hanning(n_fft), axis=-1)
    return (spec.real ** 2 + spec.imag ** 2).sum(axis=0)


def chroma(audio: np.ndarray, sr: int = SR, n_fft: int = N_FFT, hop: int = HOP) -> np.ndarray:
    """Power chroma [frames, 12] of audio [samples] or [channels, samples]."""
    return _mono_power_frames(audio, n_fft, hop) @ chroma_filterbank(sr, n_fft).T


def voiced(c: np.ndarray) -> np.ndarray:
    """Frames within SILENCE_DB of the clip's loudest (bool [frames])."""
    energy = c.sum(axis=1)
    top = energy.max() if energy.size else 0.0
    if top <= 0:
        return np.zeros(energy.shape, bool)
    return energy > top * 10 ** (-SILENCE_DB / 10)


def centred_log_chroma(c: np.ndarray) -> np.ndarray:
    """log chroma with a per-frame floor FLOOR_DB below the top class, mean over the 12 classes removed."""
    floor = c.max(axis=1, keepdims=True) * 10 ** (-FLOOR_DB / 10) + 1e-30
    lc = np.log(c + floor)
    return lc - lc.mean(axis=1, keepdims=True)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    ok = (na > 1e-9) & (nb > 1e-9)
    out = np.zeros(a.shape[:-1])
    out[ok] = (a[ok] * b[ok]).sum(-1) / (na[ok] * nb[ok])
    return out


def agreement_of_chroma(c_ref: np.ndarray, c_test: np.ndarray) -> float:
    """Mean cosine of centred log chroma over the reference's voiced frames (a silent test frame counts 0)."""
    n = min(len(c_ref), len(c_test))
    c_ref, c_test = c_ref[:n], c_test[:n]
    keep = voiced(c_ref)
    if not keep.any():
        return float("nan")
    test_voiced = voiced(c_test)
    cos = _cosine(centred_log_chroma(c_ref), centred_log_chroma(c_test))
    cos[~test_voiced] = 0.0
    return float(cos[keep].mean())


def agreement(reference: np.ndarray, test: np.ndarray, sr: int = SR) -> float:
    """Chroma agreement of `test` (e.g. a round trip) with `reference`, frame by frame."""
    return agreement_of_chroma(chroma(reference, sr), chroma(test, sr))


def peakiness(audio: np.ndarray, sr: int = SR) -> float:
    """Median over voiced frames of (top class / mean class)."""
    c = chroma(audio, sr)
    keep = voiced(c)
    if not keep.any():
        return float("nan")
    c = c[keep]
    return float(np.median(c.max(axis=1) / np.maximum(c.mean(axis=1), 1e-30)))


def motion(audio: np.ndarray, sr: int = SR, lag: int = MOTION_LAG) -> float:
    """Median over voiced frame pairs `lag` apart of 1 - cosine of their centred log chroma."""
    c = chroma(audio, sr)
    keep = voiced(c)
    pair = keep[:-lag] & keep[lag:]
    if not pair.any():
        return float("nan")
    lc = centred_log_chroma(c)
    return float(np.median(1.0 - _cosine(lc[:-lag], lc[lag:])[pair]))


def measures(audio: np.ndarray, sr: int = SR) -> dict[str, float]:
    """{'peakiness', 'motion'} of one clip."""
    return {"peakiness": peakiness(audio, sr), "motion": motion(audio, sr)}


def progress_to_real(p: float, p_noise: float, p_real: float) -> float:
    """Where p sits from white noise (0) to real music (1): (p - p_noise) / (p_real - p_noise)."""
    return float((p - p_noise) / (p_real - p_noise))


# reference signals ---------------------------------------------------------------------------------------------

def white_noise(seconds: float, sr: int = SR, seed: int = 0, channels: int = 2, rms: float = 0.1) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((channels, int(seconds * sr))) * rms).astype(np.float32)


def static_comb(seconds: float, f0: float = 110.0, sr: int = SR, channels: int = 2, partials: int = 40,
                amplitude: float = 0.1) -> np.ndarray:
    """A buzz: fixed harmonics of f0 with 1/k amplitudes, the same in every frame (peaky, no motion)."""
    t = np.arange(int(seconds * sr)) / sr
    ks = [k for k in range(1, partials + 1) if k * f0 < sr / 2]
    x = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in ks)
    x = amplitude * x / np.abs(x).max()
    return np.repeat(x[None].astype(np.float32), channels, axis=0)


def note(midi: float, seconds: float, sr: int = SR, partials: int = 8) -> np.ndarray:
    """A harmonic tone (1/k amplitudes) at a MIDI pitch, mono float64, with a short fade in/out."""
    f0 = 440.0 * 2 ** ((midi - 69) / 12)
    t = np.arange(int(seconds * sr)) / sr
    x = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, partials + 1) if k * f0 < sr / 2)
    fade = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)
    return x * fade


def chord_sequence(chords: list[list[int]], seconds_each: float, sr: int = SR, channels: int = 2,
                   amplitude: float = 0.1) -> np.ndarray:
    """Chords (lists of MIDI pitches) one after another: tonal audio that moves."""
    x = np.concatenate([sum(note(m, seconds_each, sr) for m in ch) for ch in chords])
    x = amplitude * x / np.abs(x).max()
    return np.repeat(x[None].astype(np.float32), channels, axis=0)
