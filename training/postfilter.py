"""Fit the post-filter (mousai_runtime/postfilter.py, kind "envelope") of a DMAE checkpoint, in closed form.

For clips of the corpus' training split: latent z = encoder(x) (the checkpoint's torch encoder) and the target,
the log band power of x per channel and STFT frame. Ridge regression from latent features (a few frames of z and
their squares) to the targets; the weights go into CKPT/envelope.safetensors with their settings and the encoder
hash in its metadata, so `mousai export` ships them and a later DMAE with the same (frozen) encoder keeps them.

    python -m training.postfilter CKPT --data CORPUS [--clips 400]   (also: mousai checkpoint fit-envelope)
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mousai_runtime.files import atomic_write
from mousai_runtime.postfilter import FEATURES, PostFilter, latent_features

FILE = "envelope.safetensors"  # the weights file of the kind "envelope" (in checkpoints and bundles)
DEFAULTS = {"n_fft": 1024, "hop": 256, "bands": 32, "context": 3, "gain_range": (-12.0, 2.0), "ridge": 10.0}


def encoder_fingerprint(checkpoint: str | Path) -> str:
    """sha256 of the checkpoint's encoder weights at float16 (so an fp32 run checkpoint and the fp16 committed copy
    of the same encoder agree): the post-filter is valid for exactly the latents of this encoder."""
    import torch

    from training.checkpoint import load_weights, weights_sha256

    w = load_weights(checkpoint, "dmae")
    return weights_sha256({k[len("encoder."):]: v.to(torch.float16) for k, v in w.items() if k.startswith("encoder.")})


def training_clips(corpus: str | Path, n: int, seconds: float = 5.0, sr: int = 48000, seed: int = 0,
                   min_rms: float = 0.01) -> list[np.ndarray]:
    """`n` clips [2, seconds * sr] from random positions of random training-split tracks (quiet ones skipped)."""
    from training.data.audio import read_frames, resample
    from training.data.dataset import AudioFolder

    tracks = [t for t in AudioFolder(corpus, sr=sr, split="train").tracks if t.duration > seconds + 0.1]
    if not tracks:
        raise ValueError(f"no training tracks longer than {seconds} s in {corpus}")
    rng = np.random.default_rng(seed)
    length = int(round(seconds * sr))
    out: list[np.ndarray] = []
    tries = 0
    while len(out) < n and tries < 20 * n:
        tries += 1
        t = tracks[int(rng.integers(len(tracks)))]
        start = int(rng.integers(0, int(t.duration * sr) - length))
        a, _ = read_frames(t.path, start * t.samplerate // sr, length * t.samplerate // sr + 16)
        if t.samplerate != sr:
            a = resample(a, t.samplerate, sr)
        a = np.ascontiguousarray(a[:, :length], np.float32)
        if a.shape[1] == length and float(np.sqrt(np.mean(a ** 2))) >= min_rms:
            out.append(a)
    if len(out) < n:
        raise ValueError(f"found only {len(out)} of {n} non-silent clips in {corpus}")
    return out


def targets(env: PostFilter, audio: np.ndarray, frames: int) -> np.ndarray:
    """audio [2, L] -> [frames, 2 * bands * sub]: the log band power of every STFT frame of each latent frame (the
    last frame(s) padded, as PostFilter.apply does), one row per latent frame."""
    have, _ = env.band_log_power(audio)  # [2, bands, F]
    need = env.sub * frames
    if have.shape[-1] < need:
        have = np.concatenate([have, have[..., -1:].repeat(need - have.shape[-1], -1)], -1)
    return have[..., :need].reshape(env.channels, env.bands, frames, env.sub).transpose(2, 3, 0, 1).reshape(frames, -1)


def fit(encode: Callable[[np.ndarray], np.ndarray], clips: list[np.ndarray], sample_rate: int, latent_hop: int,
        n_fft: int = 1024, hop: int = 256, bands: int = 32, context: int = 3,
        gain_range: tuple[float, float] = (-8.0, 2.0), ridge: float = 10.0) -> tuple[PostFilter, dict[str, float]]:
    """Least squares (ridge on everything but the constant) -> (PostFilter, {"r2": training R^2, "rmse": ...})."""
    env = PostFilter(np.zeros((1, 1), np.float32), sample_rate, latent_hop, n_fft, hop, bands, 2, context, gain_range)
    gram, cross, n, ysum, ysq = None, None, 0, 0.0, 0.0
    for a in clips:
        z = encode(a)  # [C, T]
        t = z.shape[-1]
        x = latent_features(z, context).astype(np.float64)
        y = targets(env, a, t).astype(np.float64)
        gram = x.T @ x if gram is None else gram + x.T @ x
        cross = x.T @ y if cross is None else cross + x.T @ y
        n, ysum, ysq = n + t, ysum + y.sum(0), ysq + (y * y).sum(0)
    reg = ridge * np.eye(gram.shape[0])
    reg[-1, -1] = 0.0  # the constant is not shrunk
    w = np.linalg.solve(gram + reg, cross)
    # training residual from the sufficient statistics: sum (y - xw)^2 = sum y^2 - 2 w.cross + w.gram.w
    sse = float(ysq.sum() - 2 * np.sum(w * cross) + np.sum(w * (gram @ w)))
    sst = float(np.sum(ysq - ysum ** 2 / n))
    env.weights = w.astype(np.float32)
    return env, {"r2": 1.0 - sse / sst, "rmse": float(np.sqrt(max(sse, 0.0) / (n * y.shape[1]))), "frames": n}


def save(env: PostFilter, path: Path, info: dict[str, Any]) -> None:
    """envelope.safetensors: tensor "weights" + metadata "settings" (JSON), written atomically."""
    from safetensors.numpy import save

    settings = {"features": FEATURES, "sample_rate": env.sample_rate, "latent_hop": env.latent_hop,
                "n_fft": env.n_fft, "hop": env.hop, "bands": env.bands, "channels": env.channels,
                "context": env.context, "gain_range": list(env.gain_range), **info}
    data = save({"weights": np.ascontiguousarray(env.weights)}, metadata={"settings": json.dumps(settings)})
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def fit_checkpoint(checkpoint: str | Path, corpus: str | Path, clips: int = 400, seed: int = 0,
                   log: Callable[[str], None] = print, **settings: Any) -> dict[str, Any]:
    """Fit the post-filter of `checkpoint`'s DMAE on `clips` training clips; write CKPT/envelope.safetensors."""
    import torch

    from training.checkpoint import load_models

    ck = Path(checkpoint)
    cfg, models = load_models(ck, components=("dmae",))
    dmae = models["dmae"]
    t0 = time.time()
    audio = training_clips(corpus, clips, sr=cfg.dmae.sample_rate, seed=seed)
    log(f"{len(audio)} training clips of 5 s read in {time.time() - t0:.0f} s")

    def encode(a: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return dmae.encode(torch.from_numpy(a)[None])[0].numpy()

    t1 = time.time()
    opts = {**DEFAULTS, **settings}
    env, stats = fit(encode, audio, cfg.dmae.sample_rate, dmae.hop, **opts)
    log(f"fitted on {stats['frames']} latent frames in {time.time() - t1:.0f} s: training R^2 {stats['r2']:.3f}, "
        f"rmse {stats['rmse']:.3f} (log power)")
    info = {"ridge": opts["ridge"], "clips": len(audio), "seed": seed, "train_r2": round(stats["r2"], 4),
            "train_rmse": round(stats["rmse"], 4),
            "encoder_fp16_sha256": encoder_fingerprint(ck)}
    save(env, ck / FILE, info)
    return info


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--data", required=True)
    p.add_argument("--clips", type=int, default=400)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    fit_checkpoint(a.checkpoint, a.data, a.clips)


if __name__ == "__main__":
    main()
