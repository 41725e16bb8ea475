"""The evaluation's genre classifier: a small CNN on log-mel frames, trained by the project on the corpus.

It is used only to judge generated music (text relevance, Fréchet distance, diversity), never in generation. It is
exported to ONNX (`engines/eval-genre-cnn/`) and run with ONNX Runtime, so the evaluation needs no torch.

    features = clip_features(audio)              # numpy: mono log-mel [64, frames], loudness removed
    model = GenreCNN(len(genres)); train_classifier(...)  # torch, on the corpus' training split
    clf = GenreClassifier("engines/eval-genre-cnn")       # onnxruntime: probabilities + 128-d embeddings

Validation data the classifier never saw: the corpus' held-out real tracks, and MIDI in the corpus' styles rendered
with seeds the corpus does not use (`heldout_midi_audio`), so every genre has unseen examples.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from mousai_runtime.stft import stft

from . import metrics

SR = 48000
N_MELS, N_FFT, HOP = 64, 2048, 1024
CLIP_SECONDS = 5.0
MIN_GENRE_MINUTES = 4.0  # genres with less training audio than this are left out of the evaluation
EMBED = 128
FORMAT = "mousai-genre-classifier"

_FB: np.ndarray | None = None


def clip_features(audio: np.ndarray, sr: int = SR) -> np.ndarray:
    """float32 [N_MELS, frames]: log(1e-5 + mel) of the mono mix, minus its mean (so loudness is not a cue: the
    runtime normalises loudness, the corpus does not)."""
    global _FB
    if sr != SR:
        raise ValueError(f"clip_features expects {SR} Hz audio, got {sr}")
    if _FB is None:
        _FB = metrics.mel_filterbank(SR, N_FFT, N_MELS).astype(np.float32)
    mono = np.asarray(audio, np.float32).mean(axis=0)
    mag = np.abs(stft(mono, N_FFT, HOP))  # [frames, bins] float32
    lm = np.log(1e-5 + mag @ _FB.T).T
    return (lm - lm.mean()).astype(np.float32)


# ---------------------------------------------------------------------------------------------------- data
@dataclass
class LabelledTrack:
    name: str
    genre: str
    features: np.ndarray  # [N_MELS, frames] of the whole track


def eval_genres(corpus: str | Path) -> list[str]:
    """Genres with at least MIN_GENRE_MINUTES of training audio, most audio first."""
    minutes: dict[str, float] = {}
    for line in (Path(corpus) / "metadata.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        m = json.loads(line)
        if m.get("split") != "holdout" and isinstance(m.get("genre"), str):
            minutes[m["genre"]] = minutes.get(m["genre"], 0.0) + float(m.get("duration", 0.0)) / 60
    return [g for g, mins in sorted(minutes.items(), key=lambda kv: -kv[1]) if mins >= MIN_GENRE_MINUTES]


def corpus_tracks(corpus: str | Path, split: str, genres: Sequence[str],
                  progress: Callable[[str], None] | None = None, cache: str | Path | None = None
                  ) -> list[LabelledTrack]:
    """Features of every track of `split` whose genre is in `genres`; `cache` (a folder) keeps them per file
    (keyed by path, size and mtime), since decoding ~15 h of FLAC is the slow part."""
    from training.data.audio import load_audio
    from training.data.dataset import AudioFolder

    folder = AudioFolder(corpus, sr=SR, split=split)
    out = []
    for i, t in enumerate(folder.tracks):
        g = t.meta.get("genre")
        if g not in genres:
            continue
        if progress and i % 20 == 0:
            progress(f"features {split}: {i}/{len(folder.tracks)}")
        feats = None
        if cache is not None:
            import hashlib
            import os

            st = os.stat(t.path)
            key = hashlib.sha256(f"{t.rel}:{st.st_size}:{st.st_mtime_ns}:{N_MELS}:{N_FFT}:{HOP}".encode()).hexdigest()
            f = Path(cache) / f"{key[:32]}.npy"
            if f.is_file():
                feats = np.load(f, allow_pickle=False)
        if feats is None:
            feats = clip_features(load_audio(t.path, SR)).astype(np.float16)
            if cache is not None:
                Path(cache).mkdir(parents=True, exist_ok=True)
                tmp = f.with_suffix(".tmp.npy")
                np.save(tmp, feats)
                os.replace(tmp, f)
        out.append(LabelledTrack(t.rel, g, feats))
    return out


def heldout_midi_audio(genres: Sequence[str], per_style: int = 1, seconds: float = 40.0, seed: int = 7919
                       ) -> list[tuple[str, str, np.ndarray]]:
    """MIDI in the corpus' styles, composed with seeds the corpus never uses (it uses seed 0's plan), rendered with
    the same soundfont: unseen examples for the genres that have no held-out recording. [(name, genre, audio)]"""
    from training.data.corpus import midi

    ok, sf = midi.fluidsynth_status()
    if not ok:
        raise RuntimeError(f"cannot render held-out MIDI: {sf}")
    out = []
    for name, style in midi.STYLES.items():
        if style.family not in genres:
            continue
        for k in range(per_style):
            s = seed * 100003 + 1000 * list(midi.STYLES).index(name) + k
            out.append((f"midi:{name}:{s}", style.family, midi.render(midi.generate(name, s, seconds), SR, sf)))
    return out


def heldout_midi_tracks(genres: Sequence[str], per_style: int = 1, seconds: float = 40.0, seed: int = 7919
                        ) -> list[LabelledTrack]:
    """heldout_midi_audio as classifier features."""
    return [LabelledTrack(name, genre, clip_features(audio).astype(np.float16))
            for name, genre, audio in heldout_midi_audio(genres, per_style, seconds, seed)]


def clip_windows(track: LabelledTrack, per_track: int, frames: int) -> list[np.ndarray]:
    """`per_track` evenly spaced windows of `frames` frames (fewer for short tracks)."""
    n = track.features.shape[1]
    if n < frames:
        return []
    starts = np.linspace(0, n - frames, num=max(1, min(per_track, n // frames)), dtype=int)
    return [track.features[:, s:s + frames].astype(np.float32) for s in starts]


def clip_frames(seconds: float = CLIP_SECONDS) -> int:
    return 1 + int(round(seconds * SR)) // HOP


# ---------------------------------------------------------------------------------------------------- model
def _torch_model(n_classes: int):
    import torch
    from torch import nn

    class GenreCNN(nn.Module):
        """4 x (conv3x3 -> BatchNorm -> ReLU -> maxpool 2), mean+max pooling over time, 128-d embedding, linear."""

        def __init__(self, n: int):
            super().__init__()
            chans = [1, 16, 32, 64, 128]  # ~1.7 GMAC per batch of 32 five-second clips
            blocks = []
            for a, b in zip(chans[:-1], chans[1:]):
                blocks += [nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU(), nn.MaxPool2d(2)]
            self.features = nn.Sequential(*blocks)
            self.embed = nn.Linear(2 * chans[-1] * (N_MELS // 16), EMBED)
            self.head = nn.Linear(EMBED, n)

        def forward(self, mel: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
            h = self.features(mel[:, None])  # [B, C, mels/16, T/16]
            h = h.flatten(1, 2)
            e = torch.relu(self.embed(torch.cat([h.mean(-1), h.amax(-1)], 1)))
            return self.head(e), e

    return GenreCNN(n_classes)


def train_classifier(train: Sequence[LabelledTrack], val: Sequence[LabelledTrack], genres: Sequence[str],
                     out: str | Path, steps: int = 2000, batch: int = 16, lr: float = 1e-3, seed: int = 0,
                     log: Callable[[str], None] = print) -> dict:
    """Balanced training (genre first, then track, then window), SpecAugment-style masks; ONNX + labels to `out`."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    idx = {g: i for i, g in enumerate(genres)}
    by_genre = {g: [t for t in train if t.genre == g and t.features.shape[1] > clip_frames()] for g in genres}
    missing = [g for g, ts in by_genre.items() if not ts]
    if missing:
        raise ValueError(f"no training tracks for genres {missing}")
    model = _torch_model(len(genres))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    frames = clip_frames()
    val_x, val_y = _windows(val, idx, frames)
    t0 = time.time()
    for step in range(1, steps + 1):
        xs, ys = [], []
        for _ in range(batch):
            g = genres[int(rng.integers(len(genres)))]
            t = by_genre[g][int(rng.integers(len(by_genre[g])))]
            s = int(rng.integers(t.features.shape[1] - frames + 1))
            x = t.features[:, s:s + frames].astype(np.float32).copy()
            f0, fw = int(rng.integers(N_MELS)), int(rng.integers(0, 9))
            t0m, tw = int(rng.integers(frames)), int(rng.integers(0, 25))
            x[f0:f0 + fw] = 0.0
            x[:, t0m:t0m + tw] = 0.0
            xs.append(x)
            ys.append(idx[g])
        model.train()
        logits, _ = model(torch.from_numpy(np.stack(xs)))
        loss = F.cross_entropy(logits, torch.tensor(ys), label_smoothing=0.05)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 250 == 0 or step == steps:
            acc = _accuracy(model, val_x, val_y)
            log(f"genre classifier step {step}/{steps}: loss {loss.item():.3f}, held-out accuracy {acc:.3f} "
                f"({time.time() - t0:.0f} s)")
    model.eval()
    report = {"val_accuracy": _accuracy(model, val_x, val_y), "val_clips": int(len(val_y)), "steps": steps,
              "train_tracks": len(train), "val_tracks": len(val)}
    _export(model, genres, Path(out), report)
    return report


