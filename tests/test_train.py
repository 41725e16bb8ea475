"""Tests for training/train.py on a tiny synthetic corpus and a very small model (a step takes milliseconds)."""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

import training.checkpoint as checkpoint
import training.train as T
from training.checkpoint import load_models, read_config
from training.model.configs import ModelConfig, tiny
from training.data.dataset import RandomCrops
from training.model.dmae import DMAE

ROOT = Path(__file__).resolve().parents[1]
CROP = 2**13
FAST = dict(crop_length=CROP, batch_size=2, threads=1, sample_every=0, log_every=1, progress=False)


def small_config() -> ModelConfig:
    """tiny() with a handful of channels: ~0.1M parameters per model."""
    c = tiny()
    enc = dataclasses.replace(c.dmae.encoder, channels=16, num_blocks=[1, 1])
    dec = dataclasses.replace(c.dmae.decoder, patch_channels=16, channels=[16] * 5, factors=[1, 2, 2, 2, 2],
                              items=[1] * 5, attentions=[], cross_attentions=[], modulation_features=32, time_dim=16)
    gen = dataclasses.replace(c.generator.unet, channels=[16, 32], factors=[1, 2], items=[1, 1], attentions=[0, 1],
                              cross_attentions=[1, 1], attention_heads=2, attention_features=8,
                              modulation_features=32, time_dim=16)
    return ModelConfig(name="test", dmae=dataclasses.replace(c.dmae, encoder=enc, decoder=dec),
                       generator=dataclasses.replace(c.generator, unet=gen), text=c.text)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    meta = []
    for i, (f0, seconds) in enumerate([(220, 1.5), (330, 1.0), (440, 2.0)]):
        t = np.arange(int(48000 * seconds)) / 48000
        x = 0.3 * np.stack([np.sin(2 * np.pi * f0 * t), np.sin(2 * np.pi * 1.5 * f0 * t)], 1)
        sf.write(root / f"tone{i}.wav", x.astype(np.float32), 48000)
        meta.append({"path": f"tone{i}.wav", "title": f"tone {f0}", "genre": ["test", "sine"][i % 2]})
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(m) for m in meta) + "\n")
    return root


@pytest.fixture(scope="module")
def cfg_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "small.json"
    small_config().save(path)
    return path


def state_step(out: Path) -> int:
    return json.loads((out / "state" / "state.json").read_text())["step"]


def assert_same_tensors(a: Path, b: Path) -> None:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, f"{len(different)} tensors differ in {a.name}, e.g. {different[:3]}"


