"""Overlap-add chunked decoding of a latent of any length, with memory flat in the clip length.

The latent [B, C, T] is cut into windows of `chunk` frames (a multiple of the decoder's length multiple) that overlap
by `2 * margin + fade` frames, where margin >= the decoder's receptive field (manifest, audio samples) rounded up to
frames. Every chunk starts from a window cut from ONE global noise signal (`GlobalNoise`: standard normal, defined per
fixed block by counter-based seeding, so any window can be cut without materialising the rest and neighbours see the
same noise where they overlap), runs all denoising steps on its own, and is joined to its neighbour with a raised-cosine
crossfade (w_in + w_out = 1: equal gain, right for the strongly correlated content of two decodings of the same latent
and noise) placed in the middle of the region where both chunks are at least `margin` away from their edges.
The last window is aligned to the end of the (padded) latent, so every decoder call has the same shape.

Chunked decoding equals whole-signal decoding exactly for a model whose influence is local (receptive field x steps
<= margin); the DMAE decoder's GroupNorm statistics are global, so there it is close rather than exact (see tests).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np

from .overlap import raised_cosine, round_up
from .sampling import check_sampler, linear_sigmas, sample

DecoderFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]  # (x [B,2,L], sigma [B], latent [B,C,L/hop]) -> v
PostFn = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (audio [B,2,L], latent [B,C,L/hop]) -> audio, per chunk

NOISE_BLOCK = 1 << 16
_U64 = (1 << 64) - 1


def seed_words(seed: int) -> int:
    """Any Python int -> a non-negative 64-bit word for numpy's SeedSequence."""
    return int(seed) & _U64


class GlobalNoise:
    """Standard normal noise [channels, infinity) as a pure function of (seed, stream, block index).

    Block k is drawn from PCG64 seeded by SeedSequence([stream, seed, k]); `cut(a, b)` assembles any window from the
    blocks it touches (a small LRU keeps the blocks shared by neighbouring chunks).
    """

    def __init__(self, seed: int, channels: int = 2, stream: int = 1, block: int = NOISE_BLOCK, cache: int = 8):
        self.seed, self.channels, self.stream, self.block = seed_words(seed), channels, stream, block
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_size = cache

    def _block(self, k: int) -> np.ndarray:
        b = self._cache.get(k)
        if b is None:
            rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.stream, self.seed, k])))
            b = rng.standard_normal((self.channels, self.block), dtype=np.float32)
            self._cache[k] = b
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(k)
        return b

    def cut(self, start: int, end: int, out: np.ndarray | None = None) -> np.ndarray:
        if start < 0 or end < start:
            raise ValueError(f"bad noise window [{start}, {end})")
        if out is None:
            out = np.empty((self.channels, end - start), dtype=np.float32)
        pos = start
        while pos < end:
            k, off = divmod(pos, self.block)
            n = min(self.block - off, end - pos)
            out[:, pos - start:pos - start + n] = self._block(k)[:, off:off + n]
            pos += n
        return out


@dataclass
class Plan:
    frames: int  # latent frames to decode (before padding)
    padded: int  # frames after padding to the multiple
    hop: int
    chunks: list[tuple[int, int]]  # [start, end) in latent frames; all the same length
    fades: list[tuple[int, int]] = field(default_factory=list)  # (start sample, length) between chunk i and i+1

    @property
    def chunk_frames(self) -> int:
        return self.chunks[0][1] - self.chunks[0][0]


