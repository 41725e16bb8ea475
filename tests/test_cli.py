"""The typer app: params, init, and clean refusals (exit 2, one line, no traceback)."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cli import app

runner = CliRunner()


def test_params_paper_prints_counts():
    r = runner.invoke(app, ["params", "--config", "paper"])
    assert r.exit_code == 0, r.output
    lines = dict(line.split() for line in r.output.strip().splitlines())
    assert abs(int(lines["dmae"]) - 185e6) / 185e6 < 0.01
    assert abs(int(lines["generator"]) - 857e6) / 857e6 < 0.10


def test_params_unknown_config_is_one_clear_line():
    r = runner.invoke(app, ["params", "--config", "gigantic"])
    assert r.exit_code == 2
    assert "unknown config" in r.output and "Traceback" not in r.output


def test_init_writes_loadable_checkpoint_and_refuses_existing(tmp_path):
    from training.checkpoint import load_models

    out = tmp_path / "ckpt"
    r = runner.invoke(app, ["init", "--config", "tiny", "--out", str(out), "--seed", "3"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "dmae.safetensors", "generator.safetensors"]
    assert json.loads((out / "config.json").read_text())["meta"]["seed"] == 3
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert len(set(modes.values())) == 1, modes  # weights as readable as config.json (safetensors alone makes 0600)
    cfg, models = load_models(out)
    assert cfg.name == "tiny" and set(models) == {"dmae", "generator"}
    r = runner.invoke(app, ["init", "--config", "tiny", "--out", str(out)])
    assert r.exit_code == 2 and "exists" in r.output


def test_init_same_seed_same_weights(tmp_path):
    from training.checkpoint import load_weights

    for name in ("a", "b"):
        assert runner.invoke(app, ["init", "--out", str(tmp_path / name), "--seed", "7"]).exit_code == 0
    wa, wb = (load_weights(tmp_path / n, "dmae") for n in ("a", "b"))
    assert all((wa[k] == wb[k]).all() for k in wa)


def test_corrupt_checkpoint_is_refused_clearly(tmp_path):
    from training.checkpoint import CheckpointError, load_models

    out = tmp_path / "ckpt"
    assert runner.invoke(app, ["init", "--out", str(out)]).exit_code == 0
    data = (out / "dmae.safetensors").read_bytes()
    (out / "dmae.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_models(out)


@pytest.mark.parametrize("cmd", [[], ["generate", "--help"], ["export", "--help"], ["train", "--help"]])
def test_help_teaches(cmd):
    r = runner.invoke(app, cmd)
    assert r.exit_code in (0, 2)  # no-args shows help with exit 0 or 2 depending on click
    assert "Usage" in r.output
