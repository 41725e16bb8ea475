"""Build the open music corpus: Debian game soundtracks + rendered procedural MIDI.

Output (keep it OUTSIDE the repository, e.g. ``../data/corpus``)::

    out_dir/audio/<source>/<name>.flac     48 kHz stereo FLAC (16-bit)
    out_dir/midi/<style>/<name>.mid        the MIDI files the renders came from
    out_dir/metadata.jsonl                 one JSON object per track: path (relative to out_dir), title,
                                           artist, album, genre, style, year, bpm, key, instruments,
                                           source, licence, copyright ...  (AudioFolder(out_dir) reads it)
    out_dir/manifest.json                  per file sha256 / duration / source / genre / licence, totals,
                                           hours per genre and per source
    out_dir/licences/<package>.copyright   the Debian copyright files the licences come from

The build is deterministic (track list, MIDI seeds and renders depend only on the arguments) and
idempotent: a file whose sha256 and recipe match the manifest is skipped, so re-running (or resuming a
killed build) only does what is missing. The manifest is checkpointed after every file.

CLI: ``python -m training.data.corpus.build OUT_DIR [--sources wesnoth,midi] [--midi-minutes 120]``;
``main(out_dir, sources)`` is what ``mousai data build`` calls.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from mousai_runtime.files import UnsafePathError, atomic_write_text, inside, sha256_file

from ..audio import AudioError, save_flac
from . import midi as midi_mod
from .debian import DEBIAN_SOURCES, RecordingJob

SR = 48000
DEFAULT_MIDI_MINUTES = 120.0
DEFAULT_DEBS_DIR = None  # None: a folder "debs" beside the corpus folder (the .deb cache survives a rebuild)
MANIFEST_VERSION = 1


@dataclass
class MidiSource:
    name: str = "midi"
    kind: str = "midi"
    description: str = (f"procedural arrangements in {len(midi_mod.STYLES)} styles rendered with FluidSynth "
                        "(FluidR3 GM soundfont)")


#: Registry of sources, in build order. ``--sources`` takes a comma-separated subset of these names.
SOURCES: dict = {**DEBIAN_SOURCES, "midi": MidiSource()}


@dataclass
class Job:
    source: str
    rel: str  # output path relative to out_dir
    meta: dict
    recipe: dict  # everything that determines the output bytes
    produce: Callable[[], np.ndarray]
    extra: Callable[[], None] = field(default=lambda: None)  # side outputs (the .mid file)

    @property
    def recipe_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.recipe, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


class CorpusError(ValueError):
    """A corpus folder that cannot be built into: not a folder, or a manifest that is not ours (one line)."""


def read_manifest(out_dir: Path) -> dict:
    """The previous build's manifest.json, checked: its `files` keys are paths this build may replace or delete,
    so each must be an `audio/...` path inside out_dir (an absolute or '../' key would delete anything)."""
    man_path = out_dir / "manifest.json"
    if not man_path.is_file():
        return {}
    try:
        old = json.loads(man_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CorpusError(f"unreadable {man_path} ({' '.join(str(e).split())}): move it away to rebuild") from None
    files = old.get("files", {}) if isinstance(old, dict) else None
    if not isinstance(files, dict):
        raise CorpusError(f"{man_path} is not a corpus manifest (no 'files' object): move it away to rebuild")
    for rel, rec in files.items():
        try:
            inside(out_dir, rel, f"{man_path.name} files")
        except UnsafePathError as e:
            raise CorpusError(str(e)) from None
        if not rel.startswith("audio/") or not isinstance(rec, dict) or not isinstance(rec.get("source"), str):
            raise CorpusError(f"{man_path}: entry {rel!r} is not an audio file record of this builder: move the "
                              "manifest away to rebuild")
    return old


def _read_metadata(meta_path: Path) -> dict:
    """path -> metadata of the previous build (lines that are not objects with a string path are dropped: the
    metadata is rewritten from the build's own records)."""
    out: dict = {}
    if meta_path.is_file():
        for line in meta_path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                o = json.loads(line)
            except ValueError:
                continue
            if isinstance(o, dict) and isinstance(o.get("path"), str):
                out[o["path"]] = o
    return out


def _parse_sources(sources) -> list[str]:
    if sources is None or sources == "" or sources == "all":
        return list(SOURCES)
    if isinstance(sources, str):
        sources = [s.strip() for s in sources.split(",") if s.strip()]
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise ValueError(f"unknown source(s): {', '.join(unknown)}; known: {', '.join(SOURCES)}")
    return [s for s in SOURCES if s in sources]  # registry order: deterministic


def _midi_jobs(out_dir: Path, minutes: float, seed: int) -> list[Job]:
    ok, why = midi_mod.fluidsynth_status()
    if not ok:
        raise RuntimeError(f"midi source: {why}")
    soundfont = why
    sf_lic = midi_mod.soundfont_licence(soundfont)
    jobs = []
    for i, (style, tseed, seconds) in enumerate(midi_mod.track_plan(minutes, seed)):
        slug = style.replace(" ", "_")
        name = f"{slug}_{i:04d}"
        rel = f"audio/midi/{slug}/{name}.flac"
        mid_path = out_dir / "midi" / slug / f"{name}.mid"

        def meta_and_arr(style=style, tseed=tseed, seconds=seconds):
            return midi_mod.generate(style, tseed, seconds)

        arr = meta_and_arr()
        meta = arr.metadata()
        meta.update({"source": "midi", "licence": "CC0-1.0 (generated by mousai)",
                     "soundfont_licence": sf_lic, "midi_file": os.path.relpath(mid_path, out_dir)})
        recipe = {"kind": "midi", "style": style, "seed": tseed, "seconds": seconds, "sr": SR,
                  "soundfont": os.path.basename(os.path.realpath(soundfont)),
                  "soundfont_size": os.path.getsize(soundfont), "generator": _midi_generator_hash()}
        jobs.append(Job("midi", rel, meta, recipe,
                        produce=lambda a=arr: midi_mod.render(a, SR, soundfont),
                        extra=lambda a=arr, p=mid_path: midi_mod.write_midi(a, p)))
    return jobs


_GEN_HASH: Optional[str] = None


def _midi_generator_hash() -> str:
    """Hash of midi.py: a changed generator re-renders (the recipe changes), an unchanged one never does."""
    global _GEN_HASH
    if _GEN_HASH is None:
        _GEN_HASH = sha256_file(midi_mod.__file__)[:12]
    return _GEN_HASH


def _recording_job(rj: RecordingJob) -> Job:
    rel = f"audio/{rj.source}/{rj.name}.flac"
    meta = {k: v for k, v in rj.meta.items() if v not in (None, "", [])}
    recipe = {"kind": "debian", "sr": SR, **rj.spec}
    return Job(rj.source, rel, meta, recipe, produce=lambda r=rj: r.load(SR))


def _hours(entries: dict, key: str) -> dict:
    out: dict[str, float] = {}
    for e in entries.values():
        out[e[key]] = out.get(e[key], 0.0) + e["duration"] / 3600.0
    return {k: round(v, 3) for k, v in sorted(out.items(), key=lambda kv: (-kv[1], kv[0]))}


def build_corpus(out_dir, sources: Optional[list[str]] = None, progress: bool = True,
                 midi_minutes: float = DEFAULT_MIDI_MINUTES, debs_dir=DEFAULT_DEBS_DIR, seed: int = 0,
                 log: Callable[[str], None] = print) -> dict:
    """Fetch/convert every chosen source into ``out_dir`` (see the module doc). Returns the manifest:
    ``{"files": {rel: {sha256, duration, frames, source, genre, licence, recipe}}, "hours_per_genre",
    "hours_per_source", "total_hours", "total_bytes", "n_files", "failed", ...}``.

    ``sources``: names from :data:`SOURCES` (``None`` = all). Deterministic and idempotent.
    """
    t0 = time.time()
    out_dir = Path(out_dir).resolve()
    debs_dir = (out_dir.parent / "debs" if debs_dir is None else Path(debs_dir)).resolve()
    names = _parse_sources(sources)
    out_dir.mkdir(parents=True, exist_ok=True)
    man_path = out_dir / "manifest.json"
    meta_path = out_dir / "metadata.jsonl"
    old = read_manifest(out_dir)
    files: dict = dict(old.get("files", {}))
    all_meta = {k: v for k, v in _read_metadata(meta_path).items() if k in files}

    # 1) enumerate jobs, source by source
    jobs: list[Job] = []
    failed: list[str] = []
    packages: dict = dict(old.get("packages", {}))
    for name in names:
        src = SOURCES[name]
        try:
            if src.kind == "debian":
                roots = src.prepare(debs_dir, log)
                for pkg, cp in src.copyright_files(roots).items():
                    dst = out_dir / "licences" / f"{pkg}.copyright"
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(cp, dst)
                packages.update({p: src.versions.get(p, "") for p in src.resolved})
                sj = [_recording_job(r) for r in src.tracks(roots)]
            else:
                sj = _midi_jobs(out_dir, midi_minutes, seed)
                sf = midi_mod.find_soundfont()
                cp = Path("/usr/share/doc/fluid-soundfont-gm/copyright")
                if cp.is_file() and sf and "FluidR3" in os.path.realpath(sf):
                    (out_dir / "licences").mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(cp, out_dir / "licences" / "fluid-soundfont-gm.copyright")
            log(f"{name}: {len(sj)} tracks")
            jobs += sj
        except Exception as e:  # one broken source must not stop the others
            failed.append(f"{name}: {e}")
            log(f"FAILED source {name}: {e}")

    # drop outputs of the chosen sources that are no longer produced (e.g. fewer MIDI minutes)
    wanted = {j.rel for j in jobs}
    built_sources = {j.source for j in jobs}
    for rel in sorted(files):
        if files[rel]["source"] in built_sources and rel not in wanted:
            try:
                (out_dir / rel).unlink()
            except FileNotFoundError:
                pass
            files.pop(rel)
            all_meta.pop(rel, None)
            log(f"removed stale {rel}")

    def checkpoint():
        man = _summarise(files, packages, failed, names, midi_minutes, seed, time.time() - t0)
        _atomic_write_text(man_path, json.dumps(man, indent=1, sort_keys=True) + "\n")
        return man

    # 2) convert
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), unit="track", dynamic_ncols=True, file=sys.stderr)
    done = skipped = 0
    for j in jobs:
        if bar is not None:
            bar.set_description(j.source)
            bar.set_postfix_str(os.path.basename(j.rel)[:40])
        path = out_dir / j.rel
        rec = files.get(j.rel)
        if (rec and rec.get("recipe") == j.recipe_hash and path.is_file() and sha256_file(path) == rec["sha256"]):
            skipped += 1
            all_meta[j.rel] = {"path": j.rel, **j.meta, "duration": rec["duration"]}
            if j.source == "midi" and not (out_dir / j.meta.get("midi_file", "x")).is_file():
                j.extra()
            if bar is not None:
                bar.update(1)
            continue
        try:
            audio = j.produce()
            if audio.ndim != 2 or audio.shape[0] != 2 or audio.shape[1] == 0:
                raise AudioError(f"bad decoded shape {audio.shape}")
            rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
            if rms < 1e-4:
                raise AudioError(f"silent (rms {rms:.2e})")
            save_flac(path, audio, SR)
            j.extra()
        except Exception as e:
            failed.append(f"{j.rel}: {e}")
            log(f"FAILED {j.rel}: {e}")
            files.pop(j.rel, None)
            all_meta.pop(j.rel, None)
            if bar is not None:
                bar.update(1)
            continue
        dur = audio.shape[1] / SR
        files[j.rel] = {"sha256": sha256_file(path), "duration": round(dur, 3), "frames": int(audio.shape[1]),
                        "source": j.source, "genre": j.meta.get("genre", "unknown"),
                        "licence": j.meta.get("licence", "unknown"), "recipe": j.recipe_hash,
                        "bytes": path.stat().st_size}
        all_meta[j.rel] = {"path": j.rel, **j.meta, "duration": round(dur, 3)}
        done += 1
        checkpoint()
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()

    # 3) metadata (with the held-out split) + manifest
    assign_splits({k: v for k, v in all_meta.items() if k in files})
    lines = [json.dumps(all_meta[k], ensure_ascii=False, sort_keys=True) for k in sorted(all_meta) if k in files]
    _atomic_write_text(meta_path, "\n".join(lines) + ("\n" if lines else ""))
    man = checkpoint()
    man["built"], man["skipped"] = done, skipped
    _atomic_write_text(man_path, json.dumps(man, indent=1, sort_keys=True) + "\n")
    log(f"corpus in {out_dir}: {man['n_files']} files, {man['total_hours']:.2f} h, "
        f"{man['total_bytes'] / 2**30:.2f} GiB; built {done}, already done {skipped}, failed {len(failed)} "
        f"({time.time() - t0:.0f} s)")
    log("hours per genre: " + ", ".join(f"{g} {h:.2f}" for g, h in man["hours_per_genre"].items()))
    return man