def run_cli(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def finish(p: subprocess.Popen, timeout: float = 120) -> str:
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, f"exit {p.returncode}\n{out}\n{err[-3000:]}"
    return out


# ---------------------------------------------------------------------------------------------------------------


def test_ema_decay_and_separate_ema_model():
    assert T.ema_decay(0) == 0.0
    assert T.ema_decay(10) == pytest.approx(1 - 11 ** -0.7)
    assert T.ema_decay(10**6) == 0.995
    a, b = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        a.weight.add_(1.0)
    T.ema_update(b, a, 0.75)
    assert torch.allclose(b.weight, a.weight - 0.75)
    assert b.weight.data_ptr() != a.weight.data_ptr()


def test_loss_falls_and_run_folder(corpus, cfg_file, tmp_path):
    out = tmp_path / "run"
    r = T.train("autoencoder", corpus, cfg_file, out, steps=20, lr=3e-3, ckpt_every=10, **FAST)
    assert r.step == 20 and state_step(out) == 20 and len(r.losses) == 20

    def held_out_loss(weights: dict | None) -> float:  # fixed crops, fixed noise: no sampling jitter
        torch.manual_seed(0)  # = the run's init (seed 0)
        model = DMAE(small_config().dmae)
        if weights is not None:
            model.load_state_dict(weights)
        audio = RandomCrops(corpus, CROP, seed=123, batch_size=8).batch(0)[0]
        torch.manual_seed(1)
        with torch.no_grad():
            return float(np.mean([float(model.loss(audio)) for _ in range(4)]))

    before, after = held_out_loss(None), held_out_loss(load_file(str(out / "state" / "model.safetensors")))
    assert after < 0.93 * before, f"loss did not fall: {before:.4f} -> {after:.4f}"
    config, models = load_models(out / "checkpoint", ("dmae",))
    _, meta = read_config(out / "checkpoint")
    assert meta["step"] == 20 and meta["ema"] is True
    # the checkpoint holds the EMA, which lags the raw weights
    raw = load_file(str(out / "state" / "model.safetensors"))
    ema = load_file(str(out / "state" / "ema.safetensors"))
    assert_same_tensors(out / "state" / "ema.safetensors", out / "checkpoint" / "dmae.safetensors")
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)
    log = (out / "train.log").read_text()
    assert "step 20 loss" in log and "grad_norm" in log and "steps/s" in log
    assert list((out / "tb").glob("events.out.tfevents.*"))
    # optimizer state round-trips through safetensors + JSON
    doc = json.loads((out / "state" / "state.json").read_text())
    assert doc["optimizer"]["param_groups"][0]["betas"] == [0.95, 0.999]
    assert doc["optimizer"]["param_groups"][0]["eps"] == 1e-6
    assert doc["optimizer"]["param_groups"][0]["weight_decay"] == 1e-3


def test_sample_written(corpus, cfg_file, tmp_path):
    out = tmp_path / "run"
    T.train("autoencoder", corpus, cfg_file, out, steps=2, ckpt_every=0,
            **{**FAST, "sample_every": 2, "log_every": 0}, sample_steps=2)
    for name in ("original.flac", "step-0000002.flac"):
        a, sr = sf.read(out / "samples" / name)
        assert sr == 48000 and a.shape == (CROP, 2)


def test_init_from_committed_checkpoint_continues_at_its_step(corpus, cfg_file, tmp_path):
    """A fresh machine has only the committed (fp16) EMA checkpoint: --init-from starts there, at its step."""
    first = tmp_path / "first"
    T.train("autoencoder", corpus, cfg_file, first, steps=2, ckpt_every=0, **{**FAST, "log_every": 0})
    committed = tmp_path / "committed"
    config, meta = read_config(first / "checkpoint")
    w = checkpoint.load_weights(first / "checkpoint", "dmae")
    checkpoint.save_checkpoint(committed, config, {"dmae": w}, meta, dtype=torch.float16)
    second = tmp_path / "second"
    r = T.train("autoencoder", corpus, cfg_file, second, steps=3, ckpt_every=0, init_from=committed,
                **{**FAST, "log_every": 0})
    assert r.step == 3 and len(r.losses) == 1  # started at the committed step 2, not from scratch
    assert read_config(second / "checkpoint")[1]["step"] == 3
    with pytest.raises(T.TrainingError, match="init-from"):
        T.train("autoencoder", corpus, cfg_file, tmp_path / "third", steps=3, init_from=tmp_path / "nothing",
                **{**FAST, "log_every": 0})
    # a combined checkpoint (engines/checkpoints/default): its own step is the generator's, its DMAE's is in meta
    combined = tmp_path / "combined"
    checkpoint.save_checkpoint(combined, config, {"dmae": w}, {**meta, "step": 1, "dmae": {**meta, "step": 2}})
    r = T.train("autoencoder", corpus, cfg_file, tmp_path / "fourth", steps=3, ckpt_every=0, init_from=combined,
                **{**FAST, "log_every": 0})
    assert r.step == 3 and len(r.losses) == 1  # from the DMAE's step 2, not the generator's 1


