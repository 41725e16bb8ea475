"""Issue #19, data loss and escapes: paths read from files stay inside their folder, outputs never replace a
special file or their own input, and --force leaves nothing behind. docs/reliability.md lists each case.

Every refusal is checked for its exit code (CLI: 2) or exception, one line naming the problem, and for the file
system: what was there before is still there, byte for byte.
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from test_reliability import assert_refused, cases, cli, tree

SR = 48000


def snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every entry under folder: file bytes, or the kind of a non-file (a link keeps its target)."""
    out: dict[str, bytes | str] = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.is_symlink():
            out[rel] = "link->" + os.readlink(p)
        elif p.is_file():
            out[rel] = p.read_bytes()
        else:
            out[rel] = stat.filemode(os.lstat(p).st_mode)[0]
    return out


# ================================================================================================= paths from files


def _corpus_with_manifest(tmp_path: Path, files: object) -> tuple[Path, Path]:
    corpus, victim = tmp_path / "corpus", tmp_path / "victim.txt"
    corpus.mkdir()
    victim.write_text("precious")
    (corpus / "manifest.json").write_text(json.dumps({"version": 1, "files": files}))
    return corpus, victim


@pytest.mark.parametrize("case, files, match", cases([
    ("key_dotdot", {"../victim.txt": {"source": "midi"}}, r"refusing path '\.\./victim\.txt'"),
    ("key_absolute", {"ABS": {"source": "midi"}}, r"refusing path '/.*victim\.txt' \(absolute"),
    ("key_outside_audio", {"metadata.jsonl": {"source": "midi"}}, r"not an audio file record"),
    ("key_symlink_out", {"audio/link/victim.txt": {"source": "midi"}}, r"resolves outside"),
    ("entry_not_object", {"audio/midi/a.flac": 3}, r"not an audio file record"),
    ("files_a_list", ["audio/midi/a.flac"], r"not a corpus manifest"),
]))
def test_data_build_never_deletes_outside_the_corpus(tmp_path, case, files, match):
    """An existing manifest's keys are paths the build deletes as stale: each must be audio/... inside the corpus
    folder, or the build refuses (exit 2) before touching anything."""
    from training.data.corpus.build import CorpusError, build_corpus

    if case == "key_absolute":
        files = {str(tmp_path / "victim.txt"): {"source": "midi"}}
    corpus, victim = _corpus_with_manifest(tmp_path, files)
    if case == "key_symlink_out":
        (corpus / "audio").mkdir()
        (corpus / "audio" / "link").symlink_to(tmp_path)
    before = snapshot(tmp_path)
    assert_refused(cli("data", "build", corpus, "--sources", "midi"), match)
    with pytest.raises(CorpusError, match=match):
        build_corpus(corpus, ["midi"], progress=False, log=lambda m: None)
    assert victim.read_text() == "precious"
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("case, match", cases([
    ("onto_a_file", r"exists and is not a folder"),
    ("under_a_file", r"cannot create the corpus folder .*: Not a directory"),
    ("under_proc", r"cannot create the corpus folder /proc/.*"),
    ("manifest_not_json", r"unreadable .*manifest\.json .*move it away to rebuild"),
    ("manifest_not_utf8", r"unreadable .*manifest\.json"),
]))
def test_data_build_refuses_a_bad_target_in_one_line(tmp_path, case, match):
    target = {"onto_a_file": tmp_path / "f", "under_a_file": tmp_path / "f" / "corpus",
              "under_proc": Path("/proc/mousai-corpus")}.get(case, tmp_path / "corpus")
    (tmp_path / "f").write_text("a file")
    if case.startswith("manifest"):
        target.mkdir()
        (target / "manifest.json").write_bytes(b"{not json" if case == "manifest_not_json" else b'{"\xff": 1}')
    before = snapshot(tmp_path)
    assert_refused(cli("data", "build", target, "--sources", "midi"), match)
    assert snapshot(tmp_path) == before