HOLDOUT_EVERY = 20  # ~5% of each source's tracks are held aside (never trained on) for evaluation


def _path_hash(rel: str) -> int:
    return int(hashlib.sha256(rel.encode("utf-8")).hexdigest()[:12], 16)


def assign_splits(meta: dict) -> None:
    """Set meta[rel]["split"] to "holdout" or "train", deterministically from the path alone: a track is held
    out when its path hash falls in 1/HOLDOUT_EVERY of the range; every source keeps at least one held-out track
    (its lowest hash). Adding tracks never moves an existing track between splits unless a source had none."""
    by_source: dict = {}
    for rel, m in meta.items():
        by_source.setdefault(m.get("source", "unknown"), []).append(rel)
    for rels in by_source.values():
        held = [r for r in rels if _path_hash(r) % HOLDOUT_EVERY == 0]
        if not held and len(rels) > 1:
            held = [min(rels, key=_path_hash)]
        for r in rels:
            meta[r]["split"] = "holdout" if r in held else "train"


def _summarise(files, packages, failed, names, midi_minutes, seed, elapsed) -> dict:
    return {
        "version": MANIFEST_VERSION,
        "sample_rate": SR,
        "channels": 2,
        "format": "FLAC PCM_16",
        "files": files,
        "n_files": len(files),
        "total_hours": round(sum(f["duration"] for f in files.values()) / 3600.0, 3),
        "total_bytes": int(sum(f.get("bytes", 0) for f in files.values())),
        "hours_per_genre": _hours(files, "genre"),
        "hours_per_source": _hours(files, "source"),
        "packages": packages,
        "failed": failed,
        "last_build": {"sources": names, "midi_minutes": midi_minutes, "seed": seed,
                       "seconds": round(elapsed, 1)},
    }


