"""The decoder bake-off table: every candidate's EMA weights measured on the final half of the held-out recordings,
beside references, with one spectrogram of the same clip per row.

    python -m training.bakeoff_table --data /work/data/corpus --runs /work/runs/bake-* --out docs/bakeoff

Writes OUT/table.md, OUT/table.json and OUT/spectrograms.png. Columns: chroma agreement of the round trip (median
over clips), chroma peakiness and motion of the output (medians), log-mel L1 and multi-resolution STFT distance
(means), the ridge probe (latent -> chroma agreement; references: -), genre kept (the eval classifier's label of the
round trip equals its label of the original), decode seconds per second of audio (torch, 1 thread, interleaved,
median of 3), parameters, and the training step and CPU hours behind the weights.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from training import bakeoff
from training.eval import metrics, musicness
from training.model import framedec as fd

ROOT = Path(__file__).resolve().parents[1]
CLASSIFIER = ROOT / "engines" / "eval-genre-cnn"


def load_candidate(run: Path) -> tuple[bakeoff.Candidate, dict]:
    doc = json.loads((run / "state.json").read_text())
    model = bakeoff.CANDIDATES[doc["candidate"]]()
    weights = {k: v.float() for k, v in load_file(str(run / "ema_fp16.safetensors")).items()}
    model.load_state_dict(weights)
    return model.eval(), doc


def references(clips: list[np.ndarray]) -> dict[str, list[np.ndarray]]:
    """Round trips that bracket the candidates: phase retrieval on the true magnitude, random phase, noise, a buzz,
    and the shipped default bundle (runtime encode -> decode, its shipped settings)."""
    from mousai_runtime.pipeline import Pipeline

    out: dict[str, list[np.ndarray]] = {"original": clips}
    gl, rnd = [], []
    for a in clips:
        x = torch.from_numpy(a)[None].double()
        log_mag = fd.log_magnitude(fd.stft(x, 2048, 256))
        gl.append(fd.griffin_lim(log_mag, 2048, 256, x.shape[-1], 32)[0].float().numpy())
        rnd.append(fd.griffin_lim(log_mag, 2048, 256, x.shape[-1], 0)[0].float().numpy())
    out["Griffin-Lim (32, fast) on the true magnitude"] = gl
    out["true magnitude, random phase"] = rnd
    out["white noise"] = [musicness.white_noise(a.shape[1] / musicness.SR, seed=i) for i, a in enumerate(clips)]
    out["static comb (110 Hz)"] = [musicness.static_comb(a.shape[1] / musicness.SR) for a in clips]
    pipe = Pipeline(ROOT / "engines" / "default", threads=1)
    out["shipped default (engines/default)"] = [pipe.decode(pipe.encode(a), seed=0, samples=a.shape[1]) for a in clips]
    return out


def score(clips: list[np.ndarray], outs: list[np.ndarray], classifier) -> dict[str, float]:
    agree = [musicness.agreement(a, y) for a, y in zip(clips, outs)]
    m = [musicness.measures(y) for y in outs]
    p_in, _ = classifier.classify_audio(clips)
    p_out, _ = classifier.classify_audio([np.asarray(y, np.float32) for y in outs])
    return {"agreement": float(np.median(agree)),
            "peakiness": float(np.median([d["peakiness"] for d in m])),
            "motion": float(np.median([d["motion"] for d in m])),
            "log_mel_l1": float(np.mean([metrics.log_mel_l1(a, y) for a, y in zip(clips, outs)])),
            "mrstft": float(np.mean([metrics.mrstft_l1(a, y) for a, y in zip(clips, outs)])),
            "genre_kept": float(np.mean(p_in.argmax(1) == p_out.argmax(1)))}


def decode_seconds(models: dict[str, bakeoff.Candidate], clip: np.ndarray, reps: int = 3) -> dict[str, float]:
    """Seconds of reconstruct() per second of audio, interleaved across candidates (median of reps)."""
    times: dict[str, list[float]] = {k: [] for k in models}
    x = torch.from_numpy(clip)[None]
    for _ in range(reps):
        for k, m in models.items():
            t = time.perf_counter()
            m.reconstruct(x)
            times[k].append(time.perf_counter() - t)
    return {k: float(np.median(v)) / (clip.shape[1] / musicness.SR) for k, v in times.items()}


def spectrograms(path: Path, rows: dict[str, np.ndarray]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 2.2 * len(rows)), dpi=90)
    FigureCanvasAgg(fig)
    for i, (name, a) in enumerate(rows.items()):
        mono = np.asarray(a, np.float64).mean(0)
        mag = np.abs(metrics.stft(mono, 4096, 512)).T  # [bins, frames]
        top = int(4700 / (musicness.SR / 4096))
        db = 20 * np.log10(np.maximum(mag[:top], 1e-6))
        ax = fig.add_subplot(len(rows), 1, i + 1)
        ax.imshow(db, origin="lower", aspect="auto", cmap="magma", vmin=db.max() - 80, vmax=db.max(),
                  extent=(0, mono.size / musicness.SR, 0, top * musicness.SR / 4096 / 1000))
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("kHz")
    fig.tight_layout()
    fig.savefig(path, format="png")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--runs", type=Path, nargs="+", required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()
    from training.eval.genre import GenreClassifier

    classifier = GenreClassifier(CLASSIFIER)
    clips = bakeoff.holdout_clips(args.data, "final")
    fit = [bakeoff.RandomCrops(args.data, 2 ** 16, seed=0, batch_size=8).item(10 ** 7 + i, 0)[0] for i in range(24)]
    rows: dict[str, dict] = {}
    outs_by_row: dict[str, list[np.ndarray]] = {}
    for name, outs in references(clips).items():
        rows[name] = score(clips, outs, classifier) | {"kind": "reference"}
        outs_by_row[name] = outs
    models = {}
    for run in args.runs:
        model, doc = load_candidate(run)
        name = f"{doc['candidate']} ({run.name})"
        models[name] = model
        outs = [model.reconstruct(torch.from_numpy(a)[None])[0].numpy() for a in clips]
        outs_by_row[name] = outs
        rows[name] = score(clips, outs, classifier) | {
            "kind": "candidate", "ridge_probe": bakeoff.ridge_probe(model, fit, clips), "step": doc["step"],
            "cpu_hours": doc["cpu_seconds"] / 3600, "parameters": doc["parameters"]}
    for name, s in decode_seconds(models, clips[0]).items():
        rows[name]["decode_s_per_s"] = s
    show = int(np.argmax([musicness.peakiness(a) for a in clips]))
    args.out.mkdir(parents=True, exist_ok=True)
    spectrograms(args.out / "spectrograms.png", {k: v[show] for k, v in outs_by_row.items()
                                                  if k not in ("white noise", "static comb (110 Hz)")})
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    h = hashlib.sha256()
    for a in clips:
        h.update(a.tobytes())
    header = {"command": " ".join(["python -m training.bakeoff_table", *map(shlex.quote, argv or sys.argv[1:])]),
              "commit": commit, "clips": len(clips), "clips_sha256": h.hexdigest()[:16],
              "wall_seconds": round(time.time() - t0), "spectrogram_clip": show}
    (args.out / "table.json").write_text(json.dumps({"header": header, "rows": rows}, indent=1))
    real = rows["original"]
    noise = rows["white noise"]
    lines = [f"# Decoder bake-off (written by `{header['command']}`)", "",
             f"Commit {commit[:10]}; {len(clips)} clips of 5 s from the final half of the held-out real recordings "
             f"(sha256 {header['clips_sha256']}); {header['wall_seconds']} s. Peakiness progress = (P - P_noise) / "
             f"(P_real - P_noise); motion ratio = motion / real motion.", "",
             "| row | agreement | peakiness (progress) | motion (ratio) | log-mel L1 | MR-STFT | genre kept | ridge probe "
             "| decode s/s | params enc + dec | step, CPU h |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        prog = musicness.progress_to_real(r["peakiness"], noise["peakiness"], real["peakiness"])
        ratio = r["motion"] / real["motion"]
        params = (f"{r['parameters']['encoder'] / 1e6:.2f}M + {r['parameters']['decoder'] / 1e6:.2f}M"
                  if "parameters" in r else "")
        lines.append(f"| {name} | {r['agreement']:.3f} | {r['peakiness']:.2f} ({prog:.2f}) | {r['motion']:.3f} "
                     f"({ratio:.2f}) | {r['log_mel_l1']:.3f} | {r['mrstft']:.3f} | {r['genre_kept']:.2f} | "
                     f"{r.get('ridge_probe', float('nan')):.3f} | {r.get('decode_s_per_s', float('nan')):.3f} | {params} | "
                     + (f"{r['step']}, {r['cpu_hours']:.2f}" if "step" in r else "") + " |")
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
