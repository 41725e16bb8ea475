"""training/envelope_encoder.py: the encoder learns to carry the band envelope; the decoder is left untouched."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

import training.train as T
from training.checkpoint import read_config, save_checkpoint
from training.envelope_encoder import train_encoder
from training.model.dmae import DMAE

from test_train import small_config

SR = 48000


def shaped_noise(seed: int, seconds: float) -> np.ndarray:
    """Stereo noise whose loudness and brightness wander: an envelope worth encoding."""
    rng = np.random.default_rng(seed)
    n = int(SR * seconds)
    slow = np.interp(np.arange(n), np.linspace(0, n, 12), rng.uniform(0.05, 1.0, 12))
    cut = np.interp(np.arange(n), np.linspace(0, n, 12), rng.uniform(0.02, 0.9, 12))
    white = rng.standard_normal((2, n))
    low = white.copy()
    for i in range(1, n):  # one-pole low-pass whose corner moves: brightness changes over time
        low[:, i] = low[:, i - 1] + cut[i] * (white[:, i] - low[:, i - 1])
    return (0.3 * slow * low).astype(np.float32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("envcorpus")
    meta = []
    for i in range(5):
        sf.write(root / f"n{i}.wav", shaped_noise(i, 3.0).T, SR)
        meta.append({"path": f"n{i}.wav", "genre": "noise", **({"split": "holdout"} if i == 4 else {})})
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(m) for m in meta) + "\n")
    return root


def test_encoder_learns_the_envelope_and_the_decoder_is_kept(corpus, tmp_path):
    cfg = small_config()
    torch.manual_seed(0)
    src = save_checkpoint(tmp_path / "src", cfg, {"dmae": DMAE(cfg.dmae).state_dict()}, {"stage": "autoencoder",
                                                                                      "step": 7})
    out = tmp_path / "new"
    info = train_encoder(src, corpus, out, steps=80, batch_size=4, crop_length=2 ** 14, lr=3e-3, eval_every=40,
                         val_seconds=1.0, log=lambda m: None)
    r2 = [h["val_r2"] for h in info["history"]]
    assert [h["step"] for h in info["history"]] == [0, 40, 80]
    assert r2[-1] > 0.4 and r2[-1] > r2[0] + 0.8, r2  # the untrained head is worse than the mean (R^2 < 0)

    old, new = load_file(str(src / "dmae.safetensors")), load_file(str(out / "dmae.safetensors"))
    assert old.keys() == new.keys()
    changed = {k for k in old if not torch.equal(old[k], new[k])}
    assert changed and all(k.startswith("encoder.") for k in changed)  # every decoder tensor kept bit for bit
    _, meta = read_config(out)
    assert meta["step"] == 7 and meta["envelope_encoder"]["steps"] == 80
    assert meta["encoder_sha256"] == T.weights_sha256({k[len("encoder."):]: v for k, v in new.items()
                                                       if k.startswith("encoder.")})

    # the decoder then trains on with that encoder frozen, from the source's step
    r = T.train("autoencoder", corpus, out, tmp_path / "run", steps=9, crop_length=2 ** 13, batch_size=2, threads=1,
                sample_every=0, log_every=1, progress=False, ckpt_every=0, init_from=out, freeze_encoder=True)
    assert r.step == 9
    ran = load_file(str(tmp_path / "run" / "checkpoint" / "dmae.safetensors"))
    assert all(torch.equal(ran[k], new[k]) for k in new if k.startswith("encoder."))


def test_bad_input_writes_nothing(corpus, tmp_path):
    with pytest.raises(ValueError, match="multiple of the latent hop"):
        cfg = small_config()
        src = save_checkpoint(tmp_path / "src", cfg, {"dmae": DMAE(cfg.dmae).state_dict()}, {})
        train_encoder(src, corpus, tmp_path / "new", steps=1, crop_length=1000, log=lambda m: None)
    assert not (tmp_path / "new").exists()
