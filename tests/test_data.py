"""Fast tests of the data pipeline (no corpus, no downloads: audio is synthesised into tmp_path)."""

from __future__ import annotations

from collections import Counter

import json
import os
import warnings

import numpy as np
import pytest
import soundfile as sf

torch = pytest.importorskip("torch")

from training.data.audio import AudioError, info, load_audio, save_flac, to_stereo  # noqa: E402
from training.data.dataset import (  # noqa: E402
    AudioFolder,
    RandomCrops,
    caption_from_metadata,
    text_from_filename,
)

SR = 48000


def sine(freq=440.0, seconds=1.0, sr=SR, channels=1, amp=0.5):
    t = np.arange(int(seconds * sr)) / sr
    x = amp * np.sin(2 * np.pi * freq * t)
    return np.stack([x * (1.0 - 0.5 * c / max(1, channels - 1)) for c in range(channels)], axis=1).astype(np.float32)


def write(path, data, sr=SR):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, sr)
    return path


def corrupt(path, content=b"this is not audio at all " * 40):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def record_warnings(fn):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out = fn()
    return out, [str(x.message) for x in w]


# ------------------------------------------------------------------------------------------------- audio
def test_load_resamples_and_duplicates_mono(tmp_path):
    p = write(tmp_path / "mono.wav", sine(1000.0, 1.0, sr=44100)[:, 0], sr=44100)
    x = load_audio(p, sr=SR)
    assert x.dtype == np.float32 and x.ndim == 2 and x.shape[0] == 2
    assert abs(x.shape[1] - SR) <= 2
    np.testing.assert_array_equal(x[0], x[1])
    spec = np.abs(np.fft.rfft(x[0, 1000:-1000]))
    freq = np.argmax(spec) * SR / (x.shape[1] - 2000)
    assert abs(freq - 1000.0) < 3.0  # resampled, not just relabelled
    assert 0.45 < np.max(np.abs(x)) < 0.55


