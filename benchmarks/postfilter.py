"""What the envelope post-filter costs: decoding a generated latent with and without it, side by side in one run.

    python -m benchmarks.postfilter [--model engines/default] [--threads 1] [--reps 5]

Prints one markdown table: median wall time (min-max, n) of the decoder stage (bundle's decoder steps) for 10 s and
60 s, with and without the post-filter, the post-filter alone on the decoded audio, and the ratio.
"""
from __future__ import annotations

import argparse


from .common import interleaved, machine_line, med, other_load, spread, table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="engines/default")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--seconds", type=float, nargs="+", default=[10.0, 60.0])
    a = ap.parse_args(argv)
    from mousai_runtime import Pipeline

    on = Pipeline(a.model, threads=a.threads)
    off = Pipeline(a.model, threads=a.threads, postfilter=False)
    if on.postfilter is None:
        raise SystemExit(f"{a.model} has no post-filter")
    print(machine_line())
    print(other_load())
    rows = []
    for s in a.seconds:
        frames, samples = on.frames_for(s)
        latent = on.generate_latent("calm piano with soft strings", s, steps=2, seed=0)
        audio = off.decode(latent, seed=0, samples=samples)[None]
        t = interleaved({"with": lambda: on.decode(latent, seed=0, samples=samples),
                         "without": lambda: off.decode(latent, seed=0, samples=samples),
                         "alone": lambda: on.postfilter.apply(audio, latent)}, reps=a.reps)
        rows.append([f"{s:g} s", spread(t["without"]), spread(t["with"]), spread(t["alone"]),
                     f"{med(t['with']) / med(t['without']):.3f}", f"{med(t['alone']) / s:.4f}"])
    print(table(["clip", "decode without", "decode with post-filter", "post-filter alone",
                 "with / without", "post-filter RTF"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
