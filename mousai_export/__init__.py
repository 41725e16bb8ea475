"""mousai_export: checkpoint -> bundle (docs/bundle-format.md): ONNX graphs, tokenizer.json, manifest.json.

    from mousai_export import export_bundle, ExportError
    manifest = export_bundle("checkpoints/tiny", "engines/default")

Modules: onnx (one export function per component), parity (ONNX Runtime vs PyTorch), fp16 (fp16 graphs with fp32
islands and their overflow / accuracy figures), trt (TensorRT engines; needs an NVIDIA GPU), bundle (manifest,
hashes, receptive field, atomic folder write). Needs the `export` extra (torch, onnx, onnxscript, transformers).
"""
from __future__ import annotations

from typing import Any


class ExportError(Exception):
    """A user error during export (bad checkpoint, existing folder, unsupported opset, failed parity, ...).

    The message is one line and says what to do.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def export_bundle(
    checkpoint: str,
    out: str,
    engine: str = "onnx",
    fp16: bool = False,
    opset: int = 18,
    check: bool = True,
    force: bool = False,
    progress: bool = True,
    fp16_fallback: bool = False,
) -> dict[str, Any]:
    """Export the checkpoint folder to a bundle folder `out`; returns the manifest.

    A checkpoint with generator weights gives a "text-to-music" bundle; a DMAE-only checkpoint (e.g. from
    `mousai import archisound`) gives an "autoencoder" bundle (encoder.onnx + decoder.onnx; manifest "kind").

    engine: "onnx", or "trt" (also builds TensorRT engines under out/trt/; needs an NVIDIA GPU + tensorrt).
    fp16: fp16 graphs with fp32 islands (softmax, normalisation statistics), with overflow and accuracy figures.
    opset: ONNX opset (>= 18; at most what the installed onnx writes).
    check: measure ONNX Runtime vs PyTorch parity (and refuse to write the bundle when it fails the bounds).
    force: replace an existing `out` folder (only once the new bundle is complete).
    progress: print steps and the parity table.
    fp16_fallback: (with fp16) also keep each component's fp32 graph in the bundle (fp32/<component>.onnx,
        manifest models.<component>.fp32_file), so that `mousai generate --fp16-fallback` can re-run a step whose
        fp16 output is NaN/inf in fp32.
    The folder is written to a temp folder beside `out` and renamed into place: on any failure nothing is left.
    """
    from .bundle import build_bundle

    return build_bundle(checkpoint, out, engine=engine, fp16=fp16, opset=opset, check=check, force=force,
                        progress=progress, fp16_fallback=fp16_fallback)


__all__ = ["ExportError", "export_bundle"]
