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

Every argument is checked (InputError, a ValueError, with one line): a negative or oversized read, a wait for more
frames than the ring holds (it could never return), a timeout that is not a finite number >= 0, and an unknown or
misspelt keyword to start() are refused, never ignored.
"""
from __future__ import annotations

import difflib
import math
import threading
import time
from typing import Any

import numpy as np

from .pipeline import Cancelled, CancelToken, InputError, Pipeline

IDLE, RUNNING, DONE, CANCELLED, FAILED = "idle", "running", "done", "cancelled", "failed"
START_KEYWORDS = ("steps", "guidance", "seed", "decoder_steps", "sampler", "decoder_sampler")
MAX_RING_SECONDS = 3600.0  # 1.4 GB of float32 stereo at 48 kHz
MAX_BLOCK = 1 << 20


def _frames(v: Any, what: str, top: int, top_name: str = "") -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise InputError(f"{what} must be an integer number of frames, got {v!r}")
    if not 0 <= v <= top:
        raise InputError(f"{what} must be between 0 and {top_name}{top} frames, got {v}")
    return int(v)


def _timeout(v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v) \
            or v < 0:
        raise InputError(f"timeout must be None or a finite number of seconds >= 0, got {v!r}")
    return float(v)


class HostRenderer:
    def __init__(self, pipeline: Pipeline, ring_seconds: float = 30.0, max_block: int = 8192):
        if not all(hasattr(pipeline, a) for a in ("sample_rate", "bundle", "stream", "check_inputs", "frames_for")):
            raise InputError(f"HostRenderer needs a mousai_runtime.Pipeline, got {type(pipeline).__name__}")
        if isinstance(ring_seconds, bool) or not isinstance(ring_seconds, (int, float, np.integer, np.floating)) \
                or not math.isfinite(ring_seconds) or not 0 < ring_seconds <= MAX_RING_SECONDS:
            raise InputError(f"ring_seconds must be a number > 0 and <= {MAX_RING_SECONDS:g}, got {ring_seconds!r}")
        max_block = _frames(max_block, "max_block", MAX_BLOCK)
        if max_block < 1:
            raise InputError("max_block must be at least 1 frame")
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
            unknown = sorted(set(kwargs) - set(START_KEYWORDS))
            if unknown:
                near = {k: difflib.get_close_matches(k, START_KEYWORDS, 1, 0.7) for k in unknown}
                hint = "; ".join(f"{k!r}: did you mean {m[0]!r}?" for k, m in near.items() if m)
                raise InputError(f"start() got unknown keyword(s) {unknown}" + (f" ({hint})" if hint else "") +
                                 f"; it takes {', '.join(START_KEYWORDS)}")
            steps, guidance, seed = kwargs.get("steps"), kwargs.get("guidance"), kwargs.get("seed", 0)
            p.check_inputs(prompt, seconds, steps, guidance, seed, kwargs.get("decoder_steps"))
            if hasattr(p, "samplers"):
                p.samplers(kwargs.get("sampler"), kwargs.get("decoder_sampler"))
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
        timeout = _timeout(timeout)
        self._cancel.cancel()
        if wait:
            self.wait(timeout)

    def wait(self, timeout: float | None = None) -> str:
        timeout = _timeout(timeout)
        t = self._thread
        if t is not None:
            t.join(timeout)
        return self._state

    def wait_ready(self, frames: int, timeout: float | None = None, poll: float = 0.005) -> bool:
        """Block (not on the audio thread!) until `frames` are buffered or the render ended. `frames` may be at
        most the ring's capacity: more could never be buffered, so that wait is refused instead of never
        returning."""
        frames = _frames(frames, "wait_ready frames", self.capacity, "the ring's capacity = ")
        timeout = _timeout(timeout)
        if isinstance(poll, bool) or not isinstance(poll, (int, float)) or not 0 < poll <= 1:
            raise InputError(f"poll must be a number of seconds in (0, 1], got {poll!r}")
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
            for block in self.pipeline.stream(prompt, seconds, progress=self._set_progress, cancel=cancel, **kwargs):
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
        if type(frames) is not int or not 0 <= frames <= self.max_block:  # the cheap test first: audio thread
            frames = _frames(frames, "read frames", self.max_block, "max_block = ")
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
