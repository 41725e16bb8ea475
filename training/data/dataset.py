"""Torch datasets over a folder of audio + ``metadata.jsonl``.

Determinism contract (for resumable training)
----------------------------------------------
``RandomCrops.batch(step)`` is a pure function of ``(seed, step)`` and the corpus: item ``i`` of the
batch is drawn from ``np.random.default_rng([seed, step, i])`` (file chosen with probability
proportional to its duration, then a uniform offset, then the caption's shuffle/dropout). Nothing
depends on what was drawn before, on caching, on worker count or on process restarts, so a run killed
and resumed at step ``k`` (``RandomCrops(..., start_step=k)`` or just calling ``batch(k)``) sees exactly
the batches an uninterrupted run sees.

    folder = AudioFolder("data/corpus")
    crops = RandomCrops(folder, crop_length=2**18, seed=0, batch_size=8)
    audio, texts = crops.batch(step)          # audio: torch.float32 [8, 2, 2**18], texts: list[str]
    # or, as an IterableDataset yielding whole batches from step `start_step` on:
    loader = torch.utils.data.DataLoader(RandomCrops(folder, 2**18, seed=0, batch_size=8, start_step=k),
                                         batch_size=None, num_workers=2)
"""

from __future__ import annotations

import json
import math
import os
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset

from mousai_runtime.files import inside

from .audio import AUDIO_EXTENSIONS, AudioError, info, load_audio, read_frames

PathLike = Union[str, os.PathLike]

# --------------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------------

#: Metadata keys that may appear in a caption, in canonical order (the order is shuffled per draw).
CAPTION_KEYS = ("title", "artist", "composer", "album", "genre", "style", "year", "bpm", "tempo", "key",
                "mood", "instruments", "description", "tags")
CAPTION_DROPOUT = 0.1
CAPTION_JOINERS = (" ", ", ")
#: A short caption (see caption_from_metadata's `short`) keeps 1 to this many fragments: what people type.
SHORT_CAPTION_MAX = 3


def _fmt_value(key: str, value) -> list[str]:
    """Turn one metadata value into caption fragments ("" / None are dropped)."""
    if value is None or value == "" or value == [] or isinstance(value, bool):
        return []
    if isinstance(value, (list, tuple)):
        parts = [str(v).strip() for v in value if v is not None and str(v).strip()]
        return [", ".join(parts)] if parts else []
    if key == "bpm":
        try:
            v = float(value)
        except (TypeError, ValueError):
            s = str(value).strip()
            return [s if "bpm" in s.lower() else f"{s} bpm"] if s else []
        if not math.isfinite(v) or v <= 0:
            return []
        return [f"{int(round(v))} bpm"]
    if isinstance(value, float):
        value = int(value) if value.is_integer() else round(value, 2)
    s = " ".join(str(value).split())
    return [s] if s else []


def caption_values(meta: dict) -> list[str]:
    """The caption fragments of a track, in canonical order (before shuffle/dropout), without repeats
    (e.g. style "jazz" and genre "jazz" give one "jazz")."""
    out: list[str] = []
    seen: set[str] = set()
    for k in CAPTION_KEYS:
        if k in meta:
            for v in _fmt_value(k, meta[k]):
                if v.lower() not in seen:
                    seen.add(v.lower())
                    out.append(v)
    return out


def text_from_filename(path: PathLike) -> str:
    """``"my_song-final.flac"`` -> ``"my song final"`` (fallback text when there is no metadata)."""
    stem = Path(str(path)).name
    for ext in AUDIO_EXTENSIONS:
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
            break
    else:
        stem = Path(stem).stem
    text = " ".join(stem.replace("_", " ").replace("-", " ").split())
    return text or "music"


def caption_from_metadata(meta: dict, rng: np.random.Generator, short: float = 0.0) -> str:
    """Moûsai-style text from metadata: values shuffled, each dropped with p=0.1, joined by " " or ", ".

    Uses the descriptive keys in :data:`CAPTION_KEYS` (title, artist, album, genre, year, bpm -> "120 bpm",
    style, tempo, key, instruments...), never path/licence/sha256/source. Never returns an empty string:
    if every value was dropped one of them is kept; with no usable value at all it falls back to the
    file name of ``meta["path"]`` (or ``"music"``).

    short: the probability that the caption is then cut to its first 1..SHORT_CAPTION_MAX fragments (uniform).
    A rendered MIDI track has ~9 fragments, so with short = 0 a model almost never sees a prompt like "jazz"
    alone, and it answers such prompts poorly. short = 0 draws nothing more: the captions are the old ones.
    """
    values = caption_values(meta)
    if not values:
        return text_from_filename(meta["path"]) if meta.get("path") else "music"
    order = rng.permutation(len(values))
    keep = rng.random(len(values)) >= CAPTION_DROPOUT
    joiner = CAPTION_JOINERS[int(rng.integers(len(CAPTION_JOINERS)))]
    kept = [values[j] for j, k in zip(order, keep) if k]
    if not kept:
        kept = [values[int(order[0])]]
    if short and rng.random() < short:  # kept is in shuffled order: its head is a random subset
        kept = kept[: int(rng.integers(1, SHORT_CAPTION_MAX + 1))]
    return joiner.join(kept)


