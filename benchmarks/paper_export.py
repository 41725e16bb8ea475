"""Export the paper-size generator step and decoder step (random weights, speed only) once, into a cache folder.

    python -m benchmarks.paper_export [--cache DIR] [--only generator|decoder]

Uses the bundle exporter's own per-component functions (mousai_export.onnx.export_generator / export_decoder), so
the graphs are the ones a paper-size bundle would hold; the generator (861M parameters, 3.4 GB fp32) is written
with external data. A component whose .onnx already exists is skipped. No text encoder (the paper's is T5-base, a
local folder): the generator step is fed random text states of the right shape.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .common import DEFAULT_CACHE


def build_models(seed: int = 0, which: tuple[str, ...] = ("generator", "decoder")):
    import torch

    from training.model.configs import paper
    from training.model.dmae import DMAE
    from training.model.generator import Generator

    cfg = paper()
    out = {"config": cfg}
    if "generator" in which:
        torch.manual_seed(seed)  # each model from the same seed alone: the same weights whatever `which` holds
        out["generator"] = Generator(cfg.generator).eval()
    if "decoder" in which:
        torch.manual_seed(seed)
        out["dmae"] = DMAE(cfg.dmae).eval()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", default=str(DEFAULT_CACHE / "paper"))
    ap.add_argument("--only", choices=["generator", "decoder"], default=None)
    a = ap.parse_args(argv)
    from mousai_export import onnx as ox

    cache = Path(a.cache)
    cache.mkdir(parents=True, exist_ok=True)
    which = (a.only,) if a.only else ("decoder", "generator")
    for comp in which:
        path = cache / f"{comp}.onnx"
        if path.exists():
            print(f"{path} exists: skipped", file=sys.stderr)
            continue
        t0 = time.perf_counter()
        m = build_models(which=(comp,))
        tmp = cache / f".{comp}.tmp"
        tmp.mkdir(exist_ok=True)
        if comp == "generator":
            e = ox.export_generator(m["generator"], tmp / "generator.onnx")
        else:
            e = ox.export_decoder(m["dmae"], tmp / "decoder.onnx")
        for f in e.files:
            (tmp / f).rename(cache / f)
        tmp.rmdir()
        n = sum(p.numel() for p in (m["generator"] if comp == "generator" else m["dmae"]).parameters())
        info = {"component": comp, "parameters": n, "files": e.files, "export_seconds": time.perf_counter() - t0}
        (cache / f"{comp}.json").write_text(json.dumps(info, indent=1))
        print(json.dumps(info), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
