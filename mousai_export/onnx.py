"""Export each bundle component to ONNX (docs/bundle-format.md): one function per component.

Every export uses the dynamo exporter (torch.onnx.export(dynamo=True)) at the requested opset (default 18: the
dynamo exporter's opset-17 graphs do not load in ONNX Runtime) with example inputs of
batch 2 (batch 1 gets specialised), dynamic batch and length axes, then renames the graph's dynamic axes to the
contract's names (batch, frames, samples, stft_frames), refuses training-only ops, applies the exact speed rewrites
of graph_opt.py (nearest up-sampling as one Resize), runs the ONNX checker and shape inference and writes the file. Models whose weights exceed 2 GB go to external data in one
"<name>.onnx.data" file beside the graph.

The legacy TorchScript exporter is not used: it cannot trace the U-Net (layer_norm over a traced shape) and
mis-traces the attention reshapes.
"""
from __future__ import annotations

import contextlib
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import onnx
import torch
from torch import Tensor, nn

EXTERNAL_DATA_LIMIT = 1_800_000_000  # bytes of weights above which a graph is written with external data (2 GB cap)
TRAINING_ONLY_OPS = {"Dropout", "BatchNormalization", "Gradient", "TrainingMode"}
MIN_OPSET = 18


class OnnxExportFailed(RuntimeError):
    """An exporter, checker or shape-inference failure (turned into ExportError by the bundle writer)."""


@dataclass
class Exported:
    """What one component export wrote."""

    path: Path
    files: list[str]  # file names written (the graph, plus its external data file if any)
    inputs: list[dict[str, Any]]  # [{"name", "dtype", "shape"}] as in the manifest
    outputs: list[dict[str, Any]]
    seconds: float = 0.0


# ------------------------------------------------------------------------------------------------- wrappers


class TextEncoderGraph(nn.Module):
    """(input_ids, attention_mask) int64 [B, N] -> last hidden state [B, N, D]."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class GeneratorGraph(nn.Module):
    """One guided step: conditional and unconditional (null embedding = a graph constant) batched inside."""

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.generator = generator

    def forward(self, x: Tensor, sigma: Tensor, text_states: Tensor, text_mask: Tensor, guidance: Tensor) -> Tensor:
        return self.generator.guided(x, sigma, text_states, text_mask, guidance)


class EncoderGraph(nn.Module):
    """The DMAE encoder after the STFT: magnitude [B, C * bins, stft_frames] -> latent [B, 32, frames]."""

    def __init__(self, dmae: nn.Module):
        super().__init__()
        self.encoder = dmae.encoder

    def forward(self, magnitude: Tensor) -> Tensor:
        return self.encoder.frames_to_latent(magnitude)


class DecoderGraph(nn.Module):
    """One DMAE decoder step: v for x [B, 2, samples] at sigma [B] given latent [B, 32, frames]."""

    def __init__(self, dmae: nn.Module):
        super().__init__()
        self.dmae = dmae

    def forward(self, x: Tensor, sigma: Tensor, latent: Tensor) -> Tensor:
        return self.dmae.denoise(x, sigma, latent)


# ------------------------------------------------------------------------------------------------- helpers

_ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.BOOL: "bool",
}


def check_opset(opset: int) -> None:
    """Raise ValueError for an opset this exporter + the installed onnx cannot write."""
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int):
        raise ValueError(f"opset must be an integer, got {opset!r}")
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is not supported: the dynamo exporter needs opset >= {MIN_OPSET} "
                         f"(ONNX Runtime cannot load its opset-17 graphs)")
    if opset > newest:
        raise ValueError(f"opset {opset} is newer than the installed onnx {onnx.__version__} can write "
                         f"(its newest is {newest})")


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's banners, tracer warnings and optimizer chatter (errors still raise)."""
    names = ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx", "onnxscript", "onnx_ir", "torch._export",
             "torch.fx.experimental.symbolic_shapes", "torch._subclasses")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
                yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _weights_bytes(model: onnx.ModelProto) -> int:
    total = 0
    for t in model.graph.initializer:
        n = 1
        for d in t.dims:
            n *= d
        total += n * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    return total


def _rename_dims(model: onnx.ModelProto, axes: dict[str, dict[int, str]]) -> None:
    """Give the graph inputs/outputs' dynamic axes the contract's names (also where value_info reuses them)."""
    mapping: dict[str, str] = {}
    for vi in list(model.graph.input) + list(model.graph.output):
        for axis, name in axes.get(vi.name, {}).items():
            dim = vi.type.tensor_type.shape.dim[axis]
            if dim.HasField("dim_param"):
                mapping.setdefault(dim.dim_param, name)
            dim.dim_param = name  # also clears a fixed dim_value
    for vi in model.graph.value_info:
        for dim in vi.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param in mapping:
                dim.dim_param = mapping[dim.dim_param]


