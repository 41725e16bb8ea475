"""ONNX Runtime (CPU) vs PyTorch parity, per component and end to end.

Per component: fresh random inputs at two lengths different from the export's, at batch 1 and batch 3 (the
graphs were exported at batch 2), figures = the worst case of the two. The encoder is measured on the path a
runtime takes (numpy magnitude STFT -> encoder.onnx) against `DMAE.encode` on the same audio.
End to end: prompts -> tokenizer.json + text_encoder.onnx -> 3 guided generator steps -> 3 decoder steps with
numpy DDIM, against the torch models with torch DDIM, both fed the same noise. An autoencoder bundle's end to end
(`end_to_end_autoencoder`): audio -> numpy STFT + encoder.onnx -> 3 decoder steps with numpy DDIM, against
`DMAE.encode` + `DMAE.decode` with the same noise, at a latent length that needs the decoder's padding.

Figures: {"max_abs": max |ort - torch|, "rel_l2": ||ort - torch|| / ||torch||}.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from mousai_runtime import sampling
from mousai_runtime.stft import magnitude_stft

FP32_BOUND = 1e-4  # rel L2 per component (and end to end)
FP16_BOUND = 1e-2  # rel L2 of an fp16 graph to its fp32 graph
COMPONENTS = ("text_encoder", "generator", "encoder", "decoder")
E2E_PROMPTS = ("warm ambient pads with slow strings", "fast drum and bass, 174 bpm, rolling sub bass")
WORDS = ("piano", "techno", "calm", "drums", "guitar", "ambient", "bass", "orchestral", "jazz", "slow", "fast",
         "strings", "vocal", "choir", "synth", "lofi", "beat", "120", "bpm", "epic", "sad", "happy", "rock", "flute")


# ------------------------------------------------------------------------------------------------- numerics


def figures(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    ref = np.asarray(ref, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    if ref.shape != got.shape:
        raise ValueError(f"shape mismatch: torch {ref.shape} vs onnx {got.shape}")
    if not np.isfinite(got).all():
        return {"max_abs": math.inf, "rel_l2": math.inf}
    diff = got - ref
    return {"max_abs": float(np.abs(diff).max(initial=0.0)),
            "rel_l2": float(np.linalg.norm(diff) / max(np.linalg.norm(ref), 1e-30))}


def worst(*figs: dict[str, float]) -> dict[str, float]:
    return {k: max(f[k] for f in figs) for k in figs[0]}


def pad_audio(audio: np.ndarray, multiple: int) -> np.ndarray:
    rem = (-audio.shape[-1]) % multiple
    return np.pad(audio, ((0, 0), (0, 0), (0, rem))) if rem else audio


def numpy_ddim(model_fn: Callable[[np.ndarray, np.ndarray], np.ndarray], x: np.ndarray, steps: int) -> np.ndarray:
    """The runtime's DDIM (linear schedule); NaN where it stops on a non-finite step (the figures then say inf)."""
    try:
        return sampling.ddim_sample(model_fn, x, sampling.linear_sigmas(steps))
    except sampling.NonFiniteError:
        return np.full_like(x, np.nan)


def session(path: str | Path, disable_optimizations: bool = False):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if disable_optimizations:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


# ------------------------------------------------------------------------------------------------- inputs


def random_prompts(rng: np.random.Generator, n: int, words: tuple[int, int] = (1, 30)) -> list[str]:
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(*words)))) for _ in range(n)]


def component_cases(name: str, models: dict[str, Any], config: Any, seed: int = 1) -> list[dict[str, np.ndarray]]:
    """Two fresh input sets per component: batch 1 and batch 3, at two lengths unlike the export's.

    The text encoder's cases hold token ids from the HF tokenizer; the encoder's hold raw audio under "audio".
    """
    rng = np.random.default_rng(seed)
    f32 = np.float32
    if name == "text_encoder":
        te = models["text_encoder"]
        out = []
        for b, words in ((1, (2, 5)), (3, (3, 80))):  # short prompts, and a batch that includes truncation
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "prompts longer than max_length were truncated": on purpose
                tok = te.tokenize(random_prompts(rng, b, words))
            out.append({"input_ids": tok["input_ids"].numpy().astype(np.int64),
                        "attention_mask": tok["attention_mask"].numpy().astype(np.int64)})
        return out
    if name == "generator":
        g = config.generator
        mult, n, d = models["generator"].length_multiple, g.text_max_length, g.unet.context_features
        out = []
        for b, k in ((1, 2), (3, 5)):  # exported at k = 3
            mask = np.zeros((b, n), f32)
            for i in range(b):
                mask[i, : rng.integers(2, n + 1)] = 1
            out.append({"x": rng.standard_normal((b, g.unet.in_channels, mult * k)).astype(f32),
                        "sigma": rng.uniform(0.02, 1.0, b).astype(f32),
                        "text_states": (rng.standard_normal((b, n, d)) * 0.5).astype(f32),
                        "text_mask": mask, "guidance": rng.uniform(1.0, 6.0, b).astype(f32)})
        return out
    if name == "encoder":
        c = config.dmae
        # exported at 6 latent frames; odd lengths exercise the zero padding to a multiple of hop
        return [{"audio": (rng.standard_normal((b, c.encoder.in_channels, c.hop * t - 37)) * 0.2).astype(f32)}
                for b, t in ((1, 5), (3, 9))]
    if name == "decoder":
        c = config.dmae
        per = c.length_multiple // c.hop
        out = []
        for b, k in ((1, 1), (3, 3)):  # exported at k = 2
            frames = per * k
            out.append({"x": rng.standard_normal((b, c.decoder.in_channels, frames * c.hop)).astype(f32),
                        "sigma": rng.uniform(0.02, 1.0, b).astype(f32),
                        "latent": rng.uniform(-1, 1, (b, c.latent_channels, frames)).astype(f32)})
        return out
    raise ValueError(name)


