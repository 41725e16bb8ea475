"""The DAW contract: a simulated host pulls 512-frame blocks at 48 kHz in real time from a background render.

read() must never block (no lock the worker holds, no waiting), never allocate audio buffers, keep the order of
samples exactly, and count an underrun whenever it cannot fill a block while the render is still running.
"""
from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from test_runtime import tiny  # noqa: F401  (session fixture: the cached tiny bundle)

SR = 48000
BLOCK = 512


def test_simulated_host_realtime_no_underruns(tiny):  # noqa: F811
    from mousai_runtime import HostRenderer, Pipeline

    p = Pipeline(tiny["bundle"], chunk_seconds=4.0)
    host = HostRenderer(p, ring_seconds=8.0)
    seconds, kw = 6.0, dict(steps=4, decoder_steps=3, seed=7)
    expected = p.generate("slow strings", seconds, **kw)
    t0 = time.perf_counter()
    host.start("slow strings", seconds, **kw)
    assert host.wait_ready(SR // 2, timeout=120), host.error
    first_audio = time.perf_counter() - t0
    total = round(seconds * SR)
    got = np.zeros((2, total), np.float32)
    pos, durations, underruns = 0, [], 0
    period = BLOCK / SR
    deadline = time.perf_counter()
    while pos < total:
        deadline += period
        delay = deadline - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        t = time.perf_counter()
        block, underruns = host.read(BLOCK)
        durations.append(time.perf_counter() - t)
        n = min(BLOCK, total - pos)
        got[:, pos:pos + n] = block[:, :n]
        pos += n
    assert host.wait(30) == "done" and host.progress == 1.0
    d = np.sort(np.array(durations))
    print(f"host: first audio after {first_audio:.2f} s, {len(d)} reads, underruns {underruns}, read() median "
          f"{d[len(d) // 2] * 1e6:.0f} us, p99 {d[int(len(d) * 0.99)] * 1e6:.0f} us, max {d[-1] * 1e6:.0f} us")
    assert underruns == 0
    assert np.array_equal(got, expected)  # every sample, in order, through the ring
    assert d[len(d) // 2] < 1e-3
    block, after = host.read(BLOCK)  # past the end: silence, and not an underrun
    assert after == 0 and not block.any()


class StubPipeline:
    """Duck-typed Pipeline: streams the ramp 1, 2, 3, ... in blocks of random size, slowly if asked."""

    def __init__(self, sample_rate=1000, block_delay=0.0, fail_at=None):
        self.sample_rate = sample_rate
        self.bundle = SimpleNamespace(channels=2)
        self.block_delay, self.fail_at = block_delay, fail_at

    def check_inputs(self, prompt, seconds, *a):
        if not prompt:
            from mousai_runtime import InputError

            raise InputError("the prompt is empty")

    def frames_for(self, seconds):
        n = round(seconds * self.sample_rate)
        return n // 16 + 1, n

    def stream(self, prompt, seconds, progress=None, cancel=None, **kw):
        from mousai_runtime import Cancelled

        n = round(seconds * self.sample_rate)
        rng = np.random.default_rng(0)
        pos = 0
        while pos < n:
            if cancel is not None and cancel.is_set():
                raise Cancelled("cancelled")
            if self.fail_at is not None and pos >= self.fail_at:
                raise RuntimeError("engine exploded")
            k = int(min(n - pos, rng.integers(1, 700)))
            ramp = np.arange(pos + 1, pos + k + 1, dtype=np.float32)
            time.sleep(self.block_delay)
            yield np.stack([ramp, -ramp])
            pos += k
            if progress:
                progress(pos / n)


def test_ring_buffer_keeps_every_sample_in_order_across_wraps():
    from mousai_runtime import HostRenderer

    host = HostRenderer(StubPipeline(), ring_seconds=0.3, max_block=64)  # 300-frame ring: many wraps
    assert host.capacity == 300
    host.start("ramp", 20.0)
    rng = np.random.default_rng(1)
    got = []
    while True:
        block, _ = host.read(int(rng.integers(1, 65)))
        got.append(block[0][block[0] != 0].copy())
        assert np.array_equal(block[1], -block[0])
        if host.state == "done" and host.buffered_frames == 0:
            break
        time.sleep(0.0002 * rng.integers(0, 3))
    values = np.concatenate(got)
    assert np.array_equal(values, np.arange(1, 20001, dtype=np.float32))


def test_read_never_blocks_while_the_worker_holds_its_lock_or_stalls():
    from mousai_runtime import HostRenderer

    host = HostRenderer(StubPipeline(block_delay=1.0), ring_seconds=1.0, max_block=BLOCK)
    host.start("slow", 5.0)
    result = {}

    def reader():
        t = time.perf_counter()
        for _ in range(50):
            block, und = host.read(BLOCK)
        result["t"] = time.perf_counter() - t
        result["und"] = und
        result["silent"] = not block.any()

    with host._control:  # as if the control side held its lock for a long time
        th = threading.Thread(target=reader)
        th.start()
        th.join(2.0)
        assert not th.is_alive(), "read() blocked"
    assert result["t"] < 0.5 and result["und"] == 50 and result["silent"]  # stalled worker: 50 underruns, silence
    host.cancel(timeout=5)
    assert host.state == "cancelled"


def test_read_does_not_allocate_audio_buffers():
    from mousai_runtime import HostRenderer

    host = HostRenderer(StubPipeline(), ring_seconds=1.0, max_block=BLOCK)
    host.start("ramp", 0.5)
    host.wait(10)
    b1, _ = host.read(256)
    b2, _ = host.read(BLOCK)
    assert np.shares_memory(b1, host._out) and np.shares_memory(b2, host._out)
    with pytest.raises(ValueError, match="max_block"):
        host.read(BLOCK + 1)


def test_cancel_is_prompt_and_drops_buffered_audio():
    from mousai_runtime import HostRenderer

    host = HostRenderer(StubPipeline(block_delay=0.05), ring_seconds=100.0)
    host.start("x", 60.0)
    assert host.wait_ready(100, timeout=10)
    t = time.perf_counter()
    host.cancel()
    assert time.perf_counter() - t < 0.5 and host.state == "cancelled"
    assert host.buffered_frames == 0
    block, und = host.read(BLOCK)
    assert not block.any() and host.read(BLOCK)[1] == und  # finished: silence is not an underrun
    host.start("again", 0.2)  # a new render after a cancel
    assert host.wait(10) == "done"
    got, _ = host.read(200)
    assert np.array_equal(got[0], np.arange(1, 201, dtype=np.float32))


def test_worker_errors_are_reported_not_raised_in_the_audio_thread():
    from mousai_runtime import HostRenderer, InputError

    host = HostRenderer(StubPipeline(fail_at=2000), ring_seconds=10.0)
    with pytest.raises(InputError):
        host.start("", 1.0)  # bad input: raised at once, in the caller's thread
    host.start("x", 5.0)
    assert host.wait(10) == "failed" and "exploded" in str(host.error)
    for _ in range(10):
        block, und = host.read(BLOCK)
    assert und == 0  # whatever was rendered plays; then silence
    with pytest.raises(RuntimeError, match="already running"):
        h2 = HostRenderer(StubPipeline(block_delay=0.2), ring_seconds=10.0)
        h2.start("x", 5.0)
        try:
            h2.start("y", 5.0)
        finally:
            h2.cancel()


def test_real_render_cancel_within_one_step(tiny):  # noqa: F811
    from mousai_runtime import HostRenderer, Pipeline

    p = Pipeline(tiny["bundle"], chunk_seconds=4.0)
    host = HostRenderer(p)
    host.start("x", 20.0, steps=200, decoder_steps=3)
    while host.progress == 0.0 and host.state == "running":
        time.sleep(0.01)
    t = time.perf_counter()
    host.cancel()
    took = time.perf_counter() - t
    print(f"cancel took {took * 1000:.0f} ms")
    assert host.state == "cancelled" and took < 2.0
