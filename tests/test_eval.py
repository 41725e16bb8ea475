"""Tests for training/eval: the spectral distances, Griffin-Lim, the genre classifier's export and the FD."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from training.eval import genre as G
from training.eval import metrics as M

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
SR = 48000


def tone(seconds=1.0, f0=440.0, noise=0.01, seed=0) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    rng = np.random.default_rng(seed)
    x = 0.3 * np.sin(2 * np.pi * f0 * t) + 0.1 * np.sin(2 * np.pi * 3 * f0 * t)
    return np.stack([x, 0.8 * x]).astype(np.float32) + noise * rng.standard_normal((2, t.size)).astype(np.float32)


def test_distances_are_zero_for_identical_and_rank_degradations():
    x = tone()
    assert M.log_mel_l1(x, x) == 0.0 and M.mrstft_l1(x, x) == 0.0
    rng = np.random.default_rng(1)
    slight = x + 0.003 * rng.standard_normal(x.shape).astype(np.float32)
    noise = (rng.standard_normal(x.shape) * x.std()).astype(np.float32)
    for d in (M.log_mel_l1, M.mrstft_l1):
        assert 0 < d(x, slight) < d(x, noise)
    with pytest.raises(ValueError, match="differ in shape"):
        M.log_mel_l1(x, x[:, :-1])


def test_istft_inverts_stft_and_griffin_lim_beats_random_phase():
    x = tone(0.5).astype(np.float64)
    y = M.istft(M.stft(x, 1024, 256), 1024, 256, x.shape[-1])
    assert np.max(np.abs(y - x)) < 1e-9
    mag = np.abs(M.stft(x, 1024, 256))
    rnd = M.istft(mag * np.exp(2j * np.pi * np.random.default_rng(0).random(mag.shape)), 1024, 256, x.shape[-1])
    gl = M.griffin_lim(mag, 1024, 256, x.shape[-1], iterations=32)
    assert M.mrstft_l1(x, gl) < 0.5 * M.mrstft_l1(x, rnd)


def test_mel_filterbank_covers_the_spectrum():
    fb = M.mel_filterbank(SR, 2048, 64)
    assert fb.shape == (64, 1025) and (fb >= 0).all()
    centres = fb.argmax(1)
    assert (np.diff(centres) >= 0).all() and centres[-1] > 900  # increasing, up to near Nyquist


def test_clip_features_ignore_loudness():
    x = tone(5.2)
    a, b = G.clip_features(x), G.clip_features(0.1 * x)
    d = np.abs(a - b)
    assert a.shape == (G.N_MELS, G.clip_frames(5.2)) and d.mean() < 0.01 and d.max() < 0.1  # 0.003, 0.05


def test_frechet_distance_known_values():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4000, 8))
    b = rng.standard_normal((4000, 8))
    assert G.frechet_distance(a, b) < 0.05
    assert G.frechet_distance(a, b + 2.0) == pytest.approx(8 * 4.0, rel=0.03)  # |mean shift|^2
    assert G.frechet_distance(a, 3 * b) == pytest.approx(8 * (1 + 9 - 6), rel=0.06)  # tr: 1 + 9 - 2*3


def test_confusion_and_pairwise_distance():
    m = G.confusion([0, 0, 1, 2], [0, 1, 1, 2], 3)
    assert m.tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    assert G.mean_pairwise_distance([(np.zeros(2), np.array([3.0, 4.0]))]) == 5.0


def test_classifier_trains_exports_and_runs_in_onnxruntime(tmp_path):
    """Two synthetic 'genres' (low vs high tones): trained briefly, exported, ORT separates them."""
    def track(name, genre, f0, seed):
        return G.LabelledTrack(name, genre, G.clip_features(tone(12.0, f0, seed=seed)).astype(np.float16))

    train = [track(f"lo{i}", "low", 110 * (1 + 0.1 * i), i) for i in range(3)] + \
            [track(f"hi{i}", "high", 2000 * (1 + 0.1 * i), i) for i in range(3)]
    val = [track("lo-v", "low", 150, 9), track("hi-v", "high", 2500, 9)]
    report = G.train_classifier(train, val, ["low", "high"], tmp_path / "clf", steps=40, batch=8, log=lambda m: None)
    assert report["val_accuracy"] == 1.0
    clf = G.GenreClassifier(tmp_path / "clf")
    assert clf.genres == ["low", "high"]
    p, e = clf.classify_audio([tone(7.0, 140, seed=5), tone(7.0, 2300, seed=5)])
    assert p.argmax(1).tolist() == [0, 1] and e.shape == (2, G.EMBED)
    assert np.allclose(p.sum(1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="shorter than"):
        clf.classify_audio([tone(2.0)])

    # the decoder ceiling: a perfect round trip keeps the real accuracy, one that swaps the spectrum loses it
    from training.eval.reconstruction import Clip
    from training.eval.report import decoder_ceiling

    class RoundTrip:
        def __init__(self, fn):
            self.fn = fn

        def encode(self, audio):
            return audio

        def decode(self, z, steps, seed, samples):
            return self.fn(z)

    clips = [Clip("lo", "low", tone(6.0, 140, seed=7)), Clip("hi", "high", tone(6.0, 2300, seed=7)),
             Clip("other", "unlisted", tone(6.0, 500, seed=7))]
    perfect = decoder_ceiling(RoundTrip(lambda a: a), clf, clips, steps=7)
    assert perfect == {"clips": 2, "steps": 7, "genres": 2, "real_accuracy": 1.0, "reconstructed_accuracy": 1.0}
    swapped = decoder_ceiling(RoundTrip(lambda a: tone(6.0, 2300 if a is clips[0].audio else 140, seed=3)),
                              clf, clips, steps=7)
    assert swapped["real_accuracy"] == 1.0 and swapped["reconstructed_accuracy"] == 0.0
    doc = json.loads((tmp_path / "clf" / "labels.json").read_text())
    doc["version"] = 2
    (tmp_path / "clf" / "labels.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="not a mousai-genre-classifier v1"):
        G.GenreClassifier(tmp_path / "clf")


@pytest.mark.parametrize("args, match", [
    (["eval", "report", "--data", "/nonexistent"], "missing corpus metadata"),
    (["eval", "classifier", "--data", "/nonexistent"], "not a corpus folder"),
])
def test_eval_cli_refuses_missing_inputs(args, match):
    r = subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and match in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_report_states_both_decoder_ceilings():
    from training.eval.report import format_report

    ceiling = {"clips": 32, "steps": 4, "genres": 7, "real_accuracy": 0.594, "reconstructed_accuracy": 0.344,
               "reconstructed_accuracy_no_postfilter": 0.1}
    midi = {**ceiling, "clips": 21, "genres": 14, "real_accuracy": 0.905, "reconstructed_accuracy": 0.714}
    doc = {"bundle": "b", "manifest_sha256": "0" * 64, "defaults": {}, "generate_kw": {}, "genres": ["x", "y"],
           "classifier": {"val_accuracy": 0.7}, "seconds": 1.0,
           "reconstruction": {"clips": 1, "rows": [{"method": "m", "log_mel_l1": 1.0, "mrstft_l1": 2.0, "seconds": 1}]},
           "text": {"rows": [], "accuracy": 0.5, "chance": 0.5, "rtf": 0.3, "per_genre": {"x": 1.0, "y": 0.0},
                    "confusion": [[1, 0], [1, 0]], "seed_pair_distance": 1.0},
           "frechet": {"generated_vs_real": 3.0, "real_half_vs_half": 1.0, "generated_clips": 2, "real_clips": 2},
           "decoder_ceiling": ceiling, "decoder_ceiling_midi": midi}
    text = format_report(doc)
    assert "on 32 real held-out clips (7 genres) the classifier scores 0.594" in text
    assert "0.344 with the envelope post-filter (0.100 without it)" in text
    assert "on 21 unseen MIDI clips (new seeds, one per style, 10 s) (14 genres) the classifier scores 0.905" in text
    assert "0.714" in text
    assert "unseen MIDI" not in format_report({**doc, "decoder_ceiling_midi": None})
    assert "captions of training tracks" not in text
    cap = {"clips": 4, "genres": 2, "accuracy": 0.75, "per_genre": {"x": 1.0, "y": 0.5}, "rows": []}
    assert ("captions of training tracks instead (4 clips, 2 genres, drawn as the trainer draws them): accuracy "
            "0.750, against 0.500 with the short prompts above; genres heard at least once: x, y.") in \
        format_report({**doc, "text_captions": cap})


def test_training_captions_come_from_each_genres_training_tracks(tmp_path):
    """Full-length captions as the trainer draws them, from the training split only, the same on every call."""
    from training.eval.report import training_captions

    metas = [{"path": "a.flac", "genre": "jazz", "mood": "smoky", "bpm": 120, "key": "F dorian", "split": "train"},
             {"path": "b.flac", "genre": "jazz", "title": "Secret Holdout", "split": "holdout"},
             {"path": "c.flac", "genre": "metal", "title": "Iron", "tempo": "fast"},
             {"path": "d.flac", "genre": "pop", "split": "holdout"}]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(m) for m in metas) + "\n")
    caps = training_captions(tmp_path, ["jazz", "metal", "pop"], per_genre=3)
    assert caps == training_captions(tmp_path, ["jazz", "metal", "pop"], per_genre=3)
    assert set(caps) == {"jazz", "metal"} and all(len(v) == 3 for v in caps.values())  # pop: no training track
    assert all("Secret" not in c and "flac" not in c for c in caps["jazz"])
    assert any(all(w in c for w in ("jazz", "smoky", "120 bpm", "F dorian")) for c in caps["jazz"])
    assert all(set(c.replace(",", " ").split()) <= {"Iron", "metal", "fast"} for c in caps["metal"])