# --------------------------------------------------------------------------------------------------
# AudioFolder
# --------------------------------------------------------------------------------------------------


@dataclass
class Track:
    path: str  # absolute path
    rel: str  # path relative to the folder root (as in metadata.jsonl)
    meta: dict
    frames: int  # in the file's own rate
    samplerate: int
    channels: int
    format: str = ""

    @property
    def duration(self) -> float:
        return self.frames / self.samplerate if self.samplerate else 0.0


def _summary(names: Sequence[str], limit: int = 5) -> str:
    s = ", ".join(names[:limit])
    return s + (f", ... (+{len(names) - limit} more)" if len(names) > limit else "")


class AudioFolder(Dataset):
    """All audio files under ``root`` plus their metadata.

    * Scans ``root`` recursively for ``.wav .flac .ogg .oga .opus .mp3 .aif .aiff`` (hidden files and
      folders are skipped).
    * Reads ``root/metadata.jsonl`` if present: one JSON object per line with ``path`` (relative to
      ``root``) and any descriptive fields. Files without an entry get ``{"title": <file name as text>}``.
    * Files libsndfile cannot open (corrupt, truncated header, not audio, zero frames) and metadata
      entries whose file is missing are skipped with ONE warning that counts them.
    * An empty folder raises ``ValueError("no audio files in ...")``.

    ``folder[i]`` -> ``(audio torch.float32 [2, N] at sr, caption str)`` where the caption uses
    ``np.random.default_rng([seed, i])``. ``folder.tracks[i]`` has path/meta/frames/samplerate.
    """

    def __init__(self, root: PathLike, sr: int = 48000, metadata: str = "metadata.jsonl", seed: int = 0,
                 split: str = "train"):
        if split not in ("train", "holdout", "all"):
            raise ValueError(f"split must be train, holdout or all, not {split!r}")
        self.split = split
        self.root = Path(root)
        self.sr = int(sr)
        self.seed = int(seed)
        if not self.root.is_dir():
            raise ValueError(f"no audio files in {self.root} (not a folder)")
        meta_by_rel: dict[str, dict] = {}
        mpath = self.root / metadata
        bad_lines = 0
        if mpath.is_file():
            with open(mpath, encoding="utf-8") as fh:
                for line in fh:
                    line = line.strip()
                    if not line:
                        continue
                    try:
                        obj = json.loads(line)
                        rel = os.path.normpath(str(obj["path"]))
                        inside(self.root, rel, "metadata path")  # a '../' or absolute path reads outside
                    except (ValueError, KeyError, TypeError):
                        bad_lines += 1
                        continue
                    meta_by_rel[rel] = obj
        if bad_lines:
            warnings.warn(f"{mpath}: ignored {bad_lines} malformed line(s)", stacklevel=2)

        found: set[str] = set()
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fn in filenames:
                if fn.startswith(".") or not fn.lower().endswith(AUDIO_EXTENSIONS):
                    continue
                found.add(os.path.normpath(os.path.relpath(os.path.join(dirpath, fn), self.root)))
        candidates = sorted(found | set(meta_by_rel))

        self.tracks: list[Track] = []
        skipped: list[str] = []
        for rel in candidates:
            path = str(self.root / rel)
            try:
                inf = info(path)
                if inf.frames <= 0:
                    raise AudioError(f"{rel}: no audio frames")
            except AudioError:
                skipped.append(rel)
                continue
            meta = dict(meta_by_rel.get(rel) or {})
            # held-out tracks (metadata "split": "holdout") are for evaluation only, never for training
            if split != "all" and (meta.get("split") == "holdout") != (split == "holdout"):
                continue
            meta["path"] = rel
            if not caption_values(meta):
                meta["title"] = text_from_filename(rel)
            self.tracks.append(Track(path, rel, meta, inf.frames, inf.samplerate, inf.channels, inf.format))
        self.skipped = skipped
        if skipped:
            warnings.warn(f"skipped {len(skipped)} unreadable file{'s' if len(skipped) != 1 else ''}: "
                          f"{_summary(skipped)}", stacklevel=2)
        if not self.tracks:
            raise ValueError(f"no audio files in {self.root}" + (f" ({len(skipped)} unreadable)" if skipped else ""))

    def __len__(self) -> int:
        return len(self.tracks)

    def __getitem__(self, i: int):
        t = self.tracks[i]
        audio = load_audio(t.path, self.sr)
        text = caption_from_metadata(t.meta, np.random.default_rng([self.seed, int(i)]))
        return torch.from_numpy(audio), text

    @property
    def durations(self) -> np.ndarray:
        return np.array([t.duration for t in self.tracks], dtype=np.float64)

    @property
    def total_seconds(self) -> float:
        return float(self.durations.sum())


