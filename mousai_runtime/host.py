"""The DAW contract (in the spirit of Neutone Gen): background render, progress, cancel, and a pull API for the
audio callback.

    host = HostRenderer(pipeline)
    host.start("warm analog pads", seconds=30, seed=1)        # returns at once; renders on a worker thread
    host.wait_ready(preroll_frames)                           # (not on the audio thread)
    block, underruns = host.read(512)                         # on the audio thread, every callback

`read` never blocks, never takes a lock the worker holds, and allocates no audio memory: the worker (single producer)
writes into a preallocated ring buffer and then publishes its write index; the audio thread (single consumer) copies
what is there into a preallocated output buffer and publishes its read index. Each index is written by one thread
only; under the GIL an int store is atomic, and the producer publishes only after its copy. A read that the ring
cannot fill while the render is still running is an underrun: the rest of the block is silence and the count grows.
`block` is a view of the output buffer: copy it before the next read() if you keep it.
"""
from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from .pipeline import Cancelled, CancelToken, Pipeline

IDLE, RUNNING, DONE, CANCELLED, FAILED = "idle", "running", "done", "cancelled", "failed"


class HostRenderer:
    def __init__(self, pipeline: Pipeline, ring_seconds: float = 30.0, max_block: int = 8192):
        self.pipeline = pipeline
        self.sample_rate = pipeline.sample_rate
        self.channels = pipeline.bundle.channels
        self.capacity = max(int(ring_seconds * self.sample_rate), 2 * max_block)
        self.max_block = max_block
        self._ring = np.zeros((self.channels, self.capacity), dtype=np.float32)
        self._out = np.zeros((self.channels, max_block), dtype=np.float32)
        # producer-owned
        self._w = 0
        self._epoch = 0  # first frame index of the current render (the reader skips anything older)
        self._finished = True
        self._progress = 0.0
        self._state = IDLE
        self._error: BaseException | None = None
        # consumer-owned
        self._r = 0
        self._underruns = 0
        # control (start / cancel / wait); never taken by read()
        self._control = threading.Lock()
        self._thread: threading.Thread | None = None
        self._cancel = CancelToken()
        self._total = 0

    # ------------------------------------------------------------------------------------------ control side
    def start(self, prompt: str, seconds: float, **kwargs: Any) -> None:
        """Validate (InputError here, in the caller's thread) and start rendering on a worker thread."""
        with self._control:
            if self._thread is not None and self._thread.is_alive():
                raise RuntimeError("a render is already running: cancel() or wait() first")
            p = self.pipeline
            steps, guidance, seed = kwargs.get("steps"), kwargs.get("guidance"), kwargs.get("seed", 0)
            p.check_inputs(prompt, seconds, steps, guidance, seed, kwargs.get("decoder_steps"))
            _, self._total = p.frames_for(float(seconds))
            self._cancel = CancelToken()
            self._error = None
            self._progress = 0.0
            self._epoch = self._w  # the reader drops whatever is left of a previous render
            self._finished = False
            self._state = RUNNING
            self._thread = threading.Thread(target=self._work, args=(prompt, seconds, kwargs, self._cancel),
                                            name="mousai-render", daemon=True)
            self._thread.start()

    def cancel(self, wait: bool = True, timeout: float | None = 30.0) -> None:
        """Stop the render within one denoising step; buffered audio is dropped."""
        self._cancel.cancel()
        if wait:
            self.wait(timeout)

    def wait(self, timeout: float | None = None) -> str:
        t = self._thread
        if t is not None:
            t.join(timeout)
        return self._state

    def wait_ready(self, frames: int, timeout: float | None = None, poll: float = 0.005) -> bool:
        """Block (not on the audio thread!) until `frames` are buffered or the render ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.buffered_frames < frames and not self._finished:
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(poll)
        return self.buffered_frames >= frames or self._state == DONE

    @property
    def progress(self) -> float:
        return self._progress

    @property
    def state(self) -> str:
        return self._state

    @property
    def error(self) -> BaseException | None:
        return self._error

    @property
    def underruns(self) -> int:
        return self._underruns

    @property
    def buffered_frames(self) -> int:
        return self._w - max(self._r, self._epoch)

    @property
    def total_frames(self) -> int:
        return self._total

    # ------------------------------------------------------------------------------------------ worker side
    def _work(self, prompt: str, seconds: float, kwargs: dict, cancel: CancelToken) -> None:
        state = DONE
        try:
            kw = {k: v for k, v in kwargs.items() if k in ("steps", "guidance", "seed", "decoder_steps")}
            for block in self.pipeline.stream(prompt, seconds, progress=self._set_progress, cancel=cancel, **kw):
                self._push(block, cancel)
        except Cancelled:
            state = CANCELLED
        except BaseException as e:  # reported through .error / .state; the audio thread keeps getting silence
            self._error = e
            state = FAILED
        if state == CANCELLED:
            self._epoch = self._w  # drop what is buffered
        self._state = state
        self._finished = True  # published last: the reader relies on it

    def _set_progress(self, f: float) -> None:
        self._progress = f

    def _push(self, block: np.ndarray, cancel: CancelToken) -> None:
        n, off, cap = block.shape[-1], 0, self.capacity
        while off < n:
            w = self._w
            free = cap - (w - max(self._r, self._epoch))
            if free <= 0:
                if cancel.is_set():
                    raise Cancelled("cancelled")
                time.sleep(0.002)
                continue
            k = min(free, n - off)
            i = w % cap
            first = min(k, cap - i)
            self._ring[:, i:i + first] = block[:, off:off + first]
            if k > first:
                self._ring[:, :k - first] = block[:, off + first:off + k]
            self._w = w + k  # publish after the copy
            off += k

    # ------------------------------------------------------------------------------------------ audio thread
    def read(self, frames: int) -> tuple[np.ndarray, int]:
        """(block [channels, frames] float32 view of the output buffer, underruns so far). Never blocks."""
        if frames > self.max_block:
            raise ValueError(f"read({frames}) is larger than max_block {self.max_block}")
        out = self._out
        finished = self._finished  # read before _w: if finished, the _w read after it is final
        w = self._w
        r = self._r
        epoch = self._epoch
        if r < epoch:
            r = epoch
        n = w - r
        if n > frames:
            n = frames
        if n > 0:
            cap = self.capacity
            i = r % cap
            first = cap - i
            if first >= n:
                out[:, :n] = self._ring[:, i:i + n]
            else:
                out[:, :first] = self._ring[:, i:]
                out[:, first:n] = self._ring[:, :n - first]
        if n < frames:
            out[:, n:frames] = 0.0
            if not finished:
                self._underruns += 1
        self._r = r + n
        return out[:, :frames], self._underruns