def test_corpus_metadata_paths_stay_inside_the_corpus(tmp_path):
    """metadata.jsonl paths that climb out ('../', absolute) are malformed lines: the file outside is never read."""
    import soundfile as sf

    from training.data.dataset import AudioFolder

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    tone = np.sin(np.arange(SR) / SR * 2 * np.pi * 440).astype(np.float32) * 0.3
    sf.write(corpus / "in.wav", np.stack([tone, tone], 1), SR)
    sf.write(tmp_path / "outside.wav", np.stack([tone, tone], 1), SR)
    lines = [{"path": "in.wav"}, {"path": "../outside.wav"}, {"path": str(tmp_path / "outside.wav")}]
    (corpus / "metadata.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    with pytest.warns(UserWarning, match=r"ignored 2 malformed line"):
        folder = AudioFolder(corpus, split="all")
    assert [t.rel for t in folder.tracks] == ["in.wav"]


@pytest.mark.parametrize("shard", ["../../victim.safetensors", "/etc/hostname", None])
def test_latent_cache_shards_stay_inside_the_cache(tmp_path, shard):
    from training.train import TrainingError, _shard

    with pytest.raises(TrainingError, match=r"latent cache shard: refusing path .*delete the cache folder"):
        _shard(tmp_path, {"shard": shard})
    assert _shard(tmp_path, {"shard": "latent-ab.safetensors"}) == tmp_path / "latent-ab.safetensors"


def test_inside_resolves_links_before_checking(tmp_path):
    from mousai_runtime.files import UnsafePathError, inside

    (tmp_path / "box").mkdir()
    (tmp_path / "box" / "out").symlink_to(tmp_path)
    assert inside(tmp_path / "box", "a/b.flac") == tmp_path / "box" / "a" / "b.flac"
    for rel in ("out/x", "../x", "/x", "a//b", "a\\b", "", "C:x", 7):
        with pytest.raises(UnsafePathError):
            inside(tmp_path / "box", rel)


# ================================================================================================= special targets


def _special(tmp_path: Path, kind: str) -> Path:
    p = tmp_path / "out.wav"
    if kind == "fifo":
        os.mkfifo(p)
    elif kind == "device":
        if os.geteuid() != 0:
            pytest.skip("making a device node needs root")
        os.mknod(p, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a private /dev/null
    elif kind == "symlink":
        (tmp_path / "real.wav").write_bytes(b"real")
        p.symlink_to(tmp_path / "real.wav")
    elif kind == "dangling_symlink":
        p.symlink_to(tmp_path / "nowhere.wav")
    return p


@pytest.mark.parametrize("kind, match", cases([
    ("fifo", r"out\.wav is a FIFO \(named pipe\): refusing to replace it"),
    ("device", r"out\.wav is a device: refusing to replace it"),
    ("symlink", r"out\.wav is a symbolic link: refusing .*name the file it points to, .*real\.wav"),
    ("dangling_symlink", r"out\.wav is a symbolic link"),
]))
def test_generate_never_replaces_a_special_file(tmp_path, kind, match):
    """Refused before anything loads (the bundle does not even exist here); the special file stays what it was."""
    p = _special(tmp_path, kind)
    before = snapshot(tmp_path)
    assert_refused(cli("generate", "music", "-o", p, "--model", tmp_path / "no-bundle"), match)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("kind", ["fifo", "device", "symlink", "dangling_symlink"])
def test_atomic_write_refuses_special_targets(tmp_path, kind):
    from mousai_runtime.audio import AudioError, write_audio
    from mousai_runtime.files import UnsafePathError, atomic_write_text

    p = _special(tmp_path, kind)
    before = snapshot(tmp_path)
    with pytest.raises(UnsafePathError, match="refusing to replace it"):
        atomic_write_text(p, "x")
    with pytest.raises(AudioError, match="refusing to replace it"):
        write_audio(p, np.zeros((2, 100), np.float32), SR)
    assert snapshot(tmp_path) == before


def test_replacing_a_file_keeps_its_mode_and_leaves_hard_links_alone(tmp_path):
    """The new file takes the old one's permission bits; another hard link of the old file keeps the old bytes
    (the name gets a new file; the old inode is not written through)."""
    from mousai_runtime.audio import write_audio

    p, twin = tmp_path / "x.wav", tmp_path / "twin.wav"
    p.write_bytes(b"old")
    os.chmod(p, 0o640)
    os.link(p, twin)
    write_audio(p, np.full((2, 100), 0.25, np.float32), SR)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o640
    assert twin.read_bytes() == b"old" and p.read_bytes()[:4] == b"RIFF"
    assert sorted(os.listdir(tmp_path)) == ["twin.wav", "x.wav"]
    os.chmod(p, 0o604)  # and again: the mode of what is there now
    write_audio(p, np.zeros((2, 10), np.float32), SR)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o604


@pytest.mark.parametrize("case, out, match", cases([
    ("dash", "-", r"-o - would write a file named '-'"),
    ("name_300_chars", "a" * 296 + ".wav", r"output file name is 300 bytes long; this file system allows 255"),
]))
def test_generate_refuses_odd_output_names(tmp_path, monkeypatch, case, out, match):
    monkeypatch.chdir(tmp_path)
    assert_refused(cli("generate", "music", "-o", out, "--format", "wav", "--model", tmp_path / "nb"), match)
    assert tree(tmp_path) == []


# ================================================================================================= --out vs inputs


def _folder_with_file(p: Path, name: str = "weights.safetensors") -> Path:
    p.mkdir(parents=True)
    (p / name).write_bytes(b"precious weights")
    return p


@pytest.mark.parametrize("case, match", cases([
    ("out_is_source", r"--out .*src is the source checkpoint"),
    ("out_inside_source", r"--out .*src/sub lies inside the source checkpoint"),
    ("out_contains_source", r"--out .*top contains the source checkpoint"),
]))
def test_import_never_writes_over_its_source(tmp_path, case, match):
    src = _folder_with_file(tmp_path / "top" / "src")
    out = {"out_is_source": src, "out_inside_source": src / "sub", "out_contains_source": tmp_path / "top"}[case]
    before = snapshot(tmp_path)
    assert_refused(cli("import", "archisound", src, "--out", out, "--force"), match)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("case, match", cases([
    ("out_is_checkpoint", r"--out .*ckpt is the checkpoint"),
    ("out_contains_checkpoint", r"--out .*top contains the checkpoint"),
    ("out_inside_checkpoint", r"--out .*ckpt/b lies inside the checkpoint"),
]))
def test_export_never_writes_over_its_checkpoint(tmp_path, case, match):
    ck = _folder_with_file(tmp_path / "top" / "ckpt", "dmae.safetensors")
    out = {"out_is_checkpoint": ck, "out_contains_checkpoint": tmp_path / "top",
           "out_inside_checkpoint": ck / "b"}[case]
    before = snapshot(tmp_path)
    assert_refused(cli("export", ck, "--out", out, "--force", "--no-check"), match)
    assert snapshot(tmp_path) == before


def test_other_commands_never_write_over_their_inputs(tmp_path):
    """combine (which had no --force and replaced any folder), train, train-encoder, eval: each --out that is,
    contains or lies inside an input is refused before anything is read or written."""
    g = _folder_with_file(tmp_path / "g", "generator.safetensors")
    d = _folder_with_file(tmp_path / "d", "dmae.safetensors")
    corpus = _folder_with_file(tmp_path / "corpus", "metadata.jsonl")
    before = snapshot(tmp_path)
    assert_refused(cli("checkpoint", "combine", "--generator", g, "--dmae", d, "--out", g),
                   r"--out .*/g is the generator checkpoint")
    assert_refused(cli("checkpoint", "combine", "--generator", g, "--dmae", d, "--out", tmp_path),
                   r"contains the generator checkpoint")
    assert_refused(cli("train", "autoencoder", "--data", corpus, "--out", corpus / "run", "--steps", "1"),
                   r"--out .*corpus/run lies inside the corpus folder")
    assert_refused(cli("train", "generator", "--data", corpus, "--dmae", d, "--out", d, "--steps", "1"),
                   r"--out .*/d is the DMAE checkpoint")
    assert_refused(cli("checkpoint", "train-encoder", d, "--data", corpus, "--out", d),
                   r"--out .*/d is the checkpoint")
    assert_refused(cli("eval", "classifier", "--data", corpus, "--out", corpus / "clf"),
                   r"lies inside the corpus folder")
    assert snapshot(tmp_path) == before


def test_generate_never_writes_into_its_bundle(tmp_path):
    """Checked with the cheap checks, before the bundle is read."""
    b = _folder_with_file(tmp_path / "b", "manifest.json")
    before = snapshot(tmp_path)
    assert_refused(cli("generate", "music", "-o", b / "decoder.wav", "--model", b),
                   r"-o .*decoder\.wav lies inside the bundle folder")
    assert snapshot(tmp_path) == before


def test_train_out_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "run").write_text("not a folder")
    corpus = _folder_with_file(tmp_path / "corpus", "metadata.jsonl")
    assert_refused(cli("train", "autoencoder", "--data", corpus, "--out", tmp_path / "run", "--steps", "1"),
                   r"--out .*run is a file")
    assert (tmp_path / "run").read_text() == "not a folder"


# ================================================================================================= --force


@pytest.mark.parametrize("old", ["file", "folder"])
def test_force_over_an_existing_output_leaves_no_old_copy(tmp_path, old):
    """atomic_dir over a file or a folder: the new folder in place, no `.NAME.old-PID` (or temp) left."""
    from mousai_runtime.files import atomic_dir

    target = tmp_path / "out"
    if old == "file":
        target.write_text("old")
    else:
        _folder_with_file(target, "old.bin")
    atomic_dir(target, lambda tmp: (tmp / "new.bin").write_text("new"))
    assert tree(tmp_path) == ["out", "out/new.bin"]


@pytest.mark.parametrize("kind", ["fifo", "symlink"])
def test_atomic_dir_refuses_special_targets(tmp_path, kind):
    from mousai_runtime.files import UnsafePathError, atomic_dir

    target = tmp_path / "out"
    if kind == "fifo":
        os.mkfifo(target)
    else:
        _folder_with_file(tmp_path / "real")
        target.symlink_to(tmp_path / "real")
    before = snapshot(tmp_path)
    with pytest.raises(UnsafePathError, match="refusing to replace it"):
        atomic_dir(target, lambda tmp: (tmp / "new.bin").write_text("new"))
    assert snapshot(tmp_path) == before
