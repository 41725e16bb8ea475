"""The ranges a bundle manifest's numbers must lie in, and the agreements between its fields and its graphs' shapes.

The type checks of `bundle.py` say a field is an integer; these say it is one the graphs and this runtime can use.
A manifest edited by hand (or by an attacker) could otherwise make the runtime write an all-zero file (a huge
`audio_scale`), a file peaking at 1e16 (a wide `postfilter.gain_range`), a file labelled with another sample rate,
or abort inside the tokenizer (a `text.max_length` of 1e8). Each check raises ValueError with one line.
"""
from __future__ import annotations

from typing import Any

SAMPLE_RATE = 48000  # every mousai model works at 48 kHz; the graphs do not record it, so any other value mislabels
MAX_SECONDS = 3600.0
MAX_STEPS = 10_000
MAX_GUIDANCE = 100.0
AUDIO_SCALE = (1e-2, 1e2)  # the DMAE's input scale (5.0 for the default; 1.0 for archisound)
GAIN_RANGE = (-40.0, 4.0)  # post-filter log-power correction: e^(0.5 * 4) = 7.4x (+17 dB) at most
MAX_TEXT_LENGTH = 4096  # tokens (the default text encoder reads 64)
MAX_SIZE = 1 << 20  # channels, features, hops, FFT sizes, length multiples, frames


def _within(v: Any, lo: float, hi: float, what: str) -> None:
    if not lo <= v <= hi:
        raise ValueError(f"{what} is {v!r}; the runtime accepts {lo:g} ... {hi:g}")


def check_ranges(m: dict) -> None:
    """Every number of a (type-checked) manifest in the range its graphs and this runtime accept."""
    a = m["audio"]
    if a["sample_rate"] != SAMPLE_RATE:
        raise ValueError(f"audio.sample_rate is {a['sample_rate']}; mousai models work at {SAMPLE_RATE} Hz (the "
                         "graphs do not record the rate, so another value would only mislabel the file)")
    _within(a["audio_scale"], *AUDIO_SCALE, "audio.audio_scale")
    sizes = [("latent", "channels"), ("latent", "hop"), ("stft", "n_fft"), ("stft", "hop"),
             ("decoder_info", "length_multiple"), ("text", "features"), ("generator_info", "length_multiple"),
             ("generator_info", "window_frames"), ("generator_info", "overlap_frames"), ("postfilter", "n_fft"),
             ("postfilter", "hop"), ("postfilter", "bands"), ("postfilter", "context")]
    for sec, key in sizes:
        if key in m.get(sec, {}):
            _within(m[sec][key], 0, MAX_SIZE, f"{sec}.{key}")
    if m["stft"]["hop"] > m["stft"]["n_fft"]:
        raise ValueError(f"stft.hop {m['stft']['hop']} is larger than stft.n_fft {m['stft']['n_fft']}")
    if "text" in m:
        _within(m["text"]["max_length"], 1, MAX_TEXT_LENGTH, "text.max_length")
        _within(m["text"]["pad_id"], 0, 2**31 - 1, "text.pad_id")
    d = m["defaults"]
    for key in ("generator_steps", "decoder_steps"):
        if key in d:
            _within(d[key], 1, MAX_STEPS, f"defaults.{key}")
    if "guidance" in d:
        _within(d["guidance"], -MAX_GUIDANCE, MAX_GUIDANCE, "defaults.guidance")
    for key in ("seconds", "max_seconds"):
        if key in d:
            _within(d[key], 0, MAX_SECONDS, f"defaults.{key}")
    if "postfilter" in m:
        lo, hi = m["postfilter"]["gain_range"]
        if lo < GAIN_RANGE[0] or hi > GAIN_RANGE[1]:
            raise ValueError(f"postfilter.gain_range is {[lo, hi]}; the runtime accepts corrections within "
                             f"{list(GAIN_RANGE)} (log power)")


def _dim(models: dict, comp: str, kind: str, name: str, axis: int) -> Any:
    """A static size from the manifest's tensor specs (None if absent or dynamic)."""
    spec = models.get(comp, {})
    for t in spec.get(kind, []):
        if t.get("name") == name:
            shape = t.get("shape", [])
            v = shape[axis] if -len(shape) <= axis < len(shape) else None
            return v if isinstance(v, int) else None
    return None


def check_agreement(m: dict) -> None:
    """The manifest's sections agree with its own tensor specs (which the runtime in turn checks against each
    graph's real inputs when it opens it): the text length, text features and latent channels."""
    ms = m["models"]
    want = []
    if "text" in m:
        t = m["text"]
        want += [("text.max_length", t["max_length"], "text_encoder", "inputs", "input_ids", 1),
                 ("text.max_length", t["max_length"], "text_encoder", "inputs", "attention_mask", 1),
                 ("text.features", t["features"], "text_encoder", "outputs", "text_states", -1),
                 ("text.features", t["features"], "generator", "inputs", "text_states", -1)]
    c = m["latent"]["channels"]
    want += [("latent.channels", c, "generator", "inputs", "x", 1), ("latent.channels", c, "decoder", "inputs",
                                                                     "latent", 1),
             ("latent.channels", c, "encoder", "outputs", "latent", 1),
             ("audio.channels", m["audio"]["channels"], "decoder", "inputs", "x", 1)]
    for field, value, comp, kind, name, axis in want:
        got = _dim(ms, comp, kind, name, axis)
        if got is not None and got != value:
            raise ValueError(f"{field} is {value}, but models.{comp}.{kind} {name!r} has size {got} on axis "
                             f"{axis}: the manifest disagrees with its graphs")


_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
               "tensor(int32)": "int32", "tensor(bool)": "bool"}


def check_graph_io(file: str, declared: list, actual: list, kind: str, dtypes: bool = True) -> None:
    """A graph's real inputs/outputs (ONNX Runtime NodeArg: .name, .type, .shape) against the manifest's specs
    (TensorSpec: .name, .dtype, .shape): the same dtype, rank and static sizes, name by name."""
    real = {a.name: a for a in actual}
    for t in declared:
        a = real.get(t.name)
        if a is None:
            continue  # names are compared by the caller
        dtype = _ORT_DTYPES.get(a.type, a.type)
        if dtypes and dtype != t.dtype:
            raise ValueError(f"{file} {kind} {t.name!r} is {dtype}, the manifest says {t.dtype}")
        shape = list(a.shape) if a.shape is not None else None
        if shape is None:
            continue
        if len(shape) != len(t.shape):
            raise ValueError(f"{file} {kind} {t.name!r} has shape {shape}, the manifest says {list(t.shape)}")
        for g, w in zip(shape, t.shape):
            if isinstance(g, int) and isinstance(w, int) and g != w:
                raise ValueError(f"{file} {kind} {t.name!r} has shape {shape}, the manifest says {list(t.shape)}")