def _windows(tracks: Sequence[LabelledTrack], idx: dict, frames: int, per_track: int = 6):
    xs, ys = [], []
    for t in tracks:
        for w in clip_windows(t, per_track, frames):
            xs.append(w)
            ys.append(idx[t.genre])
    return np.stack(xs), np.asarray(ys)


def _accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        pred = np.concatenate([model(torch.from_numpy(x[i:i + 64]))[0].argmax(1).numpy() for i in range(0, len(x), 64)])
    return float((pred == y).mean())


def _export(model, genres: Sequence[str], out: Path, report: dict) -> None:
    import torch

    from mousai_runtime.files import atomic_dir

    def write(tmp: Path) -> None:
        example = torch.zeros(2, N_MELS, clip_frames())
        torch.onnx.export(model, (example,), str(tmp / "model.onnx"), input_names=["mel"],
                          output_names=["logits", "embedding"], opset_version=17, dynamo=False,
                          dynamic_axes={"mel": {0: "batch", 2: "frames"}, "logits": {0: "batch"},
                                        "embedding": {0: "batch"}})
        doc = {"format": FORMAT, "version": 1, "genres": list(genres), "sample_rate": SR, "n_mels": N_MELS,
               "n_fft": N_FFT, "hop": HOP, "clip_seconds": CLIP_SECONDS, "embedding": EMBED, "training": report}
        (tmp / "labels.json").write_text(json.dumps(doc, indent=1) + "\n")

    atomic_dir(out, write)


