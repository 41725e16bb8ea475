"""Run the benchmarks of issue #7 and print their tables (markdown).

    python -m benchmarks.run --bundle BUNDLE --checkpoint CKPT [--paper-cache DIR] [--tables 1,2,3,4,5]
                             [--threads N] [--reps N] [--markdown OUT.md]

1: runtime (numpy + ORT) vs PyTorch eager, per component and end to end (needs --checkpoint, the bundle's source)
2: end-to-end RTF at 10 s and 60 s with the bundle's defaults (and the previous defaults)
3: wall time and peak RSS at 10 s, 60 s, 600 s (one fresh process per run)
4: time to first audio when streaming
5: paper-size generator and decoder steps, ORT vs eager, FLOPs vs the matmul peak (exports them into
   --paper-cache first if missing: python -m benchmarks.paper_export)
Also: python -m benchmarks.levers --bundle BUNDLE (threads, graph optimisation, int8, OpenVINO).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import DEFAULT_CACHE, machine_line, other_load


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="issue #7 benchmarks: prints markdown tables")
    ap.add_argument("--bundle", default=str(DEFAULT_CACHE / "tiny-bundle"))
    ap.add_argument("--checkpoint", default=str(DEFAULT_CACHE / "tiny-ckpt"))
    ap.add_argument("--paper-cache", default=str(DEFAULT_CACHE / "paper"))
    ap.add_argument("--tables", default="1,2,3,4,5")
    ap.add_argument("--threads", type=int, default=None,
                    help="intra-op threads for ORT and torch alike (default: the runtime's own choice, idle cores)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--lengths", default="10,60,600", help="table 3 lengths in seconds")
    ap.add_argument("--markdown", default=None, help="also append the tables to this file")
    a = ap.parse_args(argv)
    from mousai_runtime.backends import idle_cores

    threads = a.threads or idle_cores()
    want = {int(t) for t in a.tables.split(",") if t.strip()}
    head = f"machine: {machine_line()}\nstart: {other_load()}\nthreads: {threads} (ORT intra-op and torch alike)\n"
    print(head, flush=True)
    out = [head]
    from . import tables as T

    titles = {1: "Table 1: runtime vs PyTorch eager", 2: "Table 2: end-to-end RTF, default settings",
              3: "Table 3: scaling with length", 4: "Table 4: time to first audio (streaming)",
              5: "Table 5: paper-size models (random weights, speed only)"}
    for k in sorted(want):
        print(f"## {titles[k]}\n", flush=True)
        if k == 1:
            s = T.table1(a.bundle, a.checkpoint, threads, reps=a.reps)
        elif k == 2:
            s = T.table2(a.bundle, threads, reps=min(a.reps, 3))
        elif k == 3:
            s = T.table3(a.bundle, threads, lengths=tuple(float(x) for x in a.lengths.split(",")))
        elif k == 4:
            s = T.table4(a.bundle, threads, reps=min(a.reps, 3))
        else:
            if not (Path(a.paper_cache) / "generator.onnx").exists() or \
                    not (Path(a.paper_cache) / "decoder.onnx").exists():
                from .paper_export import main as export_main

                export_main(["--cache", a.paper_cache])
            s = T.table5(a.paper_cache, threads, reps=min(a.reps, 3))
        print(s + "\n", flush=True)
        out.append(f"## {titles[k]}\n\n{s}\n")
    if a.markdown:
        with open(a.markdown, "a") as f:
            f.write("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