def track_genre(meta: dict) -> str:
    """The genre a track is balanced by: metadata "genre" (the first one of a list), "" when it has none."""
    g = meta.get("genre")
    if isinstance(g, (list, tuple)):
        g = g[0] if g else ""
    return str(g).strip().lower() if g is not None else ""


def sampling_cdf(tracks: Sequence[Track], lengths: np.ndarray, genre_balance: float = 0.0) -> np.ndarray:
    """Cumulative probabilities of drawing each track: its length times (its genre's total length) ** -genre_balance.

    0 draws by length (every second of audio alike), 1 gives every genre the same share, 0.5 is between: the
    corpus has 6.7 h of electronic and 6 min of jazz, and a text-conditional model sees too little of a small genre
    to learn its word."""
    w = np.asarray(lengths, np.float64)
    if genre_balance:
        genres = [track_genre(t.meta) for t in tracks]
        total: dict[str, float] = {}
        for g, n in zip(genres, w):
            total[g] = total.get(g, 0.0) + n
        w = w * np.array([total[g] for g in genres]) ** -float(genre_balance)
    cdf = np.cumsum(w / w.sum())
    cdf[-1] = 1.0
    return cdf


# --------------------------------------------------------------------------------------------------
# RandomCrops
# --------------------------------------------------------------------------------------------------

_SEEKABLE = ("WAV", "WAVEX", "FLAC", "AIFF", "W64", "RF64", "CAF")


