"""The bake-off's frame-rate autoencoders: the latent contract, the STFT plumbing, phase retrieval, resumable state."""
import json
import math

import numpy as np
import pytest
import torch

from training import bakeoff
from training.eval import musicness
from training.model import framedec as fd


@pytest.mark.parametrize("name", sorted(bakeoff.CANDIDATES))
def test_candidates_keep_the_latent_contract_and_train(name):
    torch.manual_seed(0)
    model = bakeoff.CANDIDATES[name]()
    audio = torch.randn(2, 2, 8192) * 0.1
    z = model.encode(audio)
    assert z.shape == (2, 32, 8) and z.abs().max() <= 1
    loss, parts = model.loss(audio)
    loss.backward()
    assert math.isfinite(loss.item()) and "aux" in parts
    assert all(p.grad is not None for p in model.encoder.to_in.parameters())
    y = model.reconstruct(audio[:1])
    assert y.shape == (1, 2, 8192) and torch.isfinite(y).all()


def test_stft_round_trip_is_exact():
    x = torch.randn(1, 2, 4096, dtype=torch.float64)
    spec = fd.stft(x, 1024, 256)
    assert spec.shape == (1, 2, 513, 17)
    assert torch.allclose(fd.istft(spec, 1024, 256, 4096), x, atol=1e-10)


def test_spec_diffusion_frames_round_trip():
    dec = fd.SpecDiffusionDecoder(fd.SpecDiffusionConfig())
    spec = fd.stft(torch.randn(1, 2, 4096, dtype=torch.float64), 1024, 256)[..., :16]
    frames = dec.to_frames(spec)
    assert frames.shape == (1, 2 * 2 * 513, 16)
    assert torch.allclose(dec.from_frames(frames), spec, atol=1e-8)


def test_griffin_lim_recovers_the_notes_of_a_chord_from_its_magnitude():
    a = musicness.chord_sequence([[60, 64, 67], [65, 69, 72]], 1.0)
    x = torch.from_numpy(a)[None].double()
    log_mag = fd.log_magnitude(fd.stft(x, 2048, 256))
    y = fd.griffin_lim(log_mag, 2048, 256, x.shape[-1], iterations=32)[0].numpy()
    noise_phase = fd.griffin_lim(log_mag, 2048, 256, x.shape[-1], iterations=0)[0].numpy()
    assert musicness.agreement(a, y) > 0.8
    assert musicness.agreement(a, y) > musicness.agreement(a, noise_phase)


def test_chroma_target_matches_musicness():
    a = musicness.chord_sequence([[60, 64, 67], [62, 65, 69]], 0.5)
    t = fd.chroma_target(torch.from_numpy(a)[None], 1024)[0].numpy().T  # [frames, 12]
    ref = musicness.centred_log_chroma(musicness.chroma(a, hop=1024))[: len(t)]
    inner = slice(5, -5)  # the edges differ by padding (reflect here, zeros in musicness)
    assert np.allclose(t[inner], ref[inner], atol=0.05)


def test_if_phase_centre_advance_is_a_bin_centred_tones():
    """With zero deviation each bin advances as a tone at its centre frequency does in the real STFT."""
    dec = fd.IFPhaseDecoder(fd.PhaseDecoderConfig())
    k = 37
    t = torch.arange(48000, dtype=torch.float64)
    tone = torch.cos(2 * math.pi * k / 1024 * t)[None, None]
    phase = fd.stft(tone, 1024, 256)[0, 0, k, 4:-4].angle()
    assert float(fd.anti_wrap(phase.diff() - dec.centre[k].double()).max()) < 1e-6
    assert float(fd.anti_wrap(phase.diff() - dec.centre[k + 1].double()).min()) > 0.5  # the neighbour's is not


@pytest.mark.parametrize("name", ["mag", "wave"])
def test_state_round_trip(tmp_path, name):
    model, ema = bakeoff.CANDIDATES[name](), bakeoff.CANDIDATES[name]()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss, _ = model.loss(torch.randn(1, 2, 8192) * 0.1)
    loss.backward()
    opt.step()
    bakeoff.save_state(tmp_path, model, ema, opt, {"step": 1, "cpu_seconds": 2.0})
    model2, ema2 = bakeoff.CANDIDATES[name](), bakeoff.CANDIDATES[name]()
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-3)
    doc = bakeoff.load_state(tmp_path, model2, ema2, opt2)
    assert doc["step"] == 1 and json.loads((tmp_path / "state.json").read_text())["cpu_seconds"] == 2.0
    for (n, p), p2 in zip(model.named_parameters(), model2.parameters()):
        assert torch.equal(p, p2), n
    p0 = next(model.parameters())
    assert torch.equal(opt.state[p0]["exp_avg"], opt2.state[next(model2.parameters())]["exp_avg"])