def test_multichannel_folds_down_to_stereo(tmp_path):
    six = np.zeros((SR // 10, 6), dtype=np.float32)
    six[:, 0] = 0.5  # front left only
    six[:, 2] = 0.2  # centre
    x = load_audio(write(tmp_path / "51.wav", six), sr=SR)
    assert x.shape[0] == 2
    assert x[0].mean() > x[1].mean() > 0  # left louder, centre in both
    assert np.max(np.abs(x)) <= 1.0
    assert to_stereo(np.ones((3, 4), np.float32)).shape == (2, 4)


def test_corrupt_file_raises_audio_error(tmp_path):
    bad = corrupt(tmp_path / "bad.wav")
    with pytest.raises(AudioError):
        load_audio(bad)
    with pytest.raises(AudioError):
        info(bad)
    with pytest.raises(AudioError):
        load_audio(tmp_path / "missing.flac")


def test_save_flac_atomic_roundtrip(tmp_path):
    a = np.stack([sine(300, 0.5)[:, 0], -sine(300, 0.5)[:, 0]])
    p = save_flac(tmp_path / "sub" / "x.flac", a, SR)
    save_flac(p, a * 0.5, SR)  # overwrite in place
    assert sorted(os.listdir(p.parent)) == ["x.flac"]  # no temp files left behind
    y, sr = sf.read(str(p), dtype="float32")
    assert sr == SR and y.shape == (a.shape[1], 2)
    np.testing.assert_allclose(y.T, a * 0.5, atol=1e-4)
    i = info(p)
    assert i.format == "FLAC" and i.channels == 2 and i.frames == a.shape[1]


# ------------------------------------------------------------------------------------------------- folder
def test_empty_folder_raises(tmp_path):
    (tmp_path / "notes.txt").write_text("no audio here")
    with pytest.raises(ValueError, match="no audio files in"):
        AudioFolder(tmp_path)


def test_corrupt_files_skipped_with_one_counted_warning(tmp_path):
    write(tmp_path / "good1.wav", sine())
    write(tmp_path / "sub" / "good2.flac", sine(seconds=0.5))
    corrupt(tmp_path / "broken.wav")
    corrupt(tmp_path / "sub" / "broken.ogg", b"OggS" + b"\x00" * 100)
    corrupt(tmp_path / "empty.flac", b"")
    folder, msgs = record_warnings(lambda: AudioFolder(tmp_path))
    assert len(folder) == 2
    skipped = [m for m in msgs if "unreadable" in m]
    assert len(skipped) == 1, msgs
    assert "skipped 3 unreadable files" in skipped[0]
    assert "broken.wav" in skipped[0]


def test_folder_without_metadata_uses_file_names(tmp_path):
    write(tmp_path / "My_cool-song.wav", sine())
    folder = AudioFolder(tmp_path)
    assert folder.tracks[0].meta["title"] == "My cool song"
    audio, text = folder[0]
    assert text == "My cool song"
    assert audio.shape[0] == 2 and audio.dtype == torch.float32
    assert text_from_filename("a/b/some_track-v2.final.opus") == "some track v2.final"


def test_folder_reads_metadata_jsonl(tmp_path):
    write(tmp_path / "a" / "x.wav", sine())
    write(tmp_path / "y.wav", sine())  # not in metadata: falls back to its name
    meta = {"path": "a/x.wav", "title": "Sunrise", "artist": "Nobody", "genre": "jazz", "bpm": 96,
            "licence": "CC-BY-SA-3.0", "sha256": "0" * 64}
    (tmp_path / "metadata.jsonl").write_text(json.dumps(meta) + "\n")
    folder = AudioFolder(tmp_path)
    by_rel = {t.rel: t for t in folder.tracks}
    assert by_rel["a/x.wav"].meta["genre"] == "jazz"
    assert by_rel["y.wav"].meta["title"] == "y"
    texts = [caption_from_metadata(by_rel["a/x.wav"].meta, np.random.default_rng(i)) for i in range(200)]
    assert any("96 bpm" in t for t in texts) and any("Sunrise" in t for t in texts)
    assert not any("CC-BY" in t or "0000" in t or "x.wav" in t for t in texts)


# ------------------------------------------------------------------------------------------------- crops
def make_corpus(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(4):
        write(tmp_path / f"track_{i}.flac", (0.1 * rng.standard_normal((SR * (2 + i), 2))).astype(np.float32))
    write(tmp_path / "other_rate.wav", sine(220, 3.0, sr=44100, channels=2), sr=44100)
    (tmp_path / "metadata.jsonl").write_text("\n".join(
        json.dumps({"path": f"track_{i}.flac", "title": f"Song {i}", "genre": "rock", "bpm": 100 + i})
        for i in range(4)) + "\n")
    return AudioFolder(tmp_path)


def test_crops_are_deterministic_per_seed_and_step(tmp_path):
    folder = make_corpus(tmp_path)
    a = RandomCrops(folder, crop_length=SR // 2, seed=7, batch_size=4)
    b = RandomCrops(AudioFolder(tmp_path), crop_length=SR // 2, seed=7, batch_size=4)  # "resumed" run
    x1, t1 = a.batch(5)
    _ = b.batch(0), b.batch(3)  # different history must not matter
    x2, t2 = b.batch(5)
    assert x1.shape == (4, 2, SR // 2) and x1.dtype == torch.float32
    assert torch.equal(x1, x2) and t1 == t2
    x3, _ = a.batch(6)
    assert not torch.equal(x1, x3)
    x4, _ = RandomCrops(folder, crop_length=SR // 2, seed=8, batch_size=4).batch(5)
    assert not torch.equal(x1, x4)
    # iterating from start_step k gives batch(k), batch(k+1), ...
    it = iter(RandomCrops(folder, crop_length=SR // 2, seed=7, batch_size=4, start_step=5, steps=2))
    y5, s5 = next(it)
    y6, _ = next(it)
    assert torch.equal(y5, x1) and s5 == t1 and torch.equal(y6, x3)
    assert all(isinstance(t, str) and t for t in t1)


def test_crops_same_order_with_dataloader_workers(tmp_path):
    folder = make_corpus(tmp_path)
    ds = RandomCrops(folder, crop_length=4800, seed=1, batch_size=2, start_step=10, steps=4)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    got = [x for x, _ in loader]
    want = [ds.batch(s)[0] for s in range(10, 14)]
    assert len(got) == 4 and all(torch.equal(g, w) for g, w in zip(got, want))


def test_short_file_zero_padded_with_warning(tmp_path):
    write(tmp_path / "blip.wav", np.full((SR // 10, 2), 0.25, dtype=np.float32))  # 0.1 s
    folder = AudioFolder(tmp_path)
    crops, msgs = record_warnings(lambda: RandomCrops(folder, crop_length=SR, seed=0, batch_size=2))
    assert sum("zero-padded" in m for m in msgs) == 1, msgs
    x, texts = crops.batch(0)
    assert x.shape == (2, 2, SR)
    assert torch.all(x[:, :, : SR // 10] == 0.25)
    assert torch.all(x[:, :, SR // 10:] == 0)
    assert texts == ["blip", "blip"]


# ------------------------------------------------------------------------------------------------- captions
META = {"title": "Alpha", "artist": "Beta", "album": "Gamma", "genre": "Delta", "year": 1999, "bpm": 120,
        "path": "secret/dir/file.flac", "licence": "LICENCE-XYZ", "sha256": "abc123def", "source": "srcname"}


def test_caption_dropout_rate_joiners_and_no_leaks():
    rng = np.random.default_rng(1234)
    values = ["Alpha", "Beta", "Gamma", "Delta", "1999", "120 bpm"]
    n, missing, joiners, orders = 4000, 0, set(), set()
    for _ in range(n):
        c = caption_from_metadata(META, rng)
        assert c and c.strip() == c
        for leak in ("secret", "file.flac", "LICENCE", "abc123", "srcname"):
            assert leak not in c
        present = [v for v in values if v in c]
        missing += len(values) - len(present)
        joiners.add(", " if ", " in c else " ")
        orders.add(tuple(sorted(present, key=c.index)))
    rate = missing / (n * len(values))
    assert 0.085 < rate < 0.115, rate  # 0.1 +- ~6 standard errors
    assert joiners == {", ", " "}
    assert len(orders) > 100  # shuffled


def test_caption_never_empty():
    rng = np.random.default_rng(0)
    for _ in range(500):
        assert caption_from_metadata({"genre": "jazz", "licence": "MIT"}, rng) == "jazz"
    assert caption_from_metadata({"path": "x/some_name.wav", "licence": "MIT"}, rng) == "some name"
    assert caption_from_metadata({}, rng)
    assert caption_from_metadata({"instruments": ["piano", "bass"], "bpm": 90.4}, np.random.default_rng(3))
    texts = {caption_from_metadata({"style": "jazz", "genre": "Jazz", "bpm": 90.4}, rng) for _ in range(300)}
    assert all(t.lower().count("jazz") <= 1 for t in texts) and {"Jazz 90 bpm", "90 bpm, Jazz"} <= texts


def test_short_captions_cut_a_share_to_one_to_three_fragments_and_keep_the_other_draws():
    """short=s cuts a share s of the captions to their first 1, 2 or 3 fragments (uniform): prompts as people type
    them. The draws before the cut are unchanged, so each short caption is the head of the caption short=0 gives,
    and short=0 gives the captions of runs made before the option existed."""
    meta = {"title": "Alpha", "artist": "Beta", "album": "Gamma", "genre": "Delta", "year": 1999, "mood": "calm",
            "tempo": "fast"}
    n, lengths, singles = 3000, Counter(), Counter()
    for i in range(n):
        full = caption_from_metadata(meta, np.random.default_rng(i))
        assert caption_from_metadata(meta, np.random.default_rng(i), short=0.0) == full
        c = caption_from_metadata(meta, np.random.default_rng(i), short=0.5)
        joiner = ", " if ", " in full else " "
        parts, full_parts = c.split(joiner), full.split(joiner)
        assert parts == full_parts[:len(parts)], (c, full)
        lengths[len(parts)] += 1
        if len(parts) == 1:
            singles[c] += 1
        assert len(caption_from_metadata(meta, np.random.default_rng(i), short=1.0).split(joiner)) <= 3
    short = sum(lengths[k] for k in (1, 2, 3)) / n
    assert 0.45 < short < 0.55, lengths  # 0.5, plus the ~0.3 % of full captions that lost 4 of their 7 values
    assert all(0.27 < lengths[k] / (short * n) < 0.40 for k in (1, 2, 3)), lengths
    assert set(singles) == {"Alpha", "Beta", "Gamma", "Delta", "1999", "calm", "fast"}  # any fragment alone


# ------------------------------------------------------------------------------------------------- midi
def test_midi_generation_is_deterministic_and_valid(tmp_path):
    from training.data.corpus import midi

    for style in midi.STYLES:
        a = midi.generate(style, 3, seconds=20)
        b = midi.generate(style, 3, seconds=20)
        assert [p.notes for p in a.parts] == [p.notes for p in b.parts]
        assert a.parts and all(0 <= n[2] <= 127 and 1 <= n[3] <= 127 and n[1] > 0 for p in a.parts for n in p.notes)
        assert a.metadata()["genre"] and a.metadata()["instruments"]
    c = midi.generate("jazz", 4, seconds=20)
    assert [p.notes for p in c.parts] != [p.notes for p in midi.generate("jazz", 3, seconds=20).parts]
    path = midi.write_midi(c, tmp_path / "x.mid")
    data = path.read_bytes()
    assert data[:4] == b"MThd" and data.count(b"MTrk") == len(c.parts) + 1
    plan = midi.track_plan(30)
    assert sum(s for _, _, s in plan) >= 30 * 60 and plan[:3] == midi.track_plan(10)[:3]


def test_midi_render_stereo_48k(tmp_path):
    from training.data.corpus import midi

    ok, why = midi.fluidsynth_status()
    if not ok:
        pytest.skip(why)
    arr = midi.generate("bossa nova", 1, seconds=6)
    x = midi.render(arr, sr=SR, tail=1.0)
    assert x.dtype == np.float32 and x.shape[0] == 2
    assert abs(x.shape[1] - int(round((arr.seconds + 1.0) * SR))) <= 2
    assert np.mean(np.abs(x[0] - x[1])) > 1e-3  # real stereo: channels differ
    assert np.sqrt(np.mean(x ** 2)) > 0.01 and np.max(np.abs(x)) <= 0.9
    np.testing.assert_array_equal(x, midi.render(arr, sr=SR, tail=1.0))  # deterministic
    p = save_flac(tmp_path / "r.flac", x, SR)
    i = info(p)
    assert i.samplerate == SR and i.channels == 2


def test_build_midi_source_idempotent(tmp_path):
    from training.data.corpus import build, midi

    ok, why = midi.fluidsynth_status()
    if not ok:
        pytest.skip(why)
    out = tmp_path / "corpus"
    man = build.build_corpus(out, ["midi"], progress=False, midi_minutes=0.5, log=lambda s: None)
    assert man["n_files"] == 1 and not man["failed"] and man["built"] == 1
    (rel, rec), = man["files"].items()
    assert rec["genre"] == "rock" and (out / rel).is_file() and rec["licence"].startswith("CC0")
    lines = [json.loads(x) for x in (out / "metadata.jsonl").read_text().splitlines()]
    assert lines[0]["path"] == rel and lines[0]["style"] == "rock"
    man2 = build.build_corpus(out, ["midi"], progress=False, midi_minutes=0.5, log=lambda s: None)
    assert man2["built"] == 0 and man2["skipped"] == 1 and man2["files"][rel]["sha256"] == rec["sha256"]
    folder = AudioFolder(out)
    assert len(folder) == 1 and folder.tracks[0].samplerate == SR
    assert build.main(str(build.Path(build.__file__).resolve().parents[3] / "x"), "midi") == 2  # inside repo
    assert build.main(str(out), "nope") == 2


# ------------------------------------------------------------------------------------------------- debian
def test_dep5_last_matching_stanza_wins():
    from training.data.corpus.debian import clean_tag, dep5_licence, licence_from_tag

    text = ("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n"
            "Files: *\nCopyright: Team\nLicense: GPL-3+\n\n"
            "Files: data/music/*\nCopyright: Composer\nLicense: GPL-2+\n\n"
            "Files: ./dat/snd/music/a.ogg ./dat/snd/music/b.ogg\nCopyright: Someone\nLicense: CC-BY-SA-3.0\n\n"
            "Files: debian/*\nCopyright: Packager\nLicense: GPL-3+\n")
    assert dep5_licence(text, "usr/share/games/x/music/forest/song.ogg") == ("GPL-2+", "Composer")
    assert dep5_licence(text, "usr/share/naev/dat/snd/music/b.ogg") == ("CC-BY-SA-3.0", "Someone")
    assert dep5_licence(text, "usr/share/naev/dat/snd/sounds/c.ogg") == ("GPL-3+", "Team")
    assert dep5_licence("This package was debianized by ...", "x.ogg") is None
    assert licence_from_tag("http://creativecommons.org/licenses/by-sa/3.0/") == "CC-BY-SA-3.0"
    assert clean_tag("Downloaded at www.example.org") is None and clean_tag("subcities.mp3") == "subcities"


# ------------------------------------------------------------------------------------------------- held-out split
def test_holdout_split_is_excluded_from_training_and_deterministic(tmp_path):
    from training.data.corpus.build import assign_splits

    meta = {f"audio/src{s}/t{i}.flac": {"path": f"audio/src{s}/t{i}.flac", "source": f"src{s}"}
            for s in range(3) for i in range(30)}
    assign_splits(meta)
    held = {r for r, m in meta.items() if m["split"] == "holdout"}
    for s in range(3):  # every source keeps at least one held-out track, and most tracks train
        n = sum(1 for r in held if r.startswith(f"audio/src{s}/"))
        assert 1 <= n <= 6
    again = {r: dict(m) for r, m in meta.items()}
    assign_splits(again)
    assert {r for r, m in again.items() if m["split"] == "holdout"} == held

    for name, split in (("a.wav", "train"), ("b.wav", "holdout"), ("c.wav", None)):
        write(tmp_path / name, sine())
    (tmp_path / "metadata.jsonl").write_text("\n".join(
        json.dumps({"path": n, "title": n, **({"split": s} if s else {})})
        for n, s in (("a.wav", "train"), ("b.wav", "holdout"), ("c.wav", None))) + "\n")
    assert sorted(t.rel for t in AudioFolder(tmp_path).tracks) == ["a.wav", "c.wav"]
    assert [t.rel for t in AudioFolder(tmp_path, split="holdout").tracks] == ["b.wav"]
    assert len(AudioFolder(tmp_path, split="all")) == 3
    texts = [caption_from_metadata(AudioFolder(tmp_path, split="holdout").tracks[0].meta, np.random.default_rng(i))
             for i in range(50)]
    assert not any("holdout" in t for t in texts)


def test_genre_balance_shares_draws_between_genres(tmp_path):
    """0 draws by length; 1 gives each genre the same share whatever its hours; the draws follow the cdf."""
    from training.data.dataset import sampling_cdf, track_genre

    lengths = {"a0": 6.0, "a1": 3.0, "b0": 1.0}  # genre a: 9 s, genre b: 1 s
    for name, seconds in lengths.items():
        sf.write(tmp_path / f"{name}.wav", np.zeros((int(8000 * seconds), 2), np.float32), 8000)
    meta = [{"path": f"{n}.wav", "genre": ["A", "pop"] if n[0] == "a" else " b "} for n in lengths]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(m) for m in meta) + "\n")
    folder = AudioFolder(tmp_path, sr=8000)
    assert [track_genre(t.meta) for t in folder.tracks] == ["a", "a", "b"]
    n = np.array([t.frames for t in folder.tracks])
    p0 = np.diff(sampling_cdf(folder.tracks, n, 0.0), prepend=0.0)
    p1 = np.diff(sampling_cdf(folder.tracks, n, 1.0), prepend=0.0)
    ph = np.diff(sampling_cdf(folder.tracks, n, 0.5), prepend=0.0)
    assert p0 == pytest.approx([0.6, 0.3, 0.1])
    assert p1 == pytest.approx([1 / 3, 1 / 6, 0.5])  # genre a: 1/2 split 2:1 by length; genre b: 1/2
    assert ph[2] == pytest.approx(1 / (1 + 3)) and 0.1 < ph[2] < 0.5  # sqrt(1) / (sqrt(1) + sqrt(9))
    crops = RandomCrops(folder, 800, seed=0, batch_size=1, sr=8000, genre_balance=1.0)
    draws = [crops._choose(np.random.default_rng([0, k])) for k in range(3000)]
    assert np.bincount(draws, minlength=3) / 3000 == pytest.approx(p1, abs=0.03)
    assert RandomCrops(folder, 800, seed=0, sr=8000)._cdf == pytest.approx(np.cumsum(p0))  # default unchanged
