"""TEST HOOK: make one model call's output non-finite, to prove that NaN/inf detection and the fp16 -> fp32 fallback
work on the real code path. Nothing here is active unless a test turns it on:

    from mousai_runtime.faults import inject_nonfinite
    with inject_nonfinite("generator", call=2, precision="fp16"):     # Python API (process-wide)
        pipe.generate(...)

    MOUSAI_TEST_INJECT_NONFINITE="generator:2:fp16:nan"                # the same for a `mousai generate` subprocess

`component` is text_encoder, generator, encoder or decoder; `call` counts that component's model calls within one
render from 0 (a generator call is one denoising step, or one window batch of one step for long clips; decoder calls
run chunk by chunk, `decoder_steps` per chunk); `precision` is "fp16", "fp32" or "any" (the graph variant whose
output is corrupted: "fp16" leaves the fp32 fallback graph alone); the value is nan, inf or -inf. The hook sets ONE
element of the real engine output (a copy) to that value after the engine ran.
"""
from __future__ import annotations

import contextlib
import math
import os
import threading
from dataclasses import dataclass
from typing import Iterator

import numpy as np

ENV = "MOUSAI_TEST_INJECT_NONFINITE"
COMPONENTS = ("text_encoder", "generator", "encoder", "decoder")


@dataclass(frozen=True)
class Fault:
    component: str
    call: int
    precision: str = "any"  # fp16, fp32 or any
    value: float = math.nan

    def matches(self, component: str, call: int, precision: str) -> bool:
        return self.component == component and self.call == call and self.precision in ("any", precision)


_lock = threading.Lock()
_active: list[Fault] = []
_env_cache: tuple[str, tuple[Fault, ...]] = ("", ())


def parse(spec: str) -> tuple[Fault, ...]:
    """'generator:2[:fp16][:nan]' (comma-separated for several) -> Faults; ValueError on a malformed spec."""
    faults = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        bits = part.split(":")
        if len(bits) < 2 or len(bits) > 4 or bits[0] not in COMPONENTS:
            raise ValueError(f"{ENV}: expected component:call[:fp16|fp32|any][:nan|inf|-inf], got {part!r}")
        precision = bits[2] if len(bits) > 2 else "any"
        value = float(bits[3]) if len(bits) > 3 else math.nan
        if precision not in ("fp16", "fp32", "any") or math.isfinite(value):
            raise ValueError(f"{ENV}: bad precision or value in {part!r}")
        faults.append(Fault(bits[0], int(bits[1]), precision, value))
    return tuple(faults)


def active() -> tuple[Fault, ...]:
    global _env_cache
    spec = os.environ.get(ENV, "")
    if spec != _env_cache[0]:
        _env_cache = (spec, parse(spec))
    with _lock:
        return tuple(_active) + _env_cache[1]


def apply(component: str, call: int, precision: str, out: np.ndarray) -> np.ndarray:
    """The engine output, or a copy with one element made non-finite when a fault matches (test hook)."""
    for f in active():
        if f.matches(component, call, precision):
            out = np.array(out, dtype=np.float32, copy=True)
            out.reshape(-1)[out.size // 2] = f.value
            return out
    return out


@contextlib.contextmanager
def inject_nonfinite(component: str, call: int = 0, precision: str = "any",
                     value: float = math.nan) -> Iterator[Fault]:
    """TEST HOOK (process-wide while the block runs): corrupt `component`'s output at model call `call`."""
    if component not in COMPONENTS or precision not in ("fp16", "fp32", "any") or math.isfinite(value):
        raise ValueError("inject_nonfinite(component, call, precision fp16|fp32|any, value nan|inf|-inf)")
    fault = Fault(component, int(call), precision, float(value))
    with _lock:
        _active.append(fault)
    try:
        yield fault
    finally:
        with _lock:
            _active.remove(fault)
