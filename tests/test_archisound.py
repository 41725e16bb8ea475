"""`mousai import archisound`: the authors' checkpoint layout -> a mousai checkpoint computing the same function."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from cli import app
from conftest import SHARED_REFERENCE

pytestmark = pytest.mark.skipif(not SHARED_REFERENCE.is_dir(), reason="shared/reference test vectors not present")
runner = CliRunner()


def rel_l2(a, b):
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def reference():
    return (load_file(str(SHARED_REFERENCE / "dmae_small_seed1_weights.safetensors")),
            load_file(str(SHARED_REFERENCE / "dmae_small_seed1_io.safetensors")))


def _check_same_function(ckpt, io):
    from training.checkpoint import load_models

    _, models = load_models(ckpt, components=("dmae",))
    dmae = models["dmae"]
    with torch.no_grad():
        assert rel_l2(dmae.encode(io["audio"]), io["latent"]) < 1e-4
        assert rel_l2(dmae.denoise(io["x_noisy"], io["sigma"], io["latent"]), io["v"]) < 1e-4
    return dmae


def test_import_hf_folder_with_prefix_and_aliases(tmp_path, reference):
    weights, io = reference
    src = tmp_path / "hf"
    src.mkdir()
    sd = {f"model.{k}": v for k, v in weights.items()}
    sd.update({f"model.diffusion.{k}": v.clone() for k, v in weights.items() if k.startswith("net.")})
    save_file(sd, str(src / "model.safetensors"))
    (src / "config.json").write_text(json.dumps({"architectures": ["DMAE1d"]}))
    r = runner.invoke(app, ["import", "archisound", str(src), "--out", str(tmp_path / "ckpt")])
    assert r.exit_code == 0, r.output
    dmae = _check_same_function(tmp_path / "ckpt", io)
    assert dmae.cfg.decoder.channels == [16, 32, 32, 32, 64, 64, 64]
    assert dmae.cfg.decoder.items == [1, 2, 2, 2, 2, 2, 2] and dmae.cfg.decoder.inject_depth == 4


def test_import_pickled_bin_uses_weights_only(tmp_path, reference):
    weights, io = reference
    src = tmp_path / "bin"
    src.mkdir()
    torch.save({f"sampler.{k}" if k.startswith("net.") else k: v for k, v in weights.items()},
               src / "pytorch_model.bin")
    r = runner.invoke(app, ["import", "archisound", str(src), "--out", str(tmp_path / "ckpt")])
    assert r.exit_code == 0, r.output
    _check_same_function(tmp_path / "ckpt", io)
    # a pickle that carries code is refused, not executed
    evil = tmp_path / "evil.bin"
    torch.save({"x": torch.zeros(1), "obj": _Evil()}, evil)
    r = runner.invoke(app, ["import", "archisound", str(evil), "--out", str(tmp_path / "e")])
    assert r.exit_code == 2 and "cannot read" in r.output and not (tmp_path / "e").exists()


class _Evil:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_incomplete_checkpoint_names_every_problem(tmp_path, reference):
    weights, _ = reference
    bad = dict(weights)
    bad.pop("encoder.to_out.bias")
    bad["net.extra.weight"] = torch.zeros(3)
    k = "net.blocks.2.blocks.2.net.block.blocks.1.block.blocks.0.blocks.0.2.weight"
    bad[k] = torch.zeros(1, 2, 3)
    save_file(bad, str(tmp_path / "bad.safetensors"))
    r = runner.invoke(app, ["import", "archisound", str(tmp_path / "bad.safetensors"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2, r.output
    assert "missing: encoder.to_out.bias" in r.output
    assert "unexpected: net.extra.weight" in r.output
    assert "shape mismatch" in r.output and not (tmp_path / "o").exists()