def test_kill_and_resume_is_bit_identical(corpus, cfg_file, tmp_path):
    """Uninterrupted N steps == SIGKILL mid-save after the state of step K, then --resume to N."""
    n, k = 6, 2
    common = ["--data", str(corpus), "--config", str(cfg_file), "--steps", str(n), "--ckpt-every", str(k),
              "--crop-length", str(CROP), "--batch-size", "2", "--threads", "1", "--sample-every", "0",
              "--no-progress", "--no-tensorboard"]
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    # the driver hangs inside the atomic write of the state after step K (one file written), so the kill lands
    # mid-save; the state of step K must survive it
    driver = tmp_path / "driver.py"
    driver.write_text(
        "import sys, time\nimport training.train as T\n"
        f"orig_state, orig_file = T.save_state, T.save_file\n"
        "def hang(*a, **k):\n    orig_file(*a, **k)\n    time.sleep(600)\n"
        f"def save_state(path, doc, *a):\n    if doc['step'] > {k}:\n        T.save_file = hang\n"
        "    return orig_state(path, doc, *a)\n"
        "T.save_state = save_state\nsys.exit(T.main(sys.argv[1:]))\n")
    p_ref = run_cli("-m", "training.train", "autoencoder", "--out", str(ref), *common)
    p_kill = run_cli(str(driver), "autoencoder", "--out", str(killed), *common)
    try:
        deadline = time.time() + 120
        while not ((killed / "state" / "state.json").is_file() and list(killed.glob(".state.tmp-*"))):
            assert p_kill.poll() is None, p_kill.communicate()[1][-3000:]
            assert time.time() < deadline, "the run never reached its second save"
            time.sleep(0.05)
        p_kill.send_signal(signal.SIGKILL)
        p_kill.wait(30)
    finally:
        p_kill.kill()
    assert p_kill.returncode == -signal.SIGKILL
    assert state_step(killed) == k
    assert (killed / "state" / "ema.safetensors").is_file()
    finish(run_cli("-m", "training.train", "autoencoder", "--out", str(killed), "--resume", *common))
    finish(p_ref)
    assert state_step(ref) == state_step(killed) == n
    assert not list(killed.glob(".state.*"))  # the half-written temp folder was cleaned up
    for f in ("model", "ema", "optimizer"):
        assert_same_tensors(ref / "state" / f"{f}.safetensors", killed / "state" / f"{f}.safetensors")
    assert_same_tensors(ref / "checkpoint" / "dmae.safetensors", killed / "checkpoint" / "dmae.safetensors")
    assert "resume autoencoder at step 2 -> 6" in (killed / "train.log").read_text()


