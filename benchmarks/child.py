"""One generation in a fresh process (for peak RSS): prints one JSON line {wall, peak_rss_mb, ...}.

    python -m benchmarks.child --bundle B --seconds 600 --threads 1 --mode generate|stream-wav
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from .common import peak_rss_mb, prompt_text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--mode", choices=["generate", "stream-wav"], default="generate")
    ap.add_argument("--chunk-seconds", type=float, default=None, help="longest decoder chunk (default: Pipeline's)")
    a = ap.parse_args(argv)
    from mousai_runtime import Pipeline

    pipe = Pipeline(a.bundle, threads=a.threads, **({"chunk_seconds": a.chunk_seconds} if a.chunk_seconds else {}))
    pipe.generate("warm-up", 1.0, seed=1)  # sessions allocated and touched once, as a long-running host would be
    loaded = peak_rss_mb()
    t0 = time.perf_counter()
    clip_mb = 0.0
    if a.mode == "generate":
        audio = pipe.generate(prompt_text(), a.seconds, seed=0)
        clip_mb = audio.nbytes / 2 ** 20
    else:
        import soundfile as sf

        with tempfile.TemporaryDirectory() as d:
            with sf.SoundFile(str(Path(d) / "out.wav"), "w", samplerate=pipe.sample_rate, channels=2,
                              subtype="FLOAT") as f:
                for block in pipe.stream(prompt_text(), a.seconds, seed=0):
                    f.write(block.T)
    wall = time.perf_counter() - t0
    print(json.dumps({"wall": wall, "peak_rss_mb": peak_rss_mb(), "rss_loaded_mb": loaded, "clip_mb": clip_mb,
                      "seconds": a.seconds, "mode": a.mode, "threads": pipe.backend.threads}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
