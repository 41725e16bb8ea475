"""Shared benchmark helpers: the machine line, interleaved timing with medians, peak RSS, markdown tables."""
from __future__ import annotations

import datetime as _dt
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

DEFAULT_CACHE = Path(os.environ.get("MOUSAI_BENCH_CACHE", Path.home() / ".cache" / "mousai" / "bench"))
SR = 48000


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16",
                                    "amx_int8") if f in have]
    except OSError:
        pass
    return []


def other_load() -> str:
    """The 1-minute load average and the busiest other processes (the benchmark competes with them)."""
    try:
        load = os.getloadavg()
    except OSError:
        return "load unknown"
    try:
        out = subprocess.run(["ps", "-eo", "pid,pcpu,args", "--sort=-pcpu"], capture_output=True, text=True,
                             timeout=5).stdout.splitlines()[1:6]
        me = os.getpid()
        busy = []
        for line in out:
            pid, pcpu, args = line.strip().split(None, 2)
            if int(pid) != me and float(pcpu) >= 20:
                busy.append(f"{float(pcpu):.0f}% {args[:70]}")
    except Exception:
        busy = []
    return f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}" + (f"; busy: {' | '.join(busy)}" if busy else "")


def machine_line() -> str:
    import onnxruntime

    try:
        import torch

        tv = f"torch {torch.__version__}"
    except ImportError:
        tv = "no torch"
    cores = os.cpu_count()
    return (f"{cpu_model()} ({', '.join(cpu_flags())}), nproc {len(os.sched_getaffinity(0))} ({cores} logical), "
            f"{_mem_gb():.0f} GB; Python {platform.python_version()}, numpy {np.__version__}, onnxruntime "
            f"{onnxruntime.__version__}, {tv}; {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}")


def _mem_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return int(line.split()[1]) / 1e6
    except OSError:
        pass
    return 0.0


def interleaved(contestants: Mapping[str, Callable[[], object]], reps: int = 5, warmup: int = 1,
                min_seconds: float = 0.0) -> dict[str, list[float]]:
    """Run every contestant `warmup` times, then `reps` rounds of all of them in turn (the order rotates each
    round, so none always runs after the same neighbour); returns wall seconds per contestant and round."""
    names = list(contestants)
    for _ in range(warmup):
        for n in names:
            contestants[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    t_start = time.perf_counter()
    r = 0
    while r < reps or time.perf_counter() - t_start < min_seconds:
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            gc.collect()
            t0 = time.perf_counter()
            contestants[n]()
            times[n].append(time.perf_counter() - t0)
        r += 1
    return times


def med(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def spread(xs: Sequence[float]) -> str:
    """'median (min-max, n)' in ms or s."""
    m = med(xs)
    unit, k = ("ms", 1e3) if m < 1 else ("s", 1.0)
    return f"{m * k:.1f} {unit} ({min(xs) * k:.1f}-{max(xs) * k:.1f}, n={len(xs)})"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    w = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(r)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (x + 2) for x in w) + "|"] + [line(r) for r in cells[1:]])


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(module: str, args: Sequence[str], timeout: float = 3600) -> dict:
    """Run `python -m module args` in a fresh process (its own peak RSS); it prints one JSON line last."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    p = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout,
                       env=env, cwd=root)
    if p.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed ({p.returncode}): {p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def matmul_peak(threads: int, n: int = 2048, reps: int = 7) -> float:
    """GFLOP/s of an n x n float32 matmul with torch (if installed) else numpy, at `threads` threads."""
    try:
        import torch

        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        a, b = torch.randn(n, n), torch.randn(n, n)
        fn = lambda: a @ b  # noqa: E731
    except ImportError:
        old = None
        a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
        b = a.T.copy()
        fn = lambda: a @ b  # noqa: E731
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    if old is not None:
        torch.set_num_threads(old)
    return 2 * n ** 3 / min(ts) / 1e9


def prompt_text() -> str:
    return "warm lo-fi hip hop with soft piano and vinyl crackle"


def run_child_code(code: str) -> str:
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    return p.stdout.strip().splitlines()[-1]
