"""`mousai eval`: the numbers of the evaluation report, measured on a bundle, written as Markdown + JSON.

    build_classifier(corpus, "engines/eval-genre-cnn")        # once: train + export the genre CNN
    run_report(bundle, corpus, classifier, out_dir)           # reconstruction, text relevance, FD, diversity
"""
from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import genre as G
from . import reconstruction as R


def build_classifier(corpus: str | Path, out: str | Path, steps: int = 2000, log: Callable[[str], None] = print,
                     threads: int | None = None, cache: str | Path | None = None) -> dict:
    if threads:
        import torch

        torch.set_num_threads(threads)
    genres = G.eval_genres(corpus)
    log(f"genres ({len(genres)}): {', '.join(genres)}")
    train = G.corpus_tracks(corpus, "train", genres, progress=log, cache=cache)
    val = G.corpus_tracks(corpus, "holdout", genres, progress=log, cache=cache) + G.heldout_midi_tracks(genres)
    log(f"{len(train)} training tracks, {len(val)} held-out tracks (real + new-seed MIDI)")
    report = G.train_classifier(train, val, genres, out, steps=steps, log=log)
    report["per_genre_val_tracks"] = dict(Counter(t.genre for t in val))
    doc = json.loads((Path(out) / "labels.json").read_text())
    doc["training"] = report
    (Path(out) / "labels.json").write_text(json.dumps(doc, indent=1) + "\n")
    return report


def genre_prompts(corpus: str | Path, genres: Sequence[str]) -> dict[str, list[str]]:
    """Three prompts per genre in the corpus' caption vocabulary: the genre, "<genre> music", and the genre with
    its most common style tag."""
    styles: dict[str, Counter] = {g: Counter() for g in genres}
    for line in (Path(corpus) / "metadata.jsonl").read_text().splitlines():
        if line.strip():
            m = json.loads(line)
            if m.get("genre") in styles and isinstance(m.get("style"), str) and m["style"] != m["genre"]:
                styles[m["genre"]][m["style"]] += 1
    out = {}
    for g in genres:
        style = styles[g].most_common(1)[0][0] if styles[g] else "instrumental"
        out[g] = [g, f"{g} music", f"{style}, {g}"]
    return out


def training_captions(corpus: str | Path, genres: Sequence[str], per_genre: int = 2, seed: int = 7
                      ) -> dict[str, list[str]]:
    """Per genre, `per_genre` captions drawn as the trainer draws them (full length) from that genre's training
    tracks: the prompts the generator knows best. Beside the short prompts of genre_prompts they tell apart a
    generator that cannot make a genre from one that does not understand being asked for it briefly."""
    from training.data.dataset import caption_from_metadata

    tracks: dict[str, list[dict]] = {g: [] for g in genres}
    for line in (Path(corpus) / "metadata.jsonl").read_text().splitlines():
        if line.strip():
            m = json.loads(line)
            if m.get("genre") in tracks and m.get("split", "train") == "train":
                tracks[m["genre"]].append(m)
    rng = np.random.default_rng(seed)
    out = {}
    for g in genres:
        if tracks[g]:
            out[g] = [caption_from_metadata(tracks[g][int(rng.integers(len(tracks[g])))], rng)
                      for _ in range(per_genre)]
    return out


