"""The five tables of issue #7. Each function measures, prints its markdown table and returns it.

All comparisons inside one table run in this process, interleaved (the order rotates every round), after one
warm-up round of each contestant; figures are medians.
"""
from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import numpy as np

from .common import SR, interleaved, matmul_peak, med, other_load, prompt_text, run_child, table
from .levers import feeds_for, ort_session, rel

_counter = itertools.count()


def fresh_prompt() -> str:
    """A prompt never seen before in this process (the per-prompt text cache would hide the text encoder)."""
    return f"{prompt_text()}, take {next(_counter)}"


def settings_of(pipe, **over) -> dict[str, Any]:
    d = pipe.bundle.defaults
    s = {"sampler": d.get("sampler", "ddim"), "decoder_sampler": d.get("decoder_sampler", d.get("sampler", "ddim")),
         "steps": d["generator_steps"], "decoder_steps": d["decoder_steps"], "guidance": d["guidance"]}
    s.update(over)
    return s


def describe(s: dict[str, Any], chunk: float | None = None) -> str:
    samp = s["sampler"] if s["sampler"] == s["decoder_sampler"] else f"{s['sampler']}/{s['decoder_sampler']}"
    return f"{samp} {s['steps']}+{s['decoder_steps']} steps, guidance {s['guidance']:g}" + \
        (f", chunks <= {chunk:g} s" if chunk else "")


def gen_call(pipe, seconds: float, s: dict[str, Any], seed: int = 0):
    return lambda: pipe.generate(fresh_prompt(), seconds, steps=s["steps"], decoder_steps=s["decoder_steps"],
                                 guidance=s["guidance"], seed=seed, sampler=s["sampler"],
                                 decoder_sampler=s["decoder_sampler"])


# ------------------------------------------------------------------------------------------------- table 1


