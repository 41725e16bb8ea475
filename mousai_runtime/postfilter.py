"""The post-filter (manifest `postfilter`, kind "envelope"): put the decoder's output back on the band envelope its
latent encodes.

Why: a small CPU-trained DMAE decoder invents energy where the source had none (training/RECIPE.md measures it), and
those are cues a listener (and the genre classifier) uses. The latent is a 64x compression of the *magnitude* STFT,
so the coarse band envelope of the audio is recoverable from it: a linear map (fitted in closed form on the training
corpus by `training/postfilter.py`) from a few latent frames and their squares predicts the log power of `bands`
mel-spaced bands per channel and STFT frame.

    post = PostFilter.from_bundle(bundle)    # the manifest's `postfilter` section + its verified weights file
    audio = post.apply(audio, latent)        # [B, 2, L], latent [B, C, T]: per-band gains, clipped

The gains are computed per STFT frame (n_fft, hop of the spec: 1024, 256 at 48 kHz), interpolated across bins by
partition-of-unity triangles (centres from 0 Hz to Nyquist), clipped to `gain_range` (log power), and applied with an exact
inverse STFT, so a decoder output that already has the predicted envelope passes through unchanged. Only numpy.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .stft import istft, stft

FEATURES = "latent+square"  # per latent frame: the latent of 2 * context + 1 frames and their squares, then 1
EPS = 1e-10  # floor of band power (log -23: digital silence)


def mel_centres(sample_rate: int, bands: int) -> np.ndarray:
    def mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f, np.float64) / 700.0)

    return 700.0 * (10.0 ** (np.linspace(0.0, mel(sample_rate / 2), bands) / 2595.0) - 1.0)


def band_matrices(sample_rate: int, n_fft: int, bands: int) -> tuple[np.ndarray, np.ndarray]:
    """(synthesis [bands, bins]: triangles that sum to 1 in every bin; analysis [bands, bins]: each row sums to 1,
    so band power is a weighted mean of bin powers)."""
    freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    c = mel_centres(sample_rate, bands)
    w = np.zeros((bands, freqs.size))
    for b in range(bands):
        if b > 0:
            m = (freqs >= c[b - 1]) & (freqs <= c[b])
            w[b, m] = (freqs[m] - c[b - 1]) / (c[b] - c[b - 1])
        if b < bands - 1:
            m = (freqs >= c[b]) & (freqs <= c[b + 1])
            w[b, m] = (c[b + 1] - freqs[m]) / (c[b + 1] - c[b])
    w /= w.sum(0, keepdims=True)
    return w.astype(np.float32), (w / w.sum(1, keepdims=True)).astype(np.float32)


def latent_features(z: np.ndarray, context: int) -> np.ndarray:
    """latent [C, T] -> [T, 2 * C * (2 * context + 1) + 1] (edge-padded context, squares, constant)."""
    c, t = z.shape
    zp = np.pad(np.asarray(z, np.float32), ((0, 0), (context, context)), mode="edge")
    f = np.concatenate([zp[:, j:j + t] for j in range(2 * context + 1)], 0).T
    return np.concatenate([f, f * f, np.ones((t, 1), np.float32)], 1)


@dataclass
class PostFilter:
    weights: np.ndarray  # [features, sub * channels * bands]
    sample_rate: int
    latent_hop: int
    n_fft: int
    hop: int
    bands: int
    channels: int
    context: int
    gain_range: tuple[float, float]  # clip of the log-power correction

    def __post_init__(self) -> None:
        if self.latent_hop % self.hop:
            raise ValueError(f"STFT hop {self.hop} does not divide the latent hop {self.latent_hop}")
        self.sub = self.latent_hop // self.hop
        self.synthesis, self.analysis = band_matrices(self.sample_rate, self.n_fft, self.bands)

    def band_log_power(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """audio [..., channels, L] -> (log band power [..., channels, bands, frames], complex STFT)."""
        s = stft(audio, self.n_fft, self.hop)
        p = (s.real ** 2 + s.imag ** 2) @ self.analysis.T  # [..., channels, frames, bands]
        return np.log(EPS + p).swapaxes(-1, -2), s

    def predict(self, latent: np.ndarray) -> np.ndarray:
        """latent [C, T] -> predicted log band power [channels, bands, T * sub] (one value per STFT frame)."""
        t = latent.shape[-1]
        y = latent_features(latent, self.context) @ self.weights  # [T, sub * channels * bands]
        return y.reshape(t, self.sub, self.channels, self.bands).transpose(2, 3, 0, 1).reshape(
            self.channels, self.bands, t * self.sub)

    def apply(self, audio: np.ndarray, latent: np.ndarray) -> np.ndarray:
        """audio [B, channels, L] decoded from latent [B, C, T] -> the same audio on the predicted envelope."""
        audio = np.asarray(audio, np.float32)
        out = np.empty_like(audio)
        lo, hi = self.gain_range
        for i in range(audio.shape[0]):
            have, s = self.band_log_power(audio[i])  # [ch, bands, F]
            want = self.predict(latent[i])
            f = have.shape[-1]
            idx = np.minimum(np.arange(f), want.shape[-1] - 1)  # the last frame(s) past the latent: its last value
            d = np.clip(want[..., idx] - have, lo, hi)  # log power
            gain = np.exp(0.5 * (d.swapaxes(-1, -2) @ self.synthesis)).astype(np.float32)  # [ch, F, bins]
            out[i] = istft(s * gain, self.n_fft, self.hop, audio.shape[-1])
        return out

    @classmethod
    def from_bundle(cls, bundle) -> "PostFilter":
        """The post-filter of a loaded Bundle (its `postfilter` section + the verified bytes of its weights)."""
        from safetensors import SafetensorError
        from safetensors.numpy import load

        from .bundle import BundleError

        spec = bundle.postfilter
        try:
            w = load(bundle.read_bytes(spec["file"]))["weights"]
        except (SafetensorError, KeyError, ValueError) as e:
            raise BundleError(f"{bundle.path}: postfilter file {spec['file']!r} is not a safetensors file with a "
                              f"'weights' tensor ({e})")
        env = cls(np.asarray(w, np.float32), bundle.sample_rate, bundle.hop, spec["n_fft"], spec["hop"],
                  spec["bands"], bundle.channels, spec["context"], tuple(float(v) for v in spec["gain_range"]))
        want = (2 * bundle.latent_channels * (2 * env.context + 1) + 1, env.sub * env.channels * env.bands)
        if w.ndim != 2 or tuple(w.shape) != want:
            raise BundleError(f"{bundle.path}: postfilter weights are {tuple(w.shape)}, its settings need {want}")
        return env