def io_spec(model: onnx.ModelProto) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The manifest's inputs/outputs lists, read from the graph itself."""

    def one(vi: onnx.ValueInfoProto) -> dict[str, Any]:
        t = vi.type.tensor_type
        shape = [d.dim_param if d.HasField("dim_param") else int(d.dim_value) for d in t.shape.dim]
        return {"name": vi.name, "dtype": _ONNX_DTYPES.get(t.elem_type, str(t.elem_type)), "shape": shape}

    inits = {t.name for t in model.graph.initializer}
    return [one(v) for v in model.graph.input if v.name not in inits], [one(v) for v in model.graph.output]


def strip_debug_metadata(model: onnx.ModelProto) -> int:
    """Drop the exporter's per-node debug records (torch stack traces, FX node text: ~1.5 MB in the tiny
    generator, 8 % of its file); ONNX Runtime never reads them. Returns the bytes removed."""
    removed = 0
    for graph in [model.graph] + [a.g for n in model.graph.node for a in n.attribute if a.HasField("g")]:
        for node in graph.node:
            removed += sum(len(p.key) + len(p.value) for p in node.metadata_props) + len(node.doc_string)
            del node.metadata_props[:]
            node.doc_string = ""
    return removed


def save_model(model: onnx.ModelProto, path: Path) -> list[str]:
    """Write the graph without debug metadata (external data in one '<name>.onnx.data' file above the 2 GB limit);
    check; infer shapes."""
    path = Path(path)
    strip_debug_metadata(model)
    external = _weights_bytes(model) > EXTERNAL_DATA_LIMIT
    files = [path.name]
    if external:
        location = path.name + ".data"
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=location, size_threshold=1024)
        files.append(location)
    else:
        onnx.save_model(model, str(path))
    try:
        onnx.checker.check_model(str(path))  # the path form handles external data and > 2 GB
        if external:
            onnx.shape_inference.infer_shapes_path(str(path), str(path.with_suffix(".inferred.onnx")), strict_mode=True)
            path.with_suffix(".inferred.onnx").unlink()
        else:
            onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise OnnxExportFailed(f"{path.name} fails the ONNX checker / shape inference: {e}") from e
    return files