def main(out_dir: str, sources: Optional[str] = None, midi_minutes: float = DEFAULT_MIDI_MINUTES,
         debs_dir: Optional[str] = DEFAULT_DEBS_DIR, progress: bool = True) -> int:
    """Entry point for ``mousai data build OUT_DIR --sources a,b``. Returns a process exit code:
    0 if everything was built, 1 if some source or file failed (the rest is still built), 2 on bad input."""
    try:
        names = _parse_sources(sources)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    repo = Path(__file__).resolve().parents[3]
    out = Path(out_dir).resolve()
    if out == repo or repo in out.parents:
        print(f"error: {out} is inside the repository; put the corpus outside it (e.g. ../data/corpus)",
              file=sys.stderr)
        return 2
    try:
        if os.path.lexists(out) and not out.is_dir():
            raise CorpusError(f"{out} exists and is not a folder")
        out.mkdir(parents=True, exist_ok=True)
        read_manifest(out)
    except OSError as e:
        print(f"error: cannot create the corpus folder {out}: {e.strerror or e}", file=sys.stderr)
        return 2
    except CorpusError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    man = build_corpus(out, names, progress=progress, midi_minutes=midi_minutes, debs_dir=debs_dir)
    print(json.dumps({"total_hours": man["total_hours"], "hours_per_genre": man["hours_per_genre"],
                      "n_files": man["n_files"], "failed": man["failed"]}, indent=1))
    return 1 if man["failed"] else 0


def _cli(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--sources", default=None, help=f"comma-separated subset of: {','.join(SOURCES)}")
    ap.add_argument("--midi-minutes", type=float, default=DEFAULT_MIDI_MINUTES)
    ap.add_argument("--debs-dir", default=DEFAULT_DEBS_DIR, help="the .deb cache (default: OUT_DIR/../debs)")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    return main(a.out_dir, a.sources, a.midi_minutes, a.debs_dir, progress=not a.no_progress)


if __name__ == "__main__":
    warnings.simplefilter("default")
    sys.exit(_cli())
