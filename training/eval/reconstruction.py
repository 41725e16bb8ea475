"""DMAE reconstruction on held-out real music: decode(encode(x)) vs x, next to Griffin-Lim and white noise.

    clips = holdout_clips(corpus, seconds=5.0, per_track=2)           # real tracks never trained on
    rows = reconstruction_table(autoencoder, clips, steps=(10, 20, 50))

`autoencoder(audio [2, N], steps, seed) -> audio [2, N]` is any round trip: the shipped bundle through
mousai_runtime (`bundle_autoencoder`), or a PyTorch checkpoint while it trains (`checkpoint_autoencoder`).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import metrics

AutoEncoder = Callable[[np.ndarray, int, int], np.ndarray]
REAL_SOURCES_EXCLUDE = ("midi",)  # rendered MIDI is synthetic: reconstruction is judged on real recordings


@dataclass
class Clip:
    name: str  # track path + start second
    genre: str
    audio: np.ndarray  # float32 [2, N]


def holdout_clips(corpus: str | Path, seconds: float = 5.0, per_track: int = 2, sr: int = 48000,
                  real_only: bool = True, min_rms: float = 0.01) -> list[Clip]:
    """`per_track` clips of `seconds` from each held-out track, at evenly spaced positions (not the first or last
    10 %: intros and fades); clips quieter than `min_rms` are skipped (silence measures nothing)."""
    from training.data.audio import read_frames
    from training.data.dataset import AudioFolder

    folder = AudioFolder(corpus, sr=sr, split="holdout")
    n = int(round(seconds * sr))
    out: list[Clip] = []
    for t in folder.tracks:
        if real_only and t.meta.get("source") in REAL_SOURCES_EXCLUDE:
            continue
        total = int(t.duration * sr)
        if total < 2 * n:
            continue
        for k in range(per_track):
            start = int(total * (0.1 + 0.8 * (k + 0.5) / per_track)) - n // 2
            audio, _ = read_frames(t.path, start * t.samplerate // sr, n * t.samplerate // sr)
            if t.samplerate != sr:
                from training.data.audio import resample

                audio = resample(audio, t.samplerate, sr)
            audio = np.ascontiguousarray(audio[:, :n], dtype=np.float32)
            if audio.shape[1] < n or float(np.sqrt(np.mean(audio ** 2))) < min_rms:
                continue
            genre = t.meta.get("genre", "")
            out.append(Clip(f"{t.rel}@{start / sr:.1f}s", genre if isinstance(genre, str) else str(genre), audio))
    if not out:
        raise ValueError(f"no held-out clips of {seconds} s in {corpus} (metadata split 'holdout')")
    return out


def clips_sha256(clips: Sequence[Clip]) -> str:
    h = hashlib.sha256()
    for c in clips:
        h.update(c.name.encode())
        h.update(np.ascontiguousarray(c.audio).tobytes())
    return h.hexdigest()


def bundle_autoencoder(bundle_dir: str | Path, threads: int | None = None) -> AutoEncoder:
    from mousai_runtime.pipeline import Pipeline

    pipe = Pipeline(bundle_dir, threads=threads)

    def run(audio: np.ndarray, steps: int, seed: int) -> np.ndarray:
        return pipe.decode(pipe.encode(audio), steps=steps, seed=seed, samples=audio.shape[1])

    return run


def checkpoint_autoencoder(checkpoint: str | Path) -> AutoEncoder:
    import torch

    from training.checkpoint import load_models

    dmae = load_models(checkpoint, components=("dmae",))[1]["dmae"]

    def run(audio: np.ndarray, steps: int, seed: int) -> np.ndarray:
        with torch.no_grad():
            x = torch.from_numpy(audio)[None]
            y = dmae.decode(dmae.encode(x), steps=steps, generator=torch.Generator().manual_seed(seed))
        return y[0, :, :audio.shape[1]].numpy()

    return run


@dataclass
class Row:
    method: str
    log_mel_l1: float
    mrstft_l1: float
    seconds: float  # wall time over all clips


def _score(clips: Sequence[Clip], make: Callable[[Clip, int], np.ndarray], method: str, sr: int) -> Row:
    import time

    mel, mr, wall = [], [], 0.0
    for i, c in enumerate(clips):
        t0 = time.perf_counter()
        y = make(c, i)
        wall += time.perf_counter() - t0
        if not np.isfinite(y).all():
            raise FloatingPointError(f"{method} produced non-finite audio for {c.name}")
        mel.append(metrics.log_mel_l1(c.audio, y, sr))
        mr.append(metrics.mrstft_l1(c.audio, y))
    return Row(method, float(np.mean(mel)), float(np.mean(mr)), wall)


def reconstruction_table(autoencoder: AutoEncoder | None, clips: Sequence[Clip], steps: Sequence[int] = (10, 20, 50),
                         sr: int = 48000, griffin_lim_iterations: int = 64, baselines: bool = True,
                         progress: Callable[[str], None] | None = None, label: str = "DMAE") -> list[Row]:
    """One row per method, mean over clips: the DMAE at each step count (rows named `label`), then the baselines."""
    rows = []
    if autoencoder is not None:
        for s in steps:
            if progress:
                progress(f"{label}, {s} decoder steps")
            rows.append(_score(clips, lambda c, i, s=s: autoencoder(c.audio, s, i), f"{label}, {s} decoder steps", sr))
    if baselines:
        if progress:
            progress("Griffin-Lim")
        rows.append(_score(clips, lambda c, i: metrics.griffin_lim_reconstruction(c.audio, griffin_lim_iterations),
                           f"Griffin-Lim, {griffin_lim_iterations} iterations, true magnitude", sr))

        def noise(c: Clip, i: int) -> np.ndarray:
            rng = np.random.default_rng(i)
            return (rng.standard_normal(c.audio.shape) * np.sqrt(np.mean(c.audio ** 2))).astype(np.float32)

        rows.append(_score(clips, noise, "white noise at the clip's RMS", sr))
    return rows