def plan_chunks(frames: int, hop: int, multiple: int, chunk: int | None, margin: int, fade: int,
                balance: bool = False) -> Plan:
    """Windows over `frames` latent frames; `multiple`, `chunk`, `margin`, `fade` in latent frames.

    `balance`: `chunk` is the largest chunk; use the fewest chunks that cover the latent and make them as short as
    that allows (so the frames decoded twice are the unavoidable overlaps only, not a last chunk that mostly
    repeats its neighbour). Without it every chunk is `chunk` frames long.
    """
    if frames < 1:
        raise ValueError("cannot decode an empty latent")
    padded = round_up(frames, multiple)
    if chunk is None or padded <= chunk:
        return Plan(frames, padded, hop, [(0, padded)])
    if chunk % multiple:
        raise ValueError(f"chunk of {chunk} frames is not a multiple of {multiple}")
    overlap = 2 * margin + fade
    stride = chunk - overlap
    if stride < 1:
        raise ValueError(f"chunk of {chunk} frames is too small for the overlap of {overlap} frames "
                         f"(2 x margin {margin} + fade {fade})")
    if balance:  # n chunks of c frames cover n c - (n - 1) overlap frames
        n = -(-(padded - overlap) // stride)
        chunk = max(round_up(-(-(padded + (n - 1) * overlap) // n), multiple),
                    round_up(overlap + multiple, multiple))
        stride = chunk - overlap
    starts = [0]
    while starts[-1] + chunk < padded:
        nxt = starts[-1] + stride
        if nxt + chunk >= padded:
            nxt = padded - chunk
        starts.append(nxt)
    chunks = [(s, s + chunk) for s in starts]
    fades = []
    fl = fade * hop
    for (_, e0), (s1, _) in zip(chunks, chunks[1:]):
        lo, hi = (s1 + margin) * hop, (e0 - margin) * hop
        assert hi - lo >= fl, (lo, hi, fl)
        fades.append((lo + (hi - lo - fl) // 2, fl))
    return Plan(frames, padded, hop, chunks, fades)


class ChunkedDecoder:
    """Decode latents of any length chunk by chunk with `model_fn`, streaming finished audio."""

    def __init__(self, model_fn: DecoderFn, hop: int, multiple_frames: int, audio_scale: float = 1.0,
                 receptive_field: int = 0, channels: int = 2, chunk_frames: int | None = 512,
                 margin_frames: int | None = None, fade_frames: int | None = None, balance: bool = False,
                 post_fn: PostFn | None = None):
        """`chunk_frames`: the chunk length (with `balance`: the largest; the fewest chunks, evenly shortened).
        `post_fn` runs on every decoded chunk (audio units) before the crossfade, e.g. the envelope post-filter:
        whatever it does near a chunk's edges lies in the margin that the crossfade leaves out."""
        self.model_fn, self.hop, self.multiple = model_fn, hop, multiple_frames
        self.post_fn = post_fn
        self.balance = bool(balance)
        self.audio_scale, self.channels = float(audio_scale), channels
        self.margin = math.ceil(receptive_field / hop) if margin_frames is None else int(margin_frames)
        self.fade = max(1, multiple_frames) if fade_frames is None else int(fade_frames)
        if self.margin < 0 or self.fade < 1:
            raise ValueError("margin must be >= 0 and fade >= 1 frame")
        if chunk_frames is not None:
            chunk_frames = max(round_up(int(chunk_frames), multiple_frames),
                               round_up(2 * self.margin + self.fade + multiple_frames, multiple_frames))
        self.chunk_frames = chunk_frames

    def plan(self, frames: int) -> Plan:
        return plan_chunks(frames, self.hop, self.multiple, self.chunk_frames, self.margin, self.fade, self.balance)

    def total_steps(self, frames: int, steps: int) -> int:
        return len(self.plan(frames).chunks) * steps

    def stream(self, latent: np.ndarray, steps: int, noise: GlobalNoise | Sequence[GlobalNoise],
               out_samples: int | None = None,
               on_step: Callable[[], None] | None = None, sampler: str = "ddim") -> Iterator[np.ndarray]:
        """Yield consecutive audio blocks [B, channels, n] (float32, audio units) covering out_samples.

        `on_step()` runs after every denoising step of every chunk (progress; it may raise to cancel).
        `sampler`: "ddim" or "dpmpp-2m" (mousai_runtime.sampling), run on every chunk.
        """
        check_sampler(sampler)
        latent = np.asarray(latent, dtype=np.float32)
        b, _, t = latent.shape
        noises = [noise] * b if isinstance(noise, GlobalNoise) else list(noise)
        if len(noises) != b:
            raise ValueError(f"{len(noises)} noise signals for a batch of {b}")
        plan = self.plan(t)
        hop = self.hop
        total = t * hop if out_samples is None else int(out_samples)
        if not 0 < total <= plan.padded * hop:
            raise ValueError(f"out_samples {total} outside (0, {plan.padded * hop}]")
        if plan.padded > t:
            latent = np.concatenate([latent, np.zeros((*latent.shape[:2], plan.padded - t), np.float32)], -1)
        sigmas = linear_sigmas(steps)
        callback = (lambda i, x: on_step()) if on_step is not None else None
        pos, tail = 0, None
        n = len(plan.chunks)
        for i, (cs, ce) in enumerate(plan.chunks):
            if pos >= total:
                break
            s, e = cs * hop, ce * hop
            lat = np.ascontiguousarray(latent[..., cs:ce])
            x = np.stack([nz.cut(s, e) for nz in noises])
            y = sample(sampler, lambda xx, sg: self.model_fn(xx, sg, lat), x, sigmas, callback=callback,
                       component="decoder")
            y *= np.float32(1.0 / self.audio_scale)
            if self.post_fn is not None:
                y = self.post_fn(y, lat)
            parts = []
            if tail is not None:
                f0, fl = plan.fades[i - 1]
                w = raised_cosine(fl)
                parts.append(tail * (1 - w) + y[..., f0 - s:f0 - s + fl] * w)
                body_start = f0 + fl
            else:
                body_start = s
            body_end = plan.fades[i][0] if i < n - 1 else e
            parts.append(y[..., body_start - s:body_end - s])
            tail = y[..., body_end - s:body_end - s + plan.fades[i][1]].copy() if i < n - 1 else None
            block = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)
            keep = min(block.shape[-1], total - pos)
            pos += keep
            yield np.ascontiguousarray(block[..., :keep])

    def decode(self, latent: np.ndarray, steps: int, noise: GlobalNoise | Sequence[GlobalNoise],
               out_samples: int | None = None, on_step: Callable[[], None] | None = None,
               sampler: str = "ddim") -> np.ndarray:
        """The whole clip [B, channels, out_samples] (preallocated once; chunks are written into it)."""
        b, _, t = latent.shape
        total = t * self.hop if out_samples is None else int(out_samples)
        out = np.empty((b, self.channels, total), dtype=np.float32)
        pos = 0
        for block in self.stream(latent, steps, noise, total, on_step, sampler):
            out[..., pos:pos + block.shape[-1]] = block
            pos += block.shape[-1]
        assert pos == total, (pos, total)
        return out