def text_relevance(pipe: Any, clf: G.GenreClassifier, prompts: dict[str, list[str]], seeds: Sequence[int] = (0, 1),
                   seconds: float = 10.0, log: Callable[[str], None] = print, **generate_kw) -> dict:
    """Generate every prompt x seed, classify; accuracy per genre, confusion matrix, embeddings for FD/diversity."""
    idx = {g: i for i, g in enumerate(clf.genres)}
    rows, embs, wall, audio_s = [], [], 0.0, 0.0
    total = sum(len(p) for p in prompts.values()) * len(seeds)
    for g, plist in prompts.items():
        for prompt in plist:
            for seed in seeds:
                t0 = time.perf_counter()
                audio = pipe.generate(prompt, seconds=seconds, seed=seed, **generate_kw)
                wall += time.perf_counter() - t0
                audio_s += seconds
                p, e = clf.classify_audio([audio])
                rows.append({"genre": g, "prompt": prompt, "seed": seed, "pred": clf.genres[int(p[0].argmax())],
                             "p_true": float(p[0][idx[g]])})
                embs.append(e[0])
                log(f"[{len(rows)}/{total}] {prompt!r} seed {seed}: {rows[-1]['pred']}")
    true = [idx[r["genre"]] for r in rows]
    pred = [idx[r["pred"]] for r in rows]
    per_genre = {g: float(np.mean([r["pred"] == g for r in rows if r["genre"] == g])) for g in prompts}
    pairs = [(embs[i], embs[i + 1]) for i in range(0, len(rows), len(seeds)) if len(seeds) >= 2]
    return {"rows": rows, "accuracy": float(np.mean(np.array(true) == np.array(pred))), "per_genre": per_genre,
            "confusion": G.confusion(true, pred, len(clf.genres)).tolist(), "embeddings": np.stack(embs),
            "seed_pair_distance": G.mean_pairwise_distance(pairs) if pairs else None,
            "rtf": wall / audio_s, "chance": 1.0 / len(prompts)}


def decoder_ceiling(pipe: Any, clf: G.GenreClassifier, clips: Sequence[R.Clip], steps: int) -> dict:
    """Genre accuracy on real held-out clips and on their decode(encode(x)): generated audio passes through the same
    decoder, so the second figure bounds what any generator can score with this DMAE."""
    keep = [c for c in clips if c.genre in clf.genres]
    if not keep:
        return {"clips": 0}
    rec = [pipe.decode(pipe.encode(c.audio), steps=steps, seed=i, samples=c.audio.shape[1]) for i, c in enumerate(keep)]
    p_real, _ = clf.classify_audio([c.audio for c in keep])
    p_rec, _ = clf.classify_audio(rec)
    truth = np.array([clf.genres.index(c.genre) for c in keep])
    return {"clips": len(keep), "steps": steps, "genres": len({c.genre for c in keep}),
            "real_accuracy": float(np.mean(p_real.argmax(1) == truth)),
            "reconstructed_accuracy": float(np.mean(p_rec.argmax(1) == truth))}