def test_ddp_two_ranks_identical(corpus, cfg_file, tmp_path):
    out = tmp_path / "ddp"
    driver = tmp_path / "ddp_driver.py"
    driver.write_text(
        "import os, sys\nimport training.train as T\n"
        f"r = T.train('autoencoder', {str(corpus)!r}, {str(cfg_file)!r}, {str(out)!r}, steps=3, ckpt_every=3,"
        f" crop_length={CROP}, batch_size=2, threads=1, sample_every=0, log_every=1, progress=False,"
        " tensorboard=False)\n"
        f"open({str(tmp_path)!r} + f'/hash-{{os.environ[\"RANK\"]}}', 'w').write(r.weights_sha256)\n")
    finish(run_cli("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(driver)), 180)
    h0, h1 = (tmp_path / "hash-0").read_text(), (tmp_path / "hash-1").read_text()
    assert h0 == h1
    assert h0 == T.weights_sha256(load_file(str(out / "state" / "model.safetensors")))
    init = DMAE(small_config().dmae)
    assert h0 != T.weights_sha256(init.state_dict())  # trained
    log = (out / "train.log").read_text()
    assert log.count(" start ") == 1 and "world 2" in log  # only rank 0 writes
    assert json.loads((out / "state" / "state.json").read_text())["hparams"]["world_size"] == 2


def test_nan_loss_stops_without_saving(corpus, cfg_file, tmp_path, monkeypatch):
    out = tmp_path / "run"
    calls = {"n": 0}
    real = DMAE.loss

    def loss(self, audio):
        calls["n"] += 1
        value = real(self, audio)
        return value * float("nan") if calls["n"] == 4 else value

    monkeypatch.setattr(DMAE, "loss", loss)
    with pytest.raises(T.TrainingError, match=r"loss became nan at step 4; last good checkpoint: .*checkpoint \(step 2\)"):
        T.train("autoencoder", corpus, cfg_file, out, steps=6, ckpt_every=2, **FAST)
    assert state_step(out) == 2
    assert all(torch.isfinite(v).all() for v in load_file(str(out / "state" / "model.safetensors")).values())
    monkeypatch.setattr(DMAE, "loss", real)
    assert T.train("autoencoder", corpus, cfg_file, out, steps=3, resume=True, ckpt_every=2, **FAST).step == 3


@pytest.mark.parametrize("fail_in", ["checkpoint", "state"])
def test_disk_full_keeps_previous_checkpoint(corpus, cfg_file, tmp_path, monkeypatch, fail_in):
    out = tmp_path / "run"
    T.train("autoencoder", corpus, cfg_file, out, steps=2, ckpt_every=2, **FAST)
    before = {f: load_file(str(out / d / f)) for d, f in (("checkpoint", "dmae.safetensors"),
                                                          ("state", "model.safetensors"))}
    real = T.save_file

    def full_disk(tensors, filename, *a, **kw):
        real(tensors, filename, *a, **kw)
        with open(filename, "r+b") as fh:  # leave a truncated file behind, as a full disk would
            fh.truncate(os.path.getsize(filename) // 2)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(T if fail_in == "state" else checkpoint, "save_file", full_disk)
    expect = 4 if fail_in == "state" else 2
    with pytest.raises(T.TrainingError, match=rf"saving step 4 failed \(No space left on device\); "
                                              rf"last good checkpoint: .* \(step {expect}\)"):
        T.train("autoencoder", corpus, cfg_file, out, steps=4, resume=True, ckpt_every=2, **FAST)
    monkeypatch.undo()
    assert state_step(out) == 2
    assert_dict = load_file(str(out / "state" / "model.safetensors"))
    assert all(torch.equal(assert_dict[k], v) for k, v in before["model.safetensors"].items())
    _, models = load_models(out / "checkpoint", ("dmae",))  # loadable
    if fail_in == "checkpoint":
        assert all(torch.equal(models["dmae"].state_dict()[k], v) for k, v in before["dmae.safetensors"].items())
    assert not [p for p in out.iterdir() if p.name.startswith((".state.", ".checkpoint."))]
    assert T.train("autoencoder", corpus, cfg_file, out, steps=4, resume=True, ckpt_every=2, **FAST).step == 4


def test_bad_input_messages(corpus, cfg_file, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="unknown stage"):
        T.train("vocoder", corpus, cfg_file, tmp_path / "a", steps=1)
    with pytest.raises(ValueError, match="no audio files"):
        T.train("autoencoder", empty, cfg_file, tmp_path / "b", steps=1, **FAST)
    with pytest.raises(ValueError, match="unknown config"):
        T.train("autoencoder", corpus, "huge", tmp_path / "c", steps=1, **FAST)
    with pytest.raises(T.TrainingError, match="nothing to resume"):
        T.train("autoencoder", corpus, cfg_file, tmp_path / "d", steps=1, resume=True, **FAST)
    with pytest.raises(ValueError, match="needs dmae="):
        T.train("generator", corpus, cfg_file, tmp_path / "e", steps=1, **FAST)
    out = tmp_path / "run"
    T.train("autoencoder", corpus, cfg_file, out, steps=1, ckpt_every=1, **FAST)
    with pytest.raises(T.TrainingError, match=r"already holds a training run \(autoencoder, step 1\)"):
        T.train("autoencoder", corpus, cfg_file, out, steps=2, **FAST)
    with pytest.raises(T.TrainingError, match="uses another config"):
        T.train("autoencoder", corpus, "tiny", out, steps=2, resume=True, **FAST)
    with pytest.raises(T.TrainingError, match="holds a 'autoencoder' run, not 'generator'"):
        T.train("generator", corpus, None, out, steps=2, resume=True, **FAST)
    with pytest.raises(T.TrainingError, match="seed"):
        T.train("autoencoder", None, None, out, steps=2, resume=True, seed=5, **FAST)
    # resume with everything taken from the run folder
    assert T.train("autoencoder", None, None, out, steps=2, resume=True, progress=False).step == 2


def test_generator_stage_with_real_text_encoder(corpus, cfg_file, tmp_path):
    ae = tmp_path / "ae"
    T.train("autoencoder", corpus, cfg_file, ae, steps=1, ckpt_every=1, **FAST)
    out = tmp_path / "gen"
    r = T.train("generator", corpus, None, out, steps=3, ckpt_every=2, dmae=ae / "checkpoint",
                **{**FAST, "sample_every": 3}, sample_steps=2)
    assert r.step == 3 and all(np.isfinite(r.losses))
    config, models = load_models(out / "checkpoint")  # DMAE + generator: a complete model
    assert set(models) == {"dmae", "generator"} and config.name == "test"
    assert_same_tensors(ae / "checkpoint" / "dmae.safetensors", out / "checkpoint" / "dmae.safetensors")
    index = json.loads((out / "latent_cache" / "index.json").read_text())
    assert len(index["entries"]) == 3
    lat = load_file(str(out / "latent_cache" / next(iter(index["entries"].values()))["shard"]))["latent"]
    assert lat.shape[1:] == (32, CROP // 1024)
    shards = list((out / "text_cache").glob("text-*.safetensors"))
    assert shards
    cache = T.TextCache("default", 64, out / "text_cache", writer=False)
    assert cache.mem and all(s.shape == (64, 384) for s, _ in cache.mem.values())
    caption = next(iter(cache.mem))
    fresh = T.TextCache("default", 64, None, writer=False).get([caption])
    assert torch.equal(fresh[0][0], cache.mem[caption][0]) and torch.equal(fresh[1][0], cache.mem[caption][1])
    assert (out / "samples" / "step-0000003.flac").is_file()
    assert (out / "samples" / "step-0000003.txt").read_text().strip()
    # resume: the latent cache is reused, not re-encoded, the text states come from disk, and the weights match
    # a run that was never interrupted
    T.train("generator", corpus, None, out, steps=4, resume=True, **FAST)
    assert "latent cache: 0 file(s) encoded, 3 reused" in (out / "train.log").read_text()
    assert state_step(out) == 4
    ref = tmp_path / "gen-ref"
    T.train("generator", corpus, None, ref, steps=4, ckpt_every=0, dmae=ae / "checkpoint", **FAST)
    for f in ("model", "ema", "optimizer"):
        assert_same_tensors(ref / "state" / f"{f}.safetensors", out / "state" / f"{f}.safetensors")


def test_freeze_encoder_trains_the_decoder_only(corpus, cfg_file, tmp_path):
    T.train("autoencoder", corpus, cfg_file, tmp_path / "a", steps=2, **FAST)
    frozen = T.train("autoencoder", None, None, tmp_path / "a", steps=4, resume=True, freeze_encoder=True, **FAST)
    assert frozen.step == 4
    before = load_file(str(tmp_path / "a" / "checkpoint" / "dmae.safetensors"))
    doc = json.loads((tmp_path / "a" / "state" / "state.json").read_text())
    assert doc["hparams"]["freeze_encoder"] is True
    # a later resume without the flag keeps the run's own setting
    T.train("autoencoder", None, None, tmp_path / "a", steps=6, resume=True, **FAST)
    after = load_file(str(tmp_path / "a" / "checkpoint" / "dmae.safetensors"))
    enc = [k for k in before if k.startswith("encoder.")]
    dec = [k for k in before if k.startswith("decoder.")]
    assert enc and dec
    assert all(torch.equal(before[k], after[k]) for k in enc)
    assert sum(not torch.equal(before[k], after[k]) for k in dec) > len(dec) // 2
    _, meta6 = read_config(tmp_path / "a" / "checkpoint")
    assert meta6["encoder_sha256"] == T.weights_sha256({k[len("encoder."):]: v for k, v in after.items()
                                                        if k.startswith("encoder.")})


def test_freeze_encoder_is_for_the_autoencoder(corpus, cfg_file, tmp_path):
    with pytest.raises(ValueError, match="autoencoder stage only"):
        T.train("generator", corpus, cfg_file, tmp_path / "g", steps=1, freeze_encoder=True, dmae=tmp_path / "dmae",
                **FAST)


def test_short_captions_is_a_generator_run_setting(corpus, cfg_file, tmp_path):
    """Saved with the run and kept on --resume; refused for the DMAE (it reads no text) and out of [0, 1]; the
    latent crops cut that share of their captions, the other draws staying as they were."""
    with pytest.raises(ValueError, match="generator stage only"):
        T.train("autoencoder", corpus, cfg_file, tmp_path / "a", steps=1, short_captions=0.5, **FAST)
    with pytest.raises(ValueError, match="short_captions"):
        T.train("generator", corpus, cfg_file, tmp_path / "b", steps=1, short_captions=1.5, **FAST)
    ae = tmp_path / "ae"
    T.train("autoencoder", corpus, cfg_file, ae, steps=1, ckpt_every=1, **FAST)
    out = tmp_path / "gen"
    T.train("generator", corpus, None, out, steps=1, ckpt_every=0, dmae=ae / "checkpoint", short_captions=0.5, **FAST)
    T.train("generator", corpus, None, out, steps=2, resume=True, ckpt_every=0, **FAST)
    assert json.loads((out / "state" / "state.json").read_text())["hparams"]["short_captions"] == 0.5
    from training.data.dataset import AudioFolder

    folder = AudioFolder(corpus)
    latents = [torch.zeros(2, 32, 8) for _ in folder.tracks]
    items = [(k, i) for k in range(200) for i in range(2)]
    texts = {s: [T.LatentCrops(folder, latents, 0, short_captions=s).item(k, i)[1] for k, i in items]
             for s in (0.0, 1.0)}
    assert all(full.startswith(c) for full, c in zip(texts[0.0], texts[1.0]))
    fragments = {t.meta[k] for t in folder.tracks for k in ("title", "genre")}
    single = {s: np.mean([t in fragments for t in texts[s]]) for s in texts}
    # two fragments per track: one alone in ~19 % of draws by dropout; + 1/3 of the rest when every caption is cut
    assert single[0.0] < 0.27 and single[1.0] > 0.36, single


def test_sigterm_saves_the_step_and_exits_cleanly(corpus, cfg_file, tmp_path):
    """A background run (SIGINT ignored, as a shell's `cmd &` leaves it) stops on SIGTERM with its step saved."""
    out = tmp_path / "run"
    p = run_cli("-m", "training.train", "autoencoder", "--out", str(out), "--data", str(corpus), "--config",
                str(cfg_file), "--steps", "100000", "--ckpt-every", "0", "--crop-length", str(CROP), "--batch-size",
                "2", "--threads", "1", "--sample-every", "0", "--log-every", "1", "--no-progress",
                "--no-tensorboard", preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        deadline = time.time() + 120
        while not ((out / "train.log").is_file() and " step 3 " in (out / "train.log").read_text()):
            assert p.poll() is None, p.communicate()[1][-3000:]
            assert time.time() < deadline, "the run never reached step 3"
            time.sleep(0.05)
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 130, err
    assert "Traceback" not in err and "continue with --resume" in err
    assert state_step(out) >= 3  # ckpt_every 0: only the SIGTERM handler saved it


def test_interrupted_message_says_whether_there_is_anything_to_resume(corpus, cfg_file, tmp_path):
    """Stopped before its first save (e.g. while a generator encodes its latent cache) a run has nothing to
    resume, and the message must not send the user to --resume."""
    out = tmp_path / "run"
    out.mkdir()
    assert "nothing to resume" in T.interrupted_message(out) and "--resume" not in T.interrupted_message(out)
    T.train("autoencoder", corpus, cfg_file, out, steps=1, ckpt_every=1, **FAST)
    assert T.interrupted_message(out) == "interrupted: the last step is saved; continue with --resume"


def test_combine_pairs_a_generator_with_a_later_frozen_encoder_dmae(corpus, cfg_file, tmp_path):
    ae, gen = tmp_path / "ae", tmp_path / "gen"
    T.train("autoencoder", corpus, cfg_file, ae, steps=1, ckpt_every=1, **FAST)
    T.train("generator", corpus, None, gen, steps=1, dmae=ae / "checkpoint", **FAST)
    shutil.copytree(ae, tmp_path / "ae-unfrozen")
    T.train("autoencoder", None, None, ae, steps=3, resume=True, freeze_encoder=True, **FAST)
    out = checkpoint.combine(gen / "checkpoint", ae / "checkpoint", tmp_path / "both", dtype=torch.float16)
    _, models = load_models(out)
    later = load_file(str(ae / "checkpoint" / "dmae.safetensors"))
    mine = models["dmae"].state_dict()
    assert all(torch.equal(mine[k], later[k].half().float()) for k in later)  # the later decoder, in fp16
    assert any(not torch.equal(later[k], load_file(str(gen / "checkpoint" / "dmae.safetensors"))[k])
               for k in later if k.startswith("decoder."))
    # a combined checkpoint as the DMAE source (how the default is re-shipped): its DMAE's meta, not its generator's
    again = checkpoint.combine(gen / "checkpoint", out, tmp_path / "again")
    assert read_config(again)[1]["dmae"] == read_config(out)[1]["dmae"]
    assert read_config(again)[1]["dmae"]["stage"] == "autoencoder" and read_config(again)[1]["dmae"]["step"] == 3
    T.train("autoencoder", None, None, tmp_path / "ae-unfrozen", steps=3, resume=True, **FAST)
    with pytest.raises(checkpoint.CheckpointError, match="another encoder"):
        checkpoint.combine(gen / "checkpoint", tmp_path / "ae-unfrozen" / "checkpoint", tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_genre_balance_is_a_run_setting(corpus, cfg_file, tmp_path):
    """Saved with the run, kept on --resume, refused out of [0, 1]; it changes which crops a step sees."""
    out = tmp_path / "bal"
    T.train("autoencoder", corpus, cfg_file, out, steps=2, ckpt_every=0, genre_balance=1.0, **FAST)
    hp = json.loads((out / "state" / "state.json").read_text())["hparams"]
    assert hp["genre_balance"] == 1.0
    T.train("autoencoder", None, None, out, steps=3, resume=True, ckpt_every=0, **FAST)
    assert json.loads((out / "state" / "state.json").read_text())["hparams"]["genre_balance"] == 1.0
    with pytest.raises(ValueError, match="genre_balance"):
        T.train("autoencoder", corpus, cfg_file, tmp_path / "bad", steps=1, genre_balance=1.5, **FAST)
    from training.data.dataset import AudioFolder, sampling_cdf

    folder = AudioFolder(corpus)
    lengths = np.array([t.frames for t in folder.tracks])
    assert not np.allclose(sampling_cdf(folder.tracks, lengths, 1.0), sampling_cdf(folder.tracks, lengths, 0.0))
