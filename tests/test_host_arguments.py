"""Issue #19: HostRenderer checks every argument a DAW host passes (often from its audio thread); nothing blocks
forever and nothing is silently ignored. The render itself is tests/test_host.py's."""
from __future__ import annotations

import math
import time

import numpy as np
import pytest

from test_host import StubPipeline
from test_reliability import cases
from test_runtime import pipe, tiny  # noqa: F401


def _host(**kw):
    from mousai_runtime import HostRenderer

    return HostRenderer(StubPipeline(), **{"ring_seconds": 1.0, "max_block": 64, **kw})


@pytest.mark.parametrize("case, frames, match", cases([
    ("negative", -5, r"read frames must be between 0 and max_block = 64 frames, got -5"),
    ("too_many", 65, r"read frames must be between 0 and max_block = 64 frames, got 65"),
    ("float", 3.0, r"read frames must be an integer number of frames, got 3\.0"),
    ("bool", True, r"read frames must be an integer"),
    ("none", None, r"read frames must be an integer"),
]))
def test_read_refuses_bad_frame_counts_and_keeps_its_position(case, frames, match):
    """read(-5) used to move the read index backwards (repeat it and the render stalled for good)."""
    from mousai_runtime import InputError

    host = _host()
    host.start("ramp", 0.5)
    assert host.wait_ready(40, timeout=10)
    first, _ = host.read(10)
    assert list(first[0]) == list(range(1, 11))
    for _ in range(3):
        with pytest.raises(InputError, match=match):
            host.read(frames)
    block, _ = host.read(np.int64(10))  # numpy ints are frame counts too
    assert list(block[0]) == list(range(11, 21))  # the position did not move
    empty, _ = host.read(0)
    assert empty.shape == (2, 0)
    host.cancel()


def test_wait_ready_for_more_than_the_ring_is_refused_not_a_hang():
    """The ring holds 1,000 frames: waiting for 1,001 could never return while nothing reads."""
    from mousai_runtime import InputError

    host = _host()
    host.start("ramp", 5.0)
    t0 = time.monotonic()
    with pytest.raises(InputError, match=r"wait_ready frames must be between 0 and the ring's capacity = 1000 frames, got 1001"):
        host.wait_ready(host.capacity + 1)
    assert time.monotonic() - t0 < 1.0
    assert host.wait_ready(host.capacity, timeout=10)  # the whole ring: returns once it is full
    assert host.buffered_frames == host.capacity
    host.cancel()


@pytest.mark.parametrize("case, kwargs, match", cases([
    ("timeout_negative", {"timeout": -1}, r"timeout must be None or a finite number of seconds >= 0, got -1"),
    ("timeout_nan", {"timeout": math.nan}, r"timeout must be None or a finite number"),
    ("timeout_string", {"timeout": "5"}, r"timeout must be None or a finite number"),
    ("poll_zero", {"poll": 0}, r"poll must be a number of seconds in \(0, 1\]"),
    ("frames_negative", {"frames": -1}, r"wait_ready frames must be between 0"),
]))
def test_wait_ready_refuses_bad_arguments(case, kwargs, match):
    from mousai_runtime import InputError

    host = _host()
    with pytest.raises(InputError, match=match):
        host.wait_ready(**{"frames": 10, **kwargs})
    with pytest.raises(InputError, match=r"timeout must be"):
        host.wait(timeout=-1)
    with pytest.raises(InputError, match=r"timeout must be"):
        host.cancel(timeout=math.inf)


@pytest.mark.parametrize("case, kwargs, match", cases([
    ("misspelt_seed", {"sede": 3}, r"start\(\) got unknown keyword\(s\) \['sede'\] \('sede': did you mean 'seed'\?\)"),
    ("misspelt_steps", {"step": 3}, r"'step': did you mean 'steps'\?"),
    ("unknown", {"tempo": 120}, r"unknown keyword\(s\) \['tempo'\]; it takes steps, guidance, seed"),
]))
def test_start_refuses_unknown_keywords(case, kwargs, match):
    from mousai_runtime import InputError

    host = _host()
    with pytest.raises(InputError, match=match):
        host.start("ramp", 0.5, **kwargs)
    assert host.state == "idle" and host.wait(0) == "idle"  # nothing started


def test_start_passes_sampler_and_decoder_sampler_through(pipe):
    """They used to be dropped silently: the host render now equals the pipeline's with the same samplers, and an
    unknown sampler is refused in the caller's thread."""
    from mousai_runtime import HostRenderer, InputError

    kw = dict(steps=3, decoder_steps=3, seed=3, sampler="dpmpp-2m", decoder_sampler="ddim")
    want = pipe.generate("pads", 0.5, **kw)
    for other in ({**kw, "sampler": "ddim"}, {**kw, "decoder_sampler": "dpmpp-2m"}):
        assert not np.allclose(want, pipe.generate("pads", 0.5, **other))  # each changes the clip: the check can fail
    host = HostRenderer(pipe, ring_seconds=2.0, max_block=4096)
    host.start("pads", 0.5, **kw)
    assert host.wait(60) == "done", host.error
    got = np.concatenate([host.read(4096)[0].copy() for _ in range(-(-want.shape[-1] // 4096))], axis=1)
    np.testing.assert_array_equal(got[:, :want.shape[-1]], want)
    with pytest.raises(InputError, match=r"sampler must be one of ddim, dpmpp-2m, got 'euler'"):
        host.start("pads", 0.5, sampler="euler")


@pytest.mark.parametrize("case, kwargs, match", cases([
    ("ring_nan", {"ring_seconds": math.nan}, r"ring_seconds must be a number > 0 and <= 3600"),
    ("ring_zero", {"ring_seconds": 0}, r"ring_seconds must be a number > 0"),
    ("ring_huge", {"ring_seconds": 1e9}, r"ring_seconds must be a number > 0 and <= 3600, got 1000000000\.0"),
    ("ring_string", {"ring_seconds": "30"}, r"ring_seconds must be a number"),
    ("max_block_zero", {"max_block": 0}, r"max_block must be at least 1 frame"),
    ("max_block_float", {"max_block": 64.5}, r"max_block must be an integer"),
]))
def test_host_renderer_refuses_bad_construction(case, kwargs, match):
    from mousai_runtime import InputError

    with pytest.raises(InputError, match=match):
        _host(**kwargs)


def test_host_renderer_refuses_a_non_pipeline():
    from mousai_runtime import HostRenderer, InputError

    with pytest.raises(InputError, match=r"HostRenderer needs a mousai_runtime\.Pipeline, got NoneType"):
        HostRenderer(None)