def export_module(
    module: nn.Module,
    args: tuple[Tensor, ...],
    path: str | Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_shapes: tuple[dict[int, Any] | None, ...],
    axis_names: dict[str, dict[int, str]],
    opset: int = 18,
) -> Exported:
    """module(*args) -> ONNX at `path`, with named inputs/outputs and contract-named dynamic axes."""
    import time

    check_opset(opset)
    path = Path(path)
    t0 = time.perf_counter()
    module = module.eval()
    try:
        with _quiet(), torch.no_grad():
            program = torch.onnx.export(
                module, args, dynamo=True, opset_version=opset, input_names=list(input_names),
                output_names=list(output_names), dynamic_shapes=dynamic_shapes, optimize=True, verbose=False,
                external_data=False, report=False,
            )
            model = program.model_proto
    except Exception as e:  # the exporter raises many types; report one line
        msg = " ".join(str(e).split())[:400]
        raise OnnxExportFailed(f"torch.onnx.export failed for {path.name}: {type(e).__name__}: {msg}") from e
    bad = sorted({n.op_type for n in model.graph.node} & TRAINING_ONLY_OPS)
    if bad:
        raise OnnxExportFailed(f"{path.name} contains training-only ops {bad}: export the model in eval mode")
    model.producer_name = "mousai_export"
    _rename_dims(model, axis_names)
    from .graph_opt import optimize

    optimize(model)  # exact rewrites for ONNX Runtime speed (nearest up-sampling as Resize)
    files = save_model(model, path)
    ins, outs = io_spec(model)
    return Exported(path, files, ins, outs, time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------------- components

Dim = torch.export.Dim


def export_text_encoder(text_encoder: nn.Module, path: str | Path, opset: int = 18,
                        prompts: Sequence[str] = ("a calm piano melody", "upbeat techno with a heavy kick, 128 bpm")) -> Exported:
    """FrozenTextEncoder -> text_encoder.onnx: input_ids, attention_mask int64 [batch, max_length] -> text_states."""
    tok = text_encoder.tokenize(list(prompts))
    args = (tok["input_ids"].to(torch.int64), tok["attention_mask"].to(torch.int64))
    if args[0].shape[0] != 2:
        raise ValueError("export with a batch of 2 example prompts (batch 1 gets specialised)")
    b = Dim("batch")
    return export_module(
        TextEncoderGraph(text_encoder.model), args, path, ["input_ids", "attention_mask"], ["text_states"],
        ({0: b}, {0: b}), {"input_ids": {0: "batch"}, "attention_mask": {0: "batch"}, "text_states": {0: "batch"}},
        opset,
    )


def save_tokenizer(text_encoder: nn.Module, path: str | Path) -> dict[str, Any]:
    """The fast tokenizer as tokenizer.json with padding to max_length and truncation baked in.

    A runtime then needs only `tokenizers.Tokenizer.from_file(path).encode_batch(prompts)`; it gets ids and
    attention masks of exactly max_length. Returns {"pad_id", "pad_token", "max_length"}.
    """
    hf = text_encoder.tokenizer
    if not getattr(hf, "is_fast", False):
        raise ValueError(f"the text encoder's tokenizer ({type(hf).__name__}) is not a fast tokenizer: "
                         "tokenizer.json needs one")
    from tokenizers import Tokenizer

    tk = Tokenizer.from_str(hf.backend_tokenizer.to_str())  # a copy: never mutate the live tokenizer
    max_length = int(text_encoder.max_length)
    pad_id = hf.pad_token_id if hf.pad_token_id is not None else 0
    pad_token = hf.pad_token if hf.pad_token is not None else tk.id_to_token(pad_id)
    tk.enable_truncation(max_length=max_length)
    tk.enable_padding(direction="right", pad_id=int(pad_id), pad_token=str(pad_token), length=max_length)
    tk.save(str(path))
    return {"pad_id": int(pad_id), "pad_token": str(pad_token), "max_length": max_length}


def export_generator(generator: nn.Module, path: str | Path, opset: int = 18, frames_k: int = 3) -> Exported:
    """Generator -> generator.onnx: one guided step (x, sigma, text_states, text_mask, guidance) -> v."""
    cfg = generator.cfg
    mult = generator.length_multiple
    n, d = cfg.text_max_length, cfg.unet.context_features
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(2, n)
    mask[0, 7:] = 0
    args = (torch.randn(2, cfg.unet.in_channels, mult * frames_k, generator=g), torch.tensor([0.9, 0.3]),
            torch.randn(2, n, d, generator=g), mask, torch.tensor([3.0, 1.5]))
    b, k = Dim("batch"), Dim("frames_k", min=1)
    return export_module(
        GeneratorGraph(generator), args, path, ["x", "sigma", "text_states", "text_mask", "guidance"], ["v"],
        ({0: b, 2: mult * k}, {0: b}, {0: b}, {0: b}, {0: b}),
        {"x": {0: "batch", 2: "frames"}, "sigma": {0: "batch"}, "text_states": {0: "batch"},
         "text_mask": {0: "batch"}, "guidance": {0: "batch"}, "v": {0: "batch", 2: "frames"}},
        opset,
    )


def export_encoder(dmae: nn.Module, path: str | Path, opset: int = 18, frames: int = 6) -> Exported:
    """DMAE encoder after the STFT -> encoder.onnx: magnitude [batch, C * bins, stft_frames] -> latent."""
    e = dmae.cfg.encoder
    stft_frames = frames * dmae.hop // e.stft_hop
    g = torch.Generator().manual_seed(0)
    args = (torch.rand(2, e.in_channels * e.frequency_bins, stft_frames, generator=g),)
    return export_module(
        EncoderGraph(dmae), args, path, ["magnitude"], ["latent"],
        ({0: Dim("batch"), 2: Dim.DYNAMIC},),
        {"magnitude": {0: "batch", 2: "stft_frames"}, "latent": {0: "batch", 2: "frames"}},
        opset,
    )


def export_decoder(dmae: nn.Module, path: str | Path, opset: int = 18, k: int = 2) -> Exported:
    """DMAE -> decoder.onnx: one denoising step (x [batch, 2, samples], sigma, latent [batch, 32, frames]) -> v.

    samples = frames * hop and samples is a multiple of decoder_info.length_multiple (the runtime pads).
    """
    c = dmae.cfg
    mult, hop = c.length_multiple, c.hop
    frames = mult // hop * k
    g = torch.Generator().manual_seed(0)
    args = (torch.randn(2, c.decoder.in_channels, frames * hop, generator=g), torch.tensor([0.8, 0.2]),
            torch.rand(2, c.latent_channels, frames, generator=g) * 2 - 1)
    b = Dim("batch")
    # a derived dim (samples = mult * k, frames = mult / hop * k) is the precise statement, but it fails to export
    # for a DMAE decoder: Dim.DYNAMIC works and the runtime pads anyway
    return export_module(
        DecoderGraph(dmae), args, path, ["x", "sigma", "latent"], ["v"],
        ({0: b, 2: Dim.DYNAMIC}, {0: b}, {0: b, 2: Dim.DYNAMIC}),
        {"x": {0: "batch", 2: "samples"}, "sigma": {0: "batch"}, "latent": {0: "batch", 2: "frames"},
         "v": {0: "batch", 2: "samples"}},
        opset,
    )


