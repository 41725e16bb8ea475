"""Teach the DMAE encoder to carry the spectral envelope: a short supervised stage before the decoder trains on.

Why: the encoder of the default DMAE learnt only through the diffusion decoder's weak gradient, and its latent held
little of the audio's band envelope: the post-filter's features of that latent explained far less of the envelope
than a plain linear code of the same size (PCA of the envelope itself; training/RECIPE.md, stage 4, has the
figures). The envelope is what the listener and the genre classifier hear first and what the post-filter restores,
so the latent should hold it.

This stage trains the encoder (from the checkpoint's weights) with a linear head, a conv of 2 * context + 1 latent
frames, to predict the post-filter's target: the standardised log band power of x (mousai_runtime.postfilter). The
head is thrown away afterwards (the post-filter is refitted in closed form on the new latents); the decoder is left
as it was and must then be trained on with the encoder frozen (`train autoencoder --init-from NEW --freeze-encoder`),
and the generator trained on the new latents. The latent stays what Moûsai's is: tanh of a 1D conv encoder of the
magnitude STFT, 32 channels at 1/1024 of the audio rate.

    python -m training.envelope_encoder CKPT --data CORPUS --out NEW_CKPT [--steps 1500] [--threads 2]
    mousai checkpoint train-encoder CKPT --data CORPUS --out NEW_CKPT      (the same)
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from mousai_runtime.postfilter import PostFilter

from .checkpoint import load_models, read_config, save_checkpoint, weights_sha256
from .postfilter import DEFAULTS, targets


def train_encoder(checkpoint: str | Path, corpus: str | Path, out: str | Path, steps: int = 1500,
                  batch_size: int = 16, crop_length: int = 2 ** 17, lr: float = 1e-3, context: int = 3,
                  bands: int = 32, seed: int = 0, eval_every: int = 250, val_seconds: float = 5.0,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train `checkpoint`'s DMAE encoder on the envelope objective; write the DMAE with the new encoder to `out`."""
    from .data.dataset import RandomCrops
    from .eval.reconstruction import holdout_clips

    cfg, models = load_models(checkpoint, components=("dmae",))
    _, meta = read_config(checkpoint)
    dmae_meta = meta["dmae"] if isinstance(meta.get("dmae"), dict) else meta
    dmae = models["dmae"].float()
    encoder = dmae.encoder.train().requires_grad_(True)
    hop, sr = cfg.dmae.hop, cfg.dmae.sample_rate
    if crop_length % hop:
        raise ValueError(f"crop_length must be a multiple of the latent hop {hop}")
    # the post-filter's own STFT settings, so the encoder learns exactly what fit-envelope will read back
    env = PostFilter(np.zeros((1, 1), np.float32), sr, hop, DEFAULTS["n_fft"], DEFAULTS["hop"], bands,
                   cfg.dmae.encoder.in_channels, context, DEFAULTS["gain_range"])
    torch.manual_seed(seed)
    head = nn.Conv1d(cfg.dmae.latent_channels, env.channels * bands * env.sub, 2 * context + 1, padding=context)
    crops = RandomCrops(corpus, crop_length, seed=seed, batch_size=batch_size, sr=sr)
    frames = crop_length // hop

    def batch(k: int) -> tuple[Tensor, Tensor]:
        audio, _ = crops.batch(k)
        y = np.stack([targets(env, a, frames) for a in audio.numpy()])  # [B, T, D]
        return audio, torch.from_numpy(y).float().transpose(1, 2)  # [B, D, T]

    # standardise every target dimension (so the loss reads as 1 - R^2 and no band dominates)
    ys = torch.cat([batch(10 ** 9 + i)[1] for i in range(4)], 0)  # steps the run never reaches
    mean, std = ys.mean((0, 2), keepdim=True), ys.std((0, 2), keepdim=True).clamp_min(1e-3)

    val_clips = holdout_clips(corpus, seconds=val_seconds, per_track=2)
    val_audio = [torch.from_numpy(c.audio)[None] for c in val_clips]
    val_y = [(torch.from_numpy(targets(env, c.audio, math.ceil(c.audio.shape[1] / hop))).T[None] - mean) / std
             for c in val_clips]

    def evaluate() -> dict[str, float]:
        """R^2 of the linear head on the held-out clips (variance around the mean of all their frames, as the
        post-filter's fit reports it) and the fraction of latent values in tanh saturation."""
        encoder.eval()
        se = sat = n = 0.0
        with torch.no_grad():
            for a, y in zip(val_audio, val_y):
                z = dmae.encode(a)
                se += float(((head(z) - y) ** 2).sum())
                sat += float((z.abs() > 0.99).float().sum())
                n += z.numel()
        encoder.train()
        ys = torch.cat(val_y, 2)
        return {"val_r2": 1.0 - se / float(((ys - ys.mean(2, keepdim=True)) ** 2).sum()), "saturation": sat / n}

    params = list(encoder.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    cosine = lambda k: 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(k, steps) / steps))  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine)
    history = [{"step": 0, **evaluate()}]
    log(f"envelope encoder: {len(val_clips)} held-out clips; before: val R^2 {history[0]['val_r2']:.3f} (linear head "
        f"untrained), saturation {history[0]['saturation']:.3f}")
    t0, running = time.time(), []
    for k in range(steps):
        audio, y = batch(k)
        z = dmae.encode(audio)
        loss = torch.mean((head(z) - (y - mean) / std) ** 2)
        if not torch.isfinite(loss):
            raise RuntimeError(f"non-finite loss at step {k}: nothing written")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        running.append(loss.item())
        if (k + 1) % eval_every == 0 or k + 1 == steps:
            history.append({"step": k + 1, "train_loss": float(np.mean(running)), **evaluate()})
            running = []
            h = history[-1]
            log(f"step {k + 1}/{steps}: train loss {h['train_loss']:.4f}, val R^2 {h['val_r2']:.3f}, "
                f"saturation {h['saturation']:.3f} ({time.time() - t0:.0f} s)")
    encoder.eval().requires_grad_(False)
    weights = dmae.state_dict()
    new_meta = {**dmae_meta, "encoder_sha256": weights_sha256(dmae.encoder.state_dict()),
                "envelope_encoder": {"from": str(checkpoint), "steps": steps, "batch_size": batch_size,
                                     "crop_length": crop_length, "lr": lr, "context": context, "bands": bands,
                                     "seconds": round(time.time() - t0, 1), "history": history}}
    save_checkpoint(out, cfg, {"dmae": weights}, new_meta, dtype=torch.float32)
    log(f"wrote {out} (decoder unchanged: train it on with --init-from {out} --freeze-encoder)")
    return new_meta["envelope_encoder"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.envelope_encoder", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint with a DMAE (e.g. engines/checkpoints/default)")
    p.add_argument("--data", required=True, help="the corpus folder")
    p.add_argument("--out", required=True, help="new checkpoint folder (DMAE only)")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    if a.steps < 1 or a.batch_size < 1 or not (0 < a.lr < 1) or a.threads < 1:
        print("error: --steps, --batch-size and --threads must be >= 1 and --lr in (0, 1)", file=sys.stderr)
        return 2
    torch.set_num_threads(a.threads)
    try:
        train_encoder(a.checkpoint, a.data, a.out, steps=a.steps, batch_size=a.batch_size, lr=a.lr)
    except (ValueError, OSError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