def real_embeddings(corpus: str | Path, clf: G.GenreClassifier, genres: Sequence[str], seconds: float = 10.0,
                    per_track: int = 4) -> np.ndarray:
    """Embeddings of real 10 s clips: the held-out recordings and new-seed MIDI (never trained on)."""
    tracks = G.corpus_tracks(corpus, "holdout", genres) + G.heldout_midi_tracks(genres)
    frames = G.clip_frames(seconds)
    embs = []
    for t in tracks:
        for w in G.clip_windows(t, per_track, frames):
            win = G.clip_frames()
            starts = np.linspace(0, w.shape[1] - win, num=max(1, w.shape[1] // win), dtype=int)
            _, e = clf.run(np.stack([w[:, s:s + win] for s in starts]))
            embs.append(e.mean(0))
    return np.stack(embs)


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def run_report(bundle: str | Path, corpus: str | Path, classifier: str | Path, out_dir: str | Path,
               seconds: float = 10.0, seeds: Sequence[int] = (0, 1), recon_steps: Sequence[int] = (10, 20, 50),
               recon_seconds: float = 5.0, recon_per_track: int = 2, threads: int | None = None,
               log: Callable[[str], None] = print, **generate_kw) -> dict:
    """All report numbers for `bundle`; writes out_dir/report.json and out_dir/REPORT.md (atomically)."""
    from mousai_runtime.files import atomic_dir, sha256_file
    from mousai_runtime.pipeline import Pipeline

    t_start = time.time()
    pipe = Pipeline(bundle, threads=threads)
    clf = G.GenreClassifier(classifier)
    genres = [g for g in clf.genres]
    doc: dict[str, Any] = {"bundle": str(bundle), "manifest_sha256": sha256_file(Path(bundle) / "manifest.json"),
                           "classifier": clf.doc.get("training", {}), "genres": genres,
                           "defaults": pipe.bundle.defaults, "generate_kw": generate_kw}
    # reconstruction
    clips = R.holdout_clips(corpus, seconds=recon_seconds, per_track=recon_per_track)
    log(f"reconstruction: {len(clips)} held-out clips of {recon_seconds} s")
    decoder_steps = int(generate_kw.get("decoder_steps") or pipe.bundle.defaults["decoder_steps"])
    steps = sorted(set(recon_steps) | {decoder_steps})
    # with a post-filter in the bundle: every row with it, and the bundle's decoder steps without it beside them
    bare = Pipeline(bundle, threads=threads, postfilter=False) if pipe.postfilter is not None else None
    label = "DMAE + post-filter" if bare is not None else "DMAE"
    rows = R.reconstruction_table(lambda a, s, i: pipe.decode(pipe.encode(a), steps=s, seed=i, samples=a.shape[1]),
                                  clips, steps=steps, progress=log, label=label)
    if bare is not None:
        rows[len(steps):len(steps)] = R.reconstruction_table(
            lambda a, s, i: bare.decode(bare.encode(a), steps=s, seed=i, samples=a.shape[1]), clips,
            steps=[decoder_steps], progress=log, baselines=False, label="DMAE alone (no post-filter)")
    doc["reconstruction"] = {"clips": len(clips), "clips_sha256": R.clips_sha256(clips),
                             "rows": [r.__dict__ for r in rows]}
    ceiling_clips = R.holdout_clips(corpus, seconds=G.CLIP_SECONDS, per_track=recon_per_track, real_only=False)
    doc["decoder_ceiling"] = decoder_ceiling(pipe, clf, ceiling_clips, decoder_steps)
    # the genres with no held-out recording: unseen MIDI (new seeds), a 10 s clip from 2 s into each style
    midi_clips = [R.Clip(name, g, np.ascontiguousarray(a[:, 2 * G.SR:12 * G.SR], np.float32))
                  for name, g, a in G.heldout_midi_audio(genres, seconds=14.0, seed=4242)]
    doc["decoder_ceiling_midi"] = decoder_ceiling(pipe, clf, midi_clips, decoder_steps)
    if bare is not None:
        for key, cl in (("decoder_ceiling", ceiling_clips), ("decoder_ceiling_midi", midi_clips)):
            doc[key]["postfilter"] = True
            doc[key]["reconstructed_accuracy_no_postfilter"] = decoder_ceiling(
                bare, clf, cl, decoder_steps)["reconstructed_accuracy"]
    # text relevance, FD, diversity
    prompts = genre_prompts(corpus, genres)
    rel = text_relevance(pipe, clf, prompts, seeds=seeds, seconds=seconds, log=log, **generate_kw)
    captions = training_captions(corpus, genres)
    cap = text_relevance(pipe, clf, captions, seeds=seeds[:1], seconds=seconds, log=log, **generate_kw)
    doc["text_captions"] = {"clips": len(cap["rows"]), "genres": len(captions), "accuracy": cap["accuracy"],
                            "per_genre": cap["per_genre"], "rows": cap["rows"]}
    real = real_embeddings(corpus, clf, genres, seconds=seconds)
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(real))
    half = len(real) // 2
    doc["text"] = {k: v for k, v in rel.items() if k != "embeddings"}
    doc["frechet"] = {"generated_vs_real": G.frechet_distance(rel["embeddings"], real),
                      "real_half_vs_half": G.frechet_distance(real[perm[:half]], real[perm[half:]]),
                      "generated_clips": int(len(rel["embeddings"])), "real_clips": int(len(real))}
    doc["seconds"] = time.time() - t_start

    def write(tmp: Path) -> None:
        (tmp / "report.json").write_text(json.dumps(doc, indent=1) + "\n")
        (tmp / "REPORT.md").write_text(format_report(doc))

    atomic_dir(Path(out_dir), write)
    return doc


def _ceiling_lines(c: dict | None, what: str = "real held-out clips") -> list[str]:
    if not c or not c.get("clips"):
        return []
    return [f"Decoder ceiling: on {c['clips']} {what} ({c['genres']} genres) the classifier scores "
            f"{c['real_accuracy']:.3f}; on the same clips after decode(encode(x)) at {c['steps']} decoder steps, "
            f"{c['reconstructed_accuracy']:.3f}"
            + (f" with the envelope post-filter ({c['reconstructed_accuracy_no_postfilter']:.3f} without it)"
               if "reconstructed_accuracy_no_postfilter" in c else "")
            + ". Generated clips go through that decoder too.", ""]


def _caption_lines(c: dict | None, short_accuracy: float) -> list[str]:
    if not c or not c.get("clips"):
        return []
    heard = sorted(g for g, a in c["per_genre"].items() if a > 0)
    return [f"Asked with captions of training tracks instead ({c['clips']} clips, {c['genres']} genres, drawn as the "
            f"trainer draws them): accuracy {c['accuracy']:.3f}, against {short_accuracy:.3f} with the short "
            f"prompts above; genres heard at least once: {', '.join(heard) if heard else 'none'}. The gap is how "
            "far the generator is from understanding a short prompt, the rest what it cannot make yet.", ""]


def format_report(doc: dict) -> str:
    rec = doc["reconstruction"]
    t = doc["text"]
    fd = doc["frechet"]
    genres = doc["genres"]
    out = ["# Evaluation report", "",
           f"Bundle `{doc['bundle']}` (manifest sha256 `{doc['manifest_sha256'][:16]}…`); defaults "
           f"{json.dumps(doc['defaults'])}; generate options {json.dumps(doc['generate_kw'])}.", "",
           f"## Reconstruction (DMAE) on {rec['clips']} held-out real clips", "",
           "decode(encode(x)) vs x; lower is better. Griffin-Lim gets the true, uncompressed magnitude.", "",
           _md_table(["reconstruction", "log-mel L1", "multi-res STFT", "wall s"],
                     [[r["method"], f"{r['log_mel_l1']:.3f}", f"{r['mrstft_l1']:.3f}", f"{r['seconds']:.1f}"]
                      for r in rec["rows"]]), "",
           f"## Text relevance: {len(t['rows'])} generated clips, {len(genres)} genres", "",
           f"Genre accuracy **{t['accuracy']:.3f}** (chance {t['chance']:.3f}); generation RTF {t['rtf']:.3f}. "
           f"The classifier's own held-out accuracy on real/unseen clips: "
           f"{doc['classifier'].get('val_accuracy', float('nan')):.3f}.", "",
           *_caption_lines(doc.get("text_captions"), t["accuracy"]),
           *_ceiling_lines(doc.get("decoder_ceiling")),
           *_ceiling_lines(doc.get("decoder_ceiling_midi"), "unseen MIDI clips (new seeds, one per style, 10 s)"),
           _md_table(["genre", "accuracy", "prompts"],
                     [[g, f"{a:.2f}", "; ".join(sorted({r['prompt'] for r in t['rows'] if r['genre'] == g}))]
                      for g, a in t["per_genre"].items()]), "",
           "Confusion matrix (rows: genre asked for, columns: genre heard):", "",
           _md_table([""] + [g[:6] for g in genres], [[g] + row for g, row in zip(genres, t["confusion"])]), "",
           "## Distribution and diversity (classifier embedding space)", "",
           _md_table(["measure", "value"], [
               ["Fréchet distance, generated vs real", f"{fd['generated_vs_real']:.2f}"],
               ["Fréchet distance, real half vs real half (floor)", f"{fd['real_half_vs_half']:.2f}"],
               ["mean distance between the two seeds of a prompt", f"{t['seed_pair_distance']:.3f}"]]), "",
           f"({fd['generated_clips']} generated, {fd['real_clips']} real clips; {doc['seconds']:.0f} s in all.)", ""]
    return "\n".join(out)
