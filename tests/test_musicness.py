"""The chroma measures tell notes from noise, a moving line from a buzz, and the same notes from other notes."""
import numpy as np
import pytest

from training.eval import musicness as m

C, F, G, AM = [60, 64, 67], [65, 69, 72], [67, 71, 74], [57, 60, 64]


def test_a_tone_lands_on_its_pitch_class():
    for midi in (45, 57, 61, 70, 83):
        c = m.chroma(m.note(midi, 1.0))
        assert np.argmax(c[2:-2].mean(0)) == midi % 12


def test_white_noise_has_a_flat_chroma_and_fails_peakiness():
    noise = m.white_noise(10.0)
    assert m.peakiness(noise) < 1.6
    assert m.peakiness(m.chord_sequence([C, F, G, AM] * 3, 0.8)) > 3.0
    assert m.peakiness(m.note(57, 5.0)) > 3.0


def test_motion_tells_a_moving_line_from_a_static_comb():
    comb = m.static_comb(10.0)
    line = m.chord_sequence([[60], [64], [67], [72], [71], [67], [62], [65]] * 10, 0.125)
    assert m.peakiness(comb) > 3.0  # the trap: a buzz is peaky
    assert m.motion(comb) < 0.01
    assert m.motion(line) > 0.2


def test_agreement_is_one_for_the_same_notes_and_low_for_others():
    a = m.chord_sequence([C, F, G, AM] * 3, 0.8)
    b = m.chord_sequence([F, G, AM, C] * 3, 0.8)
    assert m.agreement(a, a) == pytest.approx(1.0)
    noisy = a + m.white_noise(a.shape[1] / m.SR, seed=3) * 0.3 * a.std() / 0.1
    assert m.agreement(a, noisy) > 0.9
    assert m.agreement(a, b) < 0.3
    assert abs(m.agreement(a, m.white_noise(a.shape[1] / m.SR, seed=1))) < 0.1
    assert m.agreement(a, m.static_comb(a.shape[1] / m.SR)) < 0.3


def test_silence_is_left_out_and_a_silent_round_trip_scores_zero():
    a = m.chord_sequence([C, G] * 2, 1.0)
    padded = np.concatenate([np.zeros((2, m.SR)), a, np.zeros((2, m.SR))], axis=1)
    assert m.peakiness(padded) == pytest.approx(m.peakiness(a), rel=0.1)
    assert m.agreement(a, np.zeros_like(a)) == 0.0
    assert np.isnan(m.peakiness(np.zeros((2, m.SR))))


def test_progress_to_real():
    assert m.progress_to_real(1.45, 1.45, 4.24) == 0.0
    assert m.progress_to_real(4.24, 1.45, 4.24) == pytest.approx(1.0)
