"""POP909 alignment: beat interpolation, best shift, annotator rule, real songs."""

from pathlib import Path

import numpy as np
import pytest

from data_pipeline import pop909, sources


def test_beats_of_seconds_interpolates_and_extrapolates() -> None:
    beats = pop909.beats_of_seconds_fn(np.array([1.0, 1.5, 2.5]))
    np.testing.assert_allclose(beats(np.array([0.5, 1.25, 2.0, 3.5])), [-1.0, 0.5, 1.5, 3.0])


def test_best_beat_shift_finds_a_known_offset() -> None:
    rng = np.random.default_rng(0)
    label_16 = np.sort(rng.choice(400, 80, replace=False))
    label_pitch = rng.integers(60, 80, 80)
    midi_16 = label_16 + 4 * 7 + rng.integers(-1, 2, 80)  # 7 beats later, jittered
    shift, rate = pop909.best_beat_shift(midi_16, label_pitch, label_16, label_pitch)
    assert shift == 7 and rate == 1.0
    _, rate_wrong = pop909.best_beat_shift(midi_16, label_pitch[::-1], label_16, label_pitch)
    assert rate_wrong < 0.5


def test_annotator_rule(tmp_path: Path) -> None:
    (tmp_path / "structure_human_label1.txt").write_text("A4B4\n")
    (tmp_path / "structure_human_label2.txt").write_text("A4B4A4\n")
    assert pop909.choose_annotation(tmp_path, melody_bars=8) == [("A", 4), ("B", 4)]
    assert pop909.choose_annotation(tmp_path, melody_bars=12) == [("A", 4), ("B", 4), ("A", 4)]


@pytest.mark.parametrize("song", ["001", "002", "100"])
def test_real_pop909_songs_align(pop909_dir: Path, song: str) -> None:
    outcome = sources.process_pop909(str(pop909_dir / "songs" / song), seed=0)
    assert outcome.song is not None, outcome.skip_reason
    s = outcome.song
    assert s.n_bars == s.segments[-1].end_bar
    if s.label_source == "human":
        assert outcome.extras["melody_match"] >= pop909.MIN_MELODY_MATCH
        labels = pop909.choose_annotation(pop909_dir / "songs" / song, 10**6)
        assert s.n_bars == sum(n for _, n in labels)