def table1(bundle: str, checkpoint: str, threads: int, reps: int = 5, e2e_reps: int = 3,
           seconds: float = 10.0) -> str:
    """Runtime (numpy + ORT) vs PyTorch eager: per component and end to end, same checkpoint / steps / seed."""
    import torch

    from mousai_export.torch_backend import TorchBackend
    from mousai_runtime import Pipeline
    from mousai_runtime.backends import OrtBackend
    from mousai_runtime.stft import magnitude_stft

    pipe_o = Pipeline(bundle, backend="onnx", threads=threads)
    b = pipe_o.bundle
    ort_e: OrtBackend = pipe_o.backend
    torch_e = TorchBackend(checkpoint, threads=threads)
    pipe_t = Pipeline(bundle, backend=torch_e, checkpoint=checkpoint)
    enc = pipe_o.tokenizer.encode(prompt_text())
    st = b.stft
    audio = np.random.default_rng(0).standard_normal((1, 2, int(seconds * SR) // b.hop * b.hop)).astype(np.float32)
    audio *= 0.1
    mag = magnitude_stft(audio, st["n_fft"], st["hop"], st["center"], st["normalized"])
    cases = {
        "text encoder (1 prompt, 64 tokens)": ("text_encoder", {"input_ids": np.asarray([enc.ids], np.int64),
                                                                "attention_mask": np.asarray([enc.attention_mask],
                                                                                             np.int64)}),
        "generator step, guided (cond + uncond batched)": ("generator", feeds_for(b, "generator", seconds)),
        "decoder step": ("decoder", feeds_for(b, "decoder", seconds)),
        "encoder (after the STFT)": ("encoder", {"magnitude": mag}),
    }
    rows = []
    comp_ms: dict[str, tuple[float, float]] = {}
    for label, (comp, feeds) in cases.items():
        if not b.has(comp):
            continue
        t = interleaved({"onnx": lambda: ort_e.run(comp, feeds), "torch": lambda: torch_e.run(comp, feeds)}, reps)
        err = rel(ort_e.run(comp, feeds), torch_e.run(comp, feeds))
        o, e = med(t["onnx"]), med(t["torch"])
        comp_ms[comp] = (o, e)
        shape = "x".join(str(v) for v in next(iter(feeds.values())).shape)
        rows.append([label, shape, f"{o * 1e3:.1f}", f"{e * 1e3:.1f}", f"**{e / o:.2f}x**", f"{err:.1e}"])
    # the STFT the encoder needs: numpy (runtime) vs torch.stft (eager)
    window = torch.hann_window(st["n_fft"])
    at = torch.from_numpy(audio.reshape(2, -1))
    t = interleaved({"numpy": lambda: magnitude_stft(audio, st["n_fft"], st["hop"], st["center"], st["normalized"]),
                     "torch": lambda: torch.stft(at, st["n_fft"], st["hop"], window=window, center=True,
                                                 normalized=True, return_complex=True).abs()}, reps)
    rows.append([f"magnitude STFT ({seconds:g} s)", "2x" + str(audio.shape[-1]), f"{med(t['numpy']) * 1e3:.1f}",
                 f"{med(t['torch']) * 1e3:.1f}", f"{med(t['torch']) / med(t['numpy']):.2f}x", "-"])
    # end to end, the bundle's defaults, a new prompt every call (text encoder included), same seed
    s = settings_of(pipe_o)
    t = interleaved({"onnx": gen_call(pipe_o, seconds, s), "torch": gen_call(pipe_t, seconds, s)}, e2e_reps)
    a_o, a_t = pipe_o.generate("x", seconds, **_kw(s)), pipe_t.generate("x", seconds, **_kw(s))
    o, e = med(t["onnx"]), med(t["torch"])
    rows.append([f"**end to end, {seconds:g} s** ({describe(s)})", f"{seconds:g} s", f"{o * 1e3:.0f}",
                 f"{e * 1e3:.0f}", f"**{e / o:.2f}x**", f"{rel(a_o, a_t):.1e}"])
    rows.append(["end-to-end RTF (wall / audio seconds)", "", f"{o / seconds:.3f}", f"{e / seconds:.3f}", "", ""])
    # each out of the box: the runtime picks the idle cores; torch uses its default intra-op threads (all cores)
    t_default = _torch_default_threads()
    if t_default != threads:
        def torch_default():
            torch.set_num_threads(t_default)
            try:
                return gen_call(pipe_t, seconds, s)()
            finally:
                torch.set_num_threads(threads)

        t = interleaved({"onnx": gen_call(pipe_o, seconds, s), "torch": torch_default}, max(1, e2e_reps - 1))
        o, e = med(t["onnx"]), med(t["torch"])
        rows.append([f"end to end, each out of the box (runtime {threads} thr = idle cores; torch its default "
                     f"{t_default} thr)", f"{seconds:g} s", f"{o * 1e3:.0f}", f"{e * 1e3:.0f}", f"**{e / o:.2f}x**",
                     ""])
    out = table(["component", "input", f"runtime ms (ORT, {threads} thr)", f"torch eager ms ({threads} thr)",
                 "runtime speed-up", "rel L2 runtime vs torch"], rows)
    return out + f"\n\n({other_load()})"


def _torch_default_threads() -> int:
    """torch's intra-op thread count in a fresh process (it defaults to the physical cores)."""
    from .common import run_child_code

    return int(run_child_code("import torch; print(torch.get_num_threads())"))


def _kw(s: dict[str, Any]) -> dict[str, Any]:
    return dict(steps=s["steps"], decoder_steps=s["decoder_steps"], guidance=s["guidance"], seed=0,
                sampler=s["sampler"], decoder_sampler=s["decoder_sampler"])


# ------------------------------------------------------------------------------------------------- table 2


BASELINE = {"sampler": "ddim", "decoder_sampler": "ddim", "steps": 50, "decoder_steps": 10, "guidance": 3.0}


def eval_quality(bundle: str, report: str | Path = Path(__file__).resolve().parents[1] / "docs" / "eval" / "report.json"
                 ) -> str:
    """The eval report's headline numbers if it measured this bundle (same manifest) at its defaults."""
    import json

    from mousai_runtime.files import sha256_file

    try:
        doc = json.loads(Path(report).read_text())
    except (OSError, ValueError):
        return "not evaluated"
    if doc.get("manifest_sha256") != sha256_file(Path(bundle) / "manifest.json") or doc.get("generate_kw"):
        return "not evaluated at these settings"
    rec = next((r for r in doc["reconstruction"]["rows"] if r["method"].startswith("DMAE")), None)
    return (f"genre acc {doc['text']['accuracy']:.3f} (chance {doc['text']['chance']:.3f}), FD "
            f"{doc['frechet']['generated_vs_real']:.0f} (floor {doc['frechet']['real_half_vs_half']:.0f})"
            + (f", recon log-mel L1 {rec['log_mel_l1']:.3f}" if rec else "") + " (docs/eval)")


def table2(bundle: str, threads: int, reps: int = 3, lengths: tuple[float, ...] = (10.0, 60.0)) -> str:
    """End-to-end RTF with the bundle's default settings (and the previous defaults for reference)."""
    from mousai_runtime import Pipeline

    new = Pipeline(bundle, threads=threads)
    old = Pipeline(bundle, backend=new.backend, chunk_seconds=10.0, balance_chunks=False)
    s_new = settings_of(new)
    s_old = dict(BASELINE, guidance=s_new["guidance"])
    rows = []
    for sec in lengths:
        t = interleaved({"default": gen_call(new, sec, s_new), "previous": gen_call(old, sec, s_old)},
                        reps if sec <= 20 else max(1, reps - 1))
        d, p = med(t["default"]), med(t["previous"])
        rows.append([f"{sec:g} s", f"shipped defaults: {describe(s_new, 30.0)}", f"{d:.2f}", f"**{d / sec:.3f}**",
                     f"{p / d:.2f}x", eval_quality(bundle)])
        rows.append([f"{sec:g} s", f"previous defaults: {describe(s_old, 10.0)} (fixed chunks)", f"{p:.2f}",
                     f"{p / sec:.3f}", "1.00x", "not evaluated"])
    out = table(["audio", "settings", "wall s (median)", "RTF", "speed vs previous", "quality (eval report)"], rows)
    return out + f"\n\n(ORT {threads} thread(s); {other_load()})"


# ------------------------------------------------------------------------------------------------- table 3


def table3(bundle: str, threads: int, lengths: tuple[float, ...] = (10.0, 60.0, 600.0),
           modes: tuple[str, ...] = ("generate", "stream-wav")) -> str:
    """Wall time and peak RSS per length, each run in a fresh process (peak RSS is per process)."""
    rows = []
    base = None
    for mode in modes:
        for sec in lengths:
            r = run_child("benchmarks.child", ["--bundle", bundle, "--seconds", str(sec), "--threads", str(threads),
                                               "--mode", mode])
            if mode == modes[0] and base is None:
                base = r["wall"] / sec
            rows.append([f"{sec:g} s", mode, f"{r['wall']:.1f}", f"{r['wall'] / sec:.3f}",
                         f"{(r['wall'] / sec) / base:.2f}", f"{r['rss_loaded_mb']:.0f}", f"**{r['peak_rss_mb']:.0f}**",
                         f"{r['clip_mb']:.0f}"])
    out = table(["audio", "mode", "wall s", "RTF", "RTF / RTF(10 s)", "RSS after load MB", "peak RSS MB",
                 "of it the returned clip MB"], rows)
    return out + (f"\n\n(one process per row; `stream-wav` writes blocks to a WAV as they come and keeps no clip; "
                  f"ORT {threads} thread(s); {other_load()})")


# ------------------------------------------------------------------------------------------------- table 4


def table4(bundle: str, threads: int, reps: int = 3, lengths: tuple[float, ...] = (10.0, 60.0)) -> str:
    """Time to first audio from Pipeline.stream, and what it is made of."""
    from mousai_runtime import Pipeline

    default = Pipeline(bundle, threads=threads)
    small = Pipeline(bundle, backend=default.backend, chunk_seconds=6.0)  # ~2 x the overlap: earlier first audio
    s = settings_of(default)
    rows = []
    for sec in lengths:
        marks: dict[str, list[tuple[float, float, float]]] = {"default": [], "small": []}

        def first(p, key):
            def run():
                t0 = time.perf_counter()
                gen_done = []
                it = p.stream(fresh_prompt(), sec, stage_progress=lambda st, d, n: gen_done.append(
                    time.perf_counter()) if st == "decoder" and d == 0 else None, **_kw(s))
                nxt = next(it)
                t1 = time.perf_counter()
                for _ in it:
                    pass
                marks[key].append((t1 - t0, (gen_done[0] if gen_done else t1) - t0, time.perf_counter() - t0))
                assert nxt.shape[0] == 2
            return run

        interleaved({"default": first(default, "default"), "small": first(small, "small")}, reps)
        for key, p in (("default", default), ("small", small)):
            m = marks[key][1:]  # the first entry is the warm-up
            ttfa, gen, total = (med([x[i] for x in m]) for i in range(3))
            frames = p.frames_for(sec)[0]
            plan = p.decoder.plan(frames)
            chunk_s = plan.chunk_frames * p.hop / SR
            rows.append([f"{sec:g} s", f"chunks of {chunk_s:.1f} s ({len(plan.chunks)})", f"**{ttfa:.2f}**",
                         f"{gen:.2f}", f"{ttfa - gen:.2f}", f"{total:.2f}"])
    out = table(["audio", "decoder chunks", "time to first audio s", "of it text + generator s",
                 "of it first chunk decode s", "whole clip s"], rows)
    return out + f"\n\n({describe(s)}; ORT {threads} thread(s); {other_load()})"


# ------------------------------------------------------------------------------------------------- table 5


def table5(paper_cache: str, threads: int, reps: int = 3, seconds: float = 10.0) -> str:
    """Paper-size generator step and decoder step: ORT vs eager, RTF at 50 + 50 steps, FLOPs vs the matmul peak."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .paper_export import build_models

    cache = Path(paper_cache)
    torch.set_num_threads(threads)
    frames = -(-int(seconds * SR) // 1024)
    m = build_models(seed=0)
    cfg = m["config"]
    g, dm = m["generator"], m["dmae"]
    rng = np.random.default_rng(0)
    f = np.float32
    t_gen = -(-frames // g.length_multiple) * g.length_multiple
    t_gen = min(t_gen, 512)
    n, d = cfg.text.max_length, cfg.text.features
    gfeeds = {"x": rng.standard_normal((1, 32, t_gen)).astype(f), "sigma": np.array([0.6], f),
              "text_states": rng.standard_normal((1, n, d)).astype(f), "text_mask": np.ones((1, n), f),
              "guidance": np.array([3.0], f)}
    mult = cfg.dmae.length_multiple // cfg.dmae.hop
    t_dec = -(-frames // mult) * mult
    dfeeds = {"x": rng.standard_normal((1, 2, t_dec * 1024)).astype(f), "sigma": np.array([0.6], f),
              "latent": rng.uniform(-1, 1, (1, 32, t_dec)).astype(f)}
    tt = lambda fe: {k: torch.from_numpy(v) for k, v in fe.items()}  # noqa: E731
    eager = {
        "generator": lambda: g.guided(*tt(gfeeds).values()),
        "decoder": lambda: dm.denoise(*tt(dfeeds).values()),
    }
    feeds = {"generator": gfeeds, "decoder": dfeeds}
    peak1, peak2 = matmul_peak(1), matmul_peak(2)
    peakt = peak1 if threads == 1 else matmul_peak(threads)
    rows, per = [], {}
    for comp in ("generator", "decoder"):
        sess = ort_session(str(cache / f"{comp}.onnx"), threads)
        with torch.no_grad():
            fc = FlopCounterMode(display=False)
            with fc:
                eager[comp]()
            flops = fc.get_total_flops()
            t = interleaved({"onnx": lambda: sess.run(None, feeds[comp]), "torch": eager[comp]}, reps)
            err = rel(sess.run(None, feeds[comp])[0], eager[comp]().numpy())
        o, e = med(t["onnx"]), med(t["torch"])
        per[comp] = (o, e, flops)
        params = sum(p.numel() for p in (g if comp == "generator" else dm).parameters())
        shape = "x".join(str(v) for v in feeds[comp]["x"].shape)
        rows.append([f"{comp} step ({params / 1e6:.0f}M params{', guided' if comp == 'generator' else ''})", shape,
                     f"{flops / 1e9:.0f}", f"{o:.2f}", f"{e:.2f}", f"**{e / o:.2f}x**",
                     f"{flops / o / 1e9:.0f} ({flops / o / 1e9 / peakt:.0%})",
                     f"{flops / e / 1e9:.0f} ({flops / e / 1e9 / peakt:.0%})", f"{err:.1e}"])
        del sess
    (go, ge, gf), (do, de, df) = per["generator"], per["decoder"]
    gen_calls = -(-frames // t_gen)  # windows per step beyond the generator window (1 at 10 s)
    flops_per_s = (50 * gf * gen_calls + 50 * df) / seconds
    rtf_o = (50 * go * gen_calls + 50 * do) / seconds
    rtf_e = (50 * ge * gen_calls + 50 * de) / seconds
    rows.append([f"**50 + 50 steps, {seconds:g} s of audio**", "", f"{flops_per_s / 1e9:.0f} per s of audio",
                 f"RTF **{rtf_o:.1f}**", f"RTF {rtf_e:.1f}", f"{rtf_e / rtf_o:.2f}x", "", "", ""])
    out = table(["paper-size model (random weights)", "input", "GFLOP per call", "ORT s", "eager s",
                 "ORT speed-up", "ORT GFLOP/s (of peak)", "eager GFLOP/s (of peak)", "rel L2 ORT vs eager"], rows)
    return out + (f"\n\nPeak: float32 2048^3 matmul (torch) {peak1:.0f} GFLOP/s at 1 thread, {peak2:.0f} GFLOP/s "
                  f"at 2 threads (beside the other load); the table's reference is {peakt:.0f} GFLOP/s at {threads} "
                  f"thread(s). FLOPs counted by "
                  f"torch.utils.flop_counter.FlopCounterMode (matmuls and convolutions; elementwise ops, norms and "
                  f"softmax are not counted). ({other_load()})")