# ---------------------------------------------------------------------------------------------------- inference
class GenreClassifier:
    """The exported classifier through ONNX Runtime (no torch)."""

    def __init__(self, folder: str | Path, threads: int = 1):
        import onnxruntime as ort

        folder = Path(folder)
        self.doc = json.loads((folder / "labels.json").read_text())
        if self.doc.get("format") != FORMAT or self.doc.get("version") != 1:
            raise ValueError(f"{folder}: not a {FORMAT} v1 folder")
        self.genres: list[str] = list(self.doc["genres"])
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(folder / "model.onnx"), so, providers=["CPUExecutionProvider"])

    def run(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """features [B, N_MELS, frames] -> (probabilities [B, genres], embeddings [B, 128])."""
        logits, emb = self.session.run(None, {"mel": np.ascontiguousarray(features, np.float32)})
        p = np.exp(logits - logits.max(1, keepdims=True))
        return p / p.sum(1, keepdims=True), emb

    def classify_audio(self, clips: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Audio clips [2, N] (48 kHz, >= 5 s) -> mean probabilities and mean embedding over their 5 s windows."""
        probs, embs = [], []
        frames = clip_frames()
        for a in clips:
            f = clip_features(a)
            if f.shape[1] < frames:
                raise ValueError(f"clip of {a.shape[-1] / SR:.2f} s is shorter than {CLIP_SECONDS} s")
            starts = np.linspace(0, f.shape[1] - frames, num=max(1, f.shape[1] // frames), dtype=int)
            p, e = self.run(np.stack([f[:, s:s + frames] for s in starts]))
            probs.append(p.mean(0))
            embs.append(e.mean(0))
        return np.stack(probs), np.stack(embs)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to embeddings a [N, D] and b [M, D]."""
    from scipy import linalg

    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(s1 @ s2, disp=False)
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def confusion(true: Sequence[int], pred: Sequence[int], n: int) -> np.ndarray:
    m = np.zeros((n, n), dtype=int)
    for t, p in zip(true, pred):
        m[t, p] += 1
    return m


def mean_pairwise_distance(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> float:
    return float(np.mean([math.dist(a, b) for a, b in pairs]))