class _LRU:
    """Byte-capped LRU of decoded (stereo, resampled) files. Thread-safe; one per process."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self.d: OrderedDict[str, np.ndarray] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key):
        with self.lock:
            a = self.d.get(key)
            if a is not None:
                self.d.move_to_end(key)
            return a

    def put(self, key, a: np.ndarray):
        if a.nbytes > self.max_bytes:
            return
        with self.lock:
            if key in self.d:
                return
            self.d[key] = a
            self.bytes += a.nbytes
            while self.bytes > self.max_bytes and self.d:
                _, old = self.d.popitem(last=False)
                self.bytes -= old.nbytes


class RandomCrops(IterableDataset):
    """Random fixed-length stereo crops + captions, deterministic in ``(seed, step)``.

    Args:
        folder: an :class:`AudioFolder` or a path to one.
        crop_length: samples per crop at ``sr`` (e.g. ``2**18`` ~ 5.5 s at 48 kHz).
        seed: run seed.
        batch_size: items per :meth:`batch`.
        sr: output sample rate (files at another rate are resampled with soxr HQ).
        start_step / steps: iteration range for ``__iter__`` (``steps=None`` iterates forever).
        genre_balance: 0 draws files by length; > 0 shifts draws toward small genres (see :func:`sampling_cdf`).
        cache_bytes: memory cap of the LRU cache of decoded files. FLAC/WAV files already at ``sr`` are
            read by seeking to the crop (no cache needed); compressed or other-rate files are decoded
            whole, resampled once and cached.

    Methods:
        ``batch(step) -> (torch.float32 [B, 2, crop_length], list[str])``
        ``item(step, i) -> (np.float32 [2, crop_length], str)``

    Files shorter than a crop are zero-padded at the end (one warning at construction listing them).
    A file that fails to decode at crop time is replaced by a fresh draw from the same RNG (so the
    result is still a function of (seed, step)) and reported once.
    """

    def __init__(self, folder: Union[AudioFolder, PathLike], crop_length: int, seed: int = 0,
                 batch_size: int = 8, sr: int = 48000, start_step: int = 0, steps: Optional[int] = None,
                 cache_bytes: int = 2 << 30, genre_balance: float = 0.0):
        super().__init__()
        self.folder = folder if isinstance(folder, AudioFolder) else AudioFolder(folder, sr=sr)
        if crop_length <= 0:
            raise ValueError("crop_length must be positive")
        self.crop_length = int(crop_length)
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.sr = int(sr)
        self.start_step = int(start_step)
        self.steps = steps
        self.cache_bytes = int(cache_bytes)
        self._cache: Optional[_LRU] = None
        self._bad: set[int] = set()
        tracks = self.folder.tracks
        # Lengths at the output rate; files shorter than a crop still get a chance proportional to length.
        self._len_out = np.array([max(1, int(round(t.frames * self.sr / t.samplerate))) for t in tracks],
                                 dtype=np.int64)
        self._cdf = sampling_cdf(tracks, self._len_out, genre_balance)
        short = [t.rel for t, n in zip(tracks, self._len_out) if n < self.crop_length]
        self.short_files = short
        if short:
            warnings.warn(f"{len(short)} file{'s' if len(short) != 1 else ''} shorter than a crop of "
                          f"{self.crop_length} samples ({self.crop_length / self.sr:.2f} s) will be zero-padded: "
                          f"{_summary(short)}", stacklevel=2)

    # ---- pickling for DataLoader workers: drop the cache ----
    def __getstate__(self):
        d = self.__dict__.copy()
        d["_cache"] = None
        return d

    def _lru(self) -> _LRU:
        if self._cache is None:
            self._cache = _LRU(self.cache_bytes)
        return self._cache

    def _choose(self, rng: np.random.Generator) -> int:
        return int(min(np.searchsorted(self._cdf, rng.random(), side="right"), len(self._cdf) - 1))

    def _read(self, idx: int, start: int) -> np.ndarray:
        """Crop ``[2, <=crop]`` from track ``idx`` starting at output-rate sample ``start``."""
        t = self.folder.tracks[idx]
        n = self.crop_length
        if t.samplerate == self.sr and t.format in _SEEKABLE:
            a, _ = read_frames(t.path, start, n)
            return a
        cache = self._lru()
        full = cache.get(t.path)
        if full is None:
            full = load_audio(t.path, self.sr)
            cache.put(t.path, full)
        return full[:, start:start + n]

    def item(self, step: int, i: int) -> tuple[np.ndarray, str]:
        """Item ``i`` of batch ``step``: ``(np.float32 [2, crop_length], caption)``."""
        rng = np.random.default_rng([self.seed, int(step), int(i)])
        n = self.crop_length
        for _attempt in range(64):
            idx = self._choose(rng)
            start = int(rng.integers(0, max(1, self._len_out[idx] - n + 1)))
            caption_rng = np.random.default_rng([self.seed, int(step), int(i), 1])
            if idx in self._bad:
                continue
            try:
                a = self._read(idx, start)
            except AudioError as e:
                self._bad.add(idx)
                warnings.warn(f"skipping unreadable file during cropping: {e}", stacklevel=2)
                continue
            if a.shape[1] < n:
                a = np.pad(a, ((0, 0), (0, n - a.shape[1])))
            text = caption_from_metadata(self.folder.tracks[idx].meta, caption_rng)
            return np.ascontiguousarray(a[:, :n], dtype=np.float32), text
        raise RuntimeError("too many unreadable files: could not draw a crop")

    def batch(self, step: int) -> tuple[torch.Tensor, list[str]]:
        """Batch for training step ``step``: ``(torch.float32 [B, 2, crop_length], texts)``.

        A pure function of ``(seed, step)`` (and the corpus): use it directly to resume at any step.
        """
        items = [self.item(step, i) for i in range(self.batch_size)]
        audio = torch.from_numpy(np.stack([a for a, _ in items]))
        return audio, [t for _, t in items]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, list[str]]]:
        """Yield ``batch(step)`` for ``step = start_step, start_step + 1, ...`` (``steps`` batches or forever).

        With ``DataLoader(ds, batch_size=None, num_workers=W)`` worker ``w`` computes the steps
        ``s`` with ``(s - start_step) % W == w``; the loader's round-robin keeps them in step order.
        """
        wi = torch.utils.data.get_worker_info()
        wid, nw = (wi.id, wi.num_workers) if wi is not None else (0, 1)
        k = wid
        while self.steps is None or k < self.steps:
            yield self.batch(self.start_step + k)
            k += nw
