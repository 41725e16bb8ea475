"""Issue #9, part 2: faults and load. SIGKILL during generate / export (training: tests/test_train.py
test_kill_and_resume_is_bit_identical), a full disk during generate / export / training (a real kernel failure: a
size-limited process via RLIMIT_FSIZE, so writes fail with EFBIG; and a tiny tmpfs, ENOSPC, where this machine lets
us mount one), and a soak: one Pipeline shared by 8 threads (50 generations each), cancel from another thread.

The child processes are the real CLI (`cli.app()`); where a test needs the child to stop at a precise point (in the
middle of denoising, of the file write, of the bundle write) a small driver wraps one function of the child to
create a marker file and sleep there, and the test SIGKILLs it. Nothing is mocked in the code path under test.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import ROOT
from test_runtime import tiny  # noqa: F401  (session fixture: the cached tiny bundle + checkpoint)

SR = 48000


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


LIMITED = r"""
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a write past the limit then fails with EFBIG instead of killing us
limit = int(sys.argv.pop(1))
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
import cli
sys.argv[0] = "mousai"
cli.app()
"""

HANG = r"""
import os, sys, time, pathlib
marker = pathlib.Path(sys.argv.pop(1))
where = sys.argv.pop(1)


def hang():
    marker.write_text(where)
    time.sleep(600)


if where == "denoising":  # the 2nd denoising step of the generator, whichever sampler the bundle names
    import mousai_runtime.sampling as S
    calls = [0]

    def hang_on_second(real):
        def step(*a, **k):
            calls[0] += 1
            if calls[0] == 2:
                hang()
            return real(*a, **k)
        return step

    S.UPDATES = {name: hang_on_second(update) for name, update in S.UPDATES.items()}
elif where in ("audio_write", "audio_write_named_temp"):  # after the first block is in the file
    import soundfile as sf
    if where == "audio_write_named_temp":  # as on a file system without O_TMPFILE
        import mousai_runtime.files as F
        F.open_unnamed = lambda folder: None
    real_write = sf.SoundFile.write

    def write(self, data):
        real_write(self, data)
        hang()

    sf.SoundFile.write = write
elif where == "bundle_write":  # the first graph is half-written inside the bundle's temp folder
    import mousai_export.onnx as ox

    def export_encoder(dmae, path, opset):
        pathlib.Path(path).write_bytes(b"half an onnx graph")
        hang()

    ox.export_encoder = export_encoder