def torch_reference(name: str, models: dict[str, Any], config: Any, case: dict[str, np.ndarray]) -> np.ndarray:
    t = {k: torch.from_numpy(v) for k, v in case.items()}
    with torch.no_grad():
        if name == "text_encoder":
            return models["text_encoder"].states(t["input_ids"], t["attention_mask"]).float().numpy()
        if name == "generator":
            return models["generator"].guided(t["x"], t["sigma"], t["text_states"], t["text_mask"],
                                              t["guidance"]).numpy()
        if name == "encoder":
            return models["dmae"].encode(t["audio"]).numpy()
        if name == "decoder":
            return models["dmae"].denoise(t["x"], t["sigma"], t["latent"]).numpy()
    raise ValueError(name)


def onnx_feeds(name: str, config: Any, case: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What a runtime feeds the graph for this case (the encoder: the numpy STFT of the padded audio)."""
    if name != "encoder":
        return case
    e = config.dmae.encoder
    audio = pad_audio(case["audio"], config.dmae.hop)
    return {"magnitude": magnitude_stft(audio, e.stft_n_fft, e.stft_hop, e.stft_center, True)}


def run(sess, feeds: dict[str, np.ndarray]) -> np.ndarray:
    names = {i.name for i in sess.get_inputs()}
    return sess.run(None, {k: v for k, v in feeds.items() if k in names})[0]


# ------------------------------------------------------------------------------------------------- parity


def component_parity(name: str, onnx_path: str | Path, models: dict[str, Any], config: Any,
                     cases: Sequence[dict[str, np.ndarray]] | None = None) -> dict[str, float]:
    sess = session(onnx_path)
    cases = cases if cases is not None else component_cases(name, models, config)
    figs = []
    for case in cases:
        ref = torch_reference(name, models, config, case)
        got = run(sess, onnx_feeds(name, config, case))
        figs.append(figures(ref, got))
    return worst(*figs)


def end_to_end(paths: dict[str, Path], tokenizer_json: str | Path, models: dict[str, Any], config: Any,
               prompts: Sequence[str] = E2E_PROMPTS, generator_steps: int = 3, decoder_steps: int = 3,
               guidance: float = 3.0, seed: int = 7) -> dict[str, Any]:
    """A short generation both ways from the same noise; figures on the final audio (and the latent)."""
    from tokenizers import Tokenizer

    from training.model.diffusion import ddim_sample, linear_sigmas

    te, gen, dmae = models["text_encoder"], models["generator"], models["dmae"]
    b = len(prompts)
    c = config.dmae
    frames = math.lcm(gen.length_multiple, c.length_multiple // c.hop) * 2
    rng = np.random.default_rng(seed)
    noise_latent = rng.standard_normal((b, c.latent_channels, frames)).astype(np.float32)
    noise_audio = rng.standard_normal((b, c.decoder.in_channels, frames * c.hop)).astype(np.float32)
    scale = np.full((b,), guidance, np.float32)

    # numpy + ONNX Runtime, fed exactly what a runtime would compute
    tk = Tokenizer.from_file(str(tokenizer_json))
    enc = tk.encode_batch(list(prompts))
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
    s_text, s_gen, s_dec = (session(paths[k]) for k in ("text_encoder", "generator", "decoder"))
    states = run(s_text, {"input_ids": ids, "attention_mask": mask})
    fmask = mask.astype(np.float32)
    latent_o = numpy_ddim(lambda x, s: run(s_gen, {"x": x, "sigma": s, "text_states": states, "text_mask": fmask,
                                                  "guidance": scale}), noise_latent, generator_steps)
    audio_o = numpy_ddim(lambda x, s: run(s_dec, {"x": x, "sigma": s, "latent": latent_o}), noise_audio,
                         decoder_steps) / c.audio_scale

    # torch, with the training-side tokenizer and sampler
    tok = te.tokenize(list(prompts))
    tokenizer_equal = bool(np.array_equal(tok["input_ids"].numpy(), ids)
                           and np.array_equal(tok["attention_mask"].numpy(), mask))
    with torch.no_grad():
        st, m = te.states(tok["input_ids"], tok["attention_mask"]).float(), tok["attention_mask"].float()
        latent_t = ddim_sample(lambda x, s: gen.guided(x, s, st, m, torch.from_numpy(scale)),
                               torch.from_numpy(noise_latent), linear_sigmas(generator_steps))
        audio_t = ddim_sample(lambda x, s: dmae.denoise(x, s, latent_t), torch.from_numpy(noise_audio),
                              linear_sigmas(decoder_steps)) / c.audio_scale
    out: dict[str, Any] = figures(audio_t.numpy(), audio_o)
    out["latent_rel_l2"] = figures(latent_t.numpy(), latent_o)["rel_l2"]
    out["tokenizer_ids_equal"] = tokenizer_equal
    out["steps"] = {"generator": generator_steps, "decoder": decoder_steps, "guidance": guidance}
    return out


def end_to_end_autoencoder(paths: dict[str, Path], models: dict[str, Any], config: Any, batch: int = 2,
                           decoder_steps: int = 3, seed: int = 7) -> dict[str, Any]:
    """Encode then decode both ways from the same audio and noise; figures on the audio, `latent_rel_l2` on the
    encoder's latent. The latent is one frame longer than a decoder multiple, so both sides pad (the runtime's way:
    latent zero-padded to the multiple, the padded output cropped)."""
    c = config.dmae
    per = c.length_multiple // c.hop
    frames = per * 2 + 1
    padded = -(-frames // per) * per
    rng = np.random.default_rng(seed)
    audio = (rng.standard_normal((batch, c.encoder.in_channels, frames * c.hop - 37)) * 0.2).astype(np.float32)
    noise = rng.standard_normal((batch, c.decoder.in_channels, padded * c.hop)).astype(np.float32)

    s_enc, s_dec = session(paths["encoder"]), session(paths["decoder"])
    latent_o = run(s_enc, onnx_feeds("encoder", config, {"audio": audio}))
    lat_p = np.pad(latent_o, ((0, 0), (0, 0), (0, padded - latent_o.shape[-1])))
    audio_o = numpy_ddim(lambda x, s: run(s_dec, {"x": x, "sigma": s, "latent": lat_p}), noise,
                         decoder_steps)[..., : frames * c.hop] / c.audio_scale

    dmae = models["dmae"]
    with torch.no_grad():
        latent_t = dmae.encode(torch.from_numpy(audio))
        audio_t = dmae.decode(latent_t, steps=decoder_steps, noise=torch.from_numpy(noise))
    out: dict[str, Any] = figures(audio_t.numpy(), audio_o)
    out["latent_rel_l2"] = figures(latent_t.numpy(), latent_o)["rel_l2"]
    out["steps"] = {"decoder": decoder_steps}
    out["frames"] = frames
    return out


def failures(parity: dict[str, dict[str, Any]], bound: float, key: str = "rel_l2") -> list[str]:
    bad = []
    for comp, figs in parity.items():
        v = figs.get(key)
        if v is None:
            continue
        if not (v < bound):  # NaN/inf fail too
            bad.append(f"{comp} {key} {v:.3g} >= {bound:g}")
        if figs.get("tokenizer_ids_equal") is False:
            bad.append(f"{comp}: tokenizer.json ids differ from the training tokenizer's")
    return bad


def table(parity: dict[str, dict[str, Any]], bound: float) -> str:
    """A plain aligned text table of the parity figures."""
    cols = ["component", "max_abs", "rel_l2", "bound", "ok"]
    fp16 = any("fp16_max_activation" in f for f in parity.values())
    if fp16:
        cols[3:3] = ["fp32_rel_l2", "fp16_vs_fp32", "max_act"]
    rows = []
    for comp, f in parity.items():
        row = [comp, f"{f.get('max_abs', math.nan):.3g}", f"{f.get('rel_l2', math.nan):.3g}"]
        if fp16:
            row += [f"{f['fp32_rel_l2']:.3g}" if "fp32_rel_l2" in f else "-",
                    f"{f['fp16_rel_l2_vs_fp32']:.3g}" if "fp16_rel_l2_vs_fp32" in f else "-",
                    f"{f['fp16_max_activation']:.4g}" if "fp16_max_activation" in f else "-"]
        ok = f.get("rel_l2", math.inf) < bound and f.get("tokenizer_ids_equal", True) is not False
        row += [f"{bound:g}", "yes" if ok else "NO"]
        rows.append(row)
    widths = [max(len(str(r[i])) for r in [cols] + rows) for i in range(len(cols))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip() for r in [cols] + rows]
    return "\n".join(lines)