import cli
sys.argv[0] = "mousai"
cli.app()
"""


def run_until_marker(code: str, marker: Path, args: list[str], timeout: float = 180) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", code, str(marker), *args], cwd=str(ROOT), env=env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while not marker.exists():
            if p.poll() is not None:
                out, err = p.communicate()
                raise AssertionError(f"the child ended (exit {p.returncode}) before the kill point:\n{err.decode()}")
            assert time.monotonic() < deadline, "the child never reached the kill point"
            time.sleep(0.02)
        p.send_signal(signal.SIGKILL)
        p.wait(30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()
        p.stderr.close()
    assert p.returncode == -signal.SIGKILL
    return p


def autoencoder_checkpoint(tiny, folder: Path) -> Path:  # noqa: F811
    """The tiny DMAE alone: exporting it skips the text encoder (seconds, not minutes)."""
    folder.mkdir(parents=True)
    for f in ("config.json", "dmae.safetensors"):
        shutil.copy(tiny["ckpt"] / f, folder / f)
    return folder


# ================================================================================================= SIGKILL


@pytest.mark.parametrize("where", ["denoising", "audio_write", "audio_write_named_temp"])
def test_sigkill_during_generate_leaves_no_partial_file(tiny, tmp_path, where):  # noqa: F811
    """Killed while denoising or in the middle of writing the file: the output folder holds exactly what it held
    before (here: a previous x.wav, byte for byte). Without O_TMPFILE the hidden temp file the kill leaves is
    removed by the next write into the folder."""
    out = tmp_path / "out"
    out.mkdir()
    old = (np.random.default_rng(0).standard_normal((SR, 2)) * 0.1).astype(np.float32)
    sf.write(out / "x.wav", old, SR, subtype="FLOAT")
    before = (out / "x.wav").read_bytes()
    run_until_marker(HANG, tmp_path / "marker", [where, "generate", "pads", "-o", str(out / "x.wav"), "--model",
                                                 str(tiny["bundle"]), "--seconds", "8", "--steps", "2"])
    left = tree(out)
    assert (out / "x.wav").read_bytes() == before
    if where != "audio_write_named_temp":
        assert left == ["x.wav"], left
        return
    stale = [n for n in left if n != "x.wav"]
    assert len(stale) == 1 and stale[0].startswith(".x.wav.") and stale[0].endswith(".tmp.wav"), left
    import mousai_runtime.audio as A
    import mousai_runtime.files as F

    real = F.open_unnamed
    try:
        F.open_unnamed = lambda folder: None
        A.write_audio(out / "x.wav", old.T * 0.5, SR)  # the next write into the folder
    finally:
        F.open_unnamed = real
    assert tree(out) == ["x.wav"]


def export_target(tiny, tmp_path, previous: bool):
    """A checkpoint to export and the bundle folder it goes to, holding a previous bundle (hard links) if asked;
    returns (checkpoint, engines dir, bundle dir, the previous bundle's bytes or None)."""
    ck = autoencoder_checkpoint(tiny, tmp_path / "ck")
    engines = tmp_path / "engines"
    engines.mkdir()
    out = engines / "mine"
    if previous:
        shutil.copytree(tiny["bundle"], out, copy_function=os.link)
    before = {p: p.read_bytes() for p in out.rglob("*")} if previous else None
    return ck, engines, out, before


@pytest.mark.parametrize("previous", [False, True], ids=["no_previous_bundle", "previous_bundle"])
def test_sigkill_during_export_leaves_no_bundle_or_the_previous_one(tiny, tmp_path, previous):  # noqa: F811
    from mousai_runtime import Bundle
    from mousai_runtime.files import atomic_dir

    ck, engines, out, before = export_target(tiny, tmp_path, previous)
    run_until_marker(HANG, tmp_path / "marker", ["bundle_write", "export", str(ck), "--out", str(out), "--no-check",
                                                 "--force"])
    names = [p.name for p in engines.iterdir()]
    temps = [n for n in names if n.startswith(".mine.tmp-")]
    assert len(temps) == 1 and (engines / temps[0] / "encoder.onnx").read_bytes() == b"half an onnx graph"
    if previous:
        assert sorted(names) == sorted(["mine", temps[0]])
        assert {p: p.read_bytes() for p in out.rglob("*")} == before
        Bundle.load(out)  # still a complete, verified bundle
    else:
        assert names == temps  # no bundle at all
    atomic_dir(engines / "mine", lambda tmp: (tmp / "f").write_text("x"))  # the next write of that bundle ...
    assert sorted(p.name for p in engines.iterdir()) == ["mine"]  # ... removes the dead writer's temp folder


# ================================================================================================= disk full


def test_disk_full_during_generate_size_limit(tiny, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    out.mkdir()
    r = subprocess.run([sys.executable, "-c", LIMITED, "200000", "generate", "pads", "-o", str(out / "x.wav"),
                        "--model", str(tiny["bundle"]), "--seconds", "2", "--steps", "1"],
                       capture_output=True, text=True, cwd=str(ROOT), env=env(), timeout=180)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines == [f"error: cannot write {out / 'x.wav'}: File too large (the file size limit is 200,000 bytes)"]
    assert tree(out) == []


@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_disk_full_during_generate_tmpfs(tiny, small_tmpfs):  # noqa: F811
    out = small_tmpfs / "x.wav"
    r = subprocess.run([sys.executable, "-c", "import sys, cli; sys.argv[0] = 'mousai'; cli.app()", "generate", "pads",
                        "-o", str(out), "--model", str(tiny["bundle"]), "--seconds", "4", "--steps", "1"],
                       capture_output=True, text=True, cwd=str(ROOT), env=env(), timeout=180)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [f"error: cannot write {out}: No space left on device"]
    assert tree(small_tmpfs) == []
    st = os.statvfs(small_tmpfs)
    assert st.f_bfree == st.f_blocks  # the space of the failed file was given back


@pytest.mark.parametrize("previous", [False, True], ids=["no_previous_bundle", "previous_bundle"])
def test_disk_full_during_export(tiny, tmp_path, previous):  # noqa: F811
    ck, engines, out, before = export_target(tiny, tmp_path, previous)
    r = subprocess.run([sys.executable, "-c", LIMITED, "100000", "export", str(ck), "--out", str(out), "--no-check",
                        "--force"], capture_output=True, text=True, cwd=str(ROOT), env=env(), timeout=300)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[-1] == f"error: cannot write the bundle {out}: File too large", r.stderr
    assert all(line.startswith("[") for line in lines[:-1]) and lines[-2].endswith(" failed"), r.stderr
    if previous:
        assert [p.name for p in engines.iterdir()] == ["mine"]
        assert {p: p.read_bytes() for p in out.rglob("*")} == before
    else:
        assert tree(engines) == []


def test_disk_full_during_training_keeps_the_last_checkpoint_and_resumes_exactly(tmp_path):
    import training.train as T
    from test_train import FAST, assert_same_tensors, small_config, state_step

    data = tmp_path / "data"
    data.mkdir()
    t = np.arange(SR * 2) / SR
    for i, f0 in enumerate((220, 330)):
        sf.write(data / f"tone{i}.wav", (0.3 * np.stack([np.sin(2 * np.pi * f0 * t)] * 2, 1)).astype(np.float32), SR)
    cfg = tmp_path / "small.json"
    small_config().save(cfg)
    out, ref = tmp_path / "run", tmp_path / "ref"
    T.train("autoencoder", data, cfg, out, steps=2, ckpt_every=2, **FAST)
    saved = {p.relative_to(out): p.read_bytes() for d in ("state", "checkpoint") for p in (out / d).rglob("*")}
    size = (out / "state" / "model.safetensors").stat().st_size
    limit = size // 2  # the logs fit, the next weights file does not
    args = ["train", "autoencoder", "--out", str(out), "--resume", "--steps", "4", "--ckpt-every", "2",
            "--crop-length", str(FAST["crop_length"]), "--batch-size", "2", "--threads", "1", "--sample-every", "0",
            "--no-progress"]
    r = subprocess.run([sys.executable, "-c", LIMITED, str(limit), *args], capture_output=True, text=True,
                       cwd=str(ROOT), env=env(), timeout=300)
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert re.fullmatch(rf"error: saving step 4 failed \(.*File too large.*\); last good checkpoint: "
                        rf"{re.escape(str(out / 'checkpoint'))} \(step 2\)", last), last
    assert {p.relative_to(out): p.read_bytes() for d in ("state", "checkpoint") for p in (out / d).rglob("*")} == saved
    assert not [p.name for p in out.iterdir() if p.name.startswith((".state.", ".checkpoint."))]
    # with room again, the run resumes from step 2 and reaches what an uninterrupted run reaches
    assert T.train("autoencoder", None, None, out, steps=4, resume=True, ckpt_every=2, **FAST).step == 4
    T.train("autoencoder", data, cfg, ref, steps=4, ckpt_every=2, **FAST)
    assert state_step(out) == state_step(ref) == 4
    for f in ("model", "ema", "optimizer"):
        assert_same_tensors(ref / "state" / f"{f}.safetensors", out / "state" / f"{f}.safetensors")


# ================================================================================================= soak


SOAK = r"""
import gc, hashlib, json, os, sys, threading
import numpy as np
from mousai_runtime import Cancelled, CancelToken, Pipeline

bundle, n_threads, per_thread, warm = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
pipe = Pipeline(bundle, chunk_seconds=3.0, text_cache=2)  # a 2-prompt text cache for 4 prompts: evictions + races
combos = [(p, s) for p in ("warm pads", "fast drums", "slow strings", "bright bells") for s in (0, 1, 2, -7)]
kw = dict(steps=2, decoder_steps=1)


def digest(prompt, seed):
    return hashlib.sha256(pipe.generate(prompt, 0.1, seed=seed, **kw).tobytes()).hexdigest()


def rss():
    gc.collect()
    try:  # hand freed heap pages back first, so that RSS measures live memory rather than allocator slack
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


ref = {c: digest(*c) for c in combos}  # single-threaded reference, one per (prompt, seed)
start_soak, end_warm = threading.Barrier(n_threads + 1), threading.Barrier(n_threads + 1)
lock = threading.Lock()
errors, mismatches, count = [], [], [0]


def worker(i):
    try:
        for phase, n in (("warm", warm), ("soak", per_thread)):
            for j in range(n):
                c = combos[(i * 5 + j * 3) % len(combos)]  # every thread walks the combos in another order
                if digest(*c) != ref[c]:
                    with lock:
                        mismatches.append([i, j, *c])
                with lock:
                    count[0] += 1
            if phase == "warm":
                end_warm.wait()
                start_soak.wait()
    except BaseException as e:
        errors.append(repr(e))
        end_warm.abort()
        start_soak.abort()


cancels = []


def cancel_victim_and_canceller(rounds):
    # one more thread renders long clips; this thread cancels each after a few steps and checks that at most the
    # model call in flight completes after the cancel (progress counts model calls)
    for r in range(rounds):
        token, calls, result = CancelToken(), [0], {}

        def progress(f):
            calls[0] += 1

        def victim():
            try:
                pipe.generate("a long one", 2.0, steps=200, decoder_steps=2, seed=r, progress=progress, cancel=token)
                result["raised"] = False
            except Cancelled:
                result["raised"] = True
            result["calls"] = calls[0]

        t = threading.Thread(target=victim)
        t.start()
        while calls[0] < 3 + r and t.is_alive():
            threading.Event().wait(0.001)
        token.cancel()
        at_cancel = calls[0]
        t.join(120)
        cancels.append([at_cancel, result.get("calls"), result.get("raised")])


threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
for t in threads:
    t.start()
end_warm.wait()
cancel_victim_and_canceller(1)  # the cancel victim's clip size is warmed up too
rss_warm = rss()
start_soak.wait()
cancel_victim_and_canceller(5)
for t in threads:
    t.join(600)
rss_end = rss()
assert not [m for m in sys.modules if m == "torch" or m.startswith("torch.")], "the runtime imported torch"
print(json.dumps({"rss_warm": rss_warm, "rss_end": rss_end, "errors": errors, "mismatches": mismatches,
                  "count": count[0], "cancels": cancels, "alive": sum(t.is_alive() for t in threads)}))
"""


def test_soak_8_threads_deterministic_flat_memory_and_cancel(tiny):  # noqa: F811
    """One Pipeline, 8 threads x 50 generations (after 20 each of warm-up), in a torch-free child process: no
    crash, every clip identical to the single-threaded clip of its (prompt, seed), RSS growth under 5 % after
    warm-up; meanwhile a ninth render is cancelled 5 times (+1 in the warm-up) from another thread and stops within one model call."""
    r = subprocess.run([sys.executable, "-c", SOAK, str(tiny["bundle"]), "8", "50", "20"], capture_output=True,
                       text=True, cwd=str(ROOT), env=env(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["errors"] == [] and res["alive"] == 0
    assert res["mismatches"] == [], res["mismatches"][:5]
    assert res["count"] == 8 * (50 + 20)
    growth = res["rss_end"] / res["rss_warm"] - 1
    assert growth < 0.05, f"RSS grew {growth:.1%} after warm-up ({res['rss_warm'] >> 20} -> {res['rss_end'] >> 20} MB)"
    assert len(res["cancels"]) == 6
    for at_cancel, at_end, raised in res["cancels"]:
        assert raised is True, res["cancels"]
        assert 0 <= at_end - at_cancel <= 1, res["cancels"]  # at most the call in flight finished
