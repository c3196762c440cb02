"""MIDI reading and writing on real files through symusic."""

from pathlib import Path

import numpy as np
import pytest
import symusic

from sfs_jax.music import midi_io
from sfs_jax.music.structure import parse_structure
from tests.conftest import scale_notes


def test_write_then_read_round_trips_notes_tempo_and_markers(tmp_path: Path) -> None:
    notes = scale_notes(8)
    segments = parse_structure("A4 B4")
    path = midi_io.write_midi(tmp_path / "song.mid", notes, 87.0, segments, seed_segment=1)
    parsed = midi_io.read_midi(path)
    np.testing.assert_array_equal(parsed.notes_Nx4, notes)
    assert parsed.tempo_bpm == pytest.approx(87.0, abs=0.01)
    assert midi_io.read_markers(symusic.Score(str(path))) == [(0, "A4"), (4, "B4 seed")]


def test_all_tracks_merge_and_sustain_pedal_lengthens_notes(tmp_path: Path) -> None:
    score = symusic.Score(480)
    melody = symusic.Track("MELODY", program=0)
    melody.notes.append(symusic.Note(0, 240, 72, 100))
    piano = symusic.Track("PIANO", program=0)
    piano.notes.append(symusic.Note(0, 240, 48, 60))
    piano.notes.append(symusic.Note(1920, 240, 50, 60))
    piano.controls.append(symusic.ControlChange(0, 64, 127))  # sustain down for 2 beats
    piano.controls.append(symusic.ControlChange(960, 64, 0))
    drums = symusic.Track("drums", program=0, is_drum=True)
    drums.notes.append(symusic.Note(0, 240, 36, 100))
    score.tracks.extend([melody, piano, drums])
    score.dump_midi(tmp_path / "x.mid")
    notes = midi_io.read_midi(tmp_path / "x.mid").notes_Nx4
    # piano note 48 released at beat 0.5 under the pedal -> sounds until beat 2 (16 frames);
    # the melody (other track, no pedal) keeps its length; drums are dropped.
    np.testing.assert_array_equal(notes, [[0, 48, 60, 16], [0, 72, 100, 4], [32, 50, 60, 4]])


def test_quantizes_with_the_files_own_ticks_per_beat(tmp_path: Path) -> None:
    score = symusic.Score(96)
    track = symusic.Track("p", program=0)
    track.notes.append(symusic.Note(12, 11, 60, 80))  # 1/8 beat = frame 1, about 1 frame long
    track.notes.append(symusic.Note(384, 96, 62, 80))  # bar 1
    score.tracks.append(track)
    score.dump_midi(tmp_path / "q.mid")
    np.testing.assert_array_equal(midi_io.read_midi(tmp_path / "q.mid").notes_Nx4,
                                  [[1, 60, 80, 1], [32, 62, 80, 8]])


def test_write_is_atomic_on_failure(tmp_path: Path) -> None:
    target = midi_io.write_midi(tmp_path / "keep.mid", scale_notes(2), 120.0)
    before = target.read_bytes()
    with pytest.raises((TypeError, ValueError, RuntimeError, OverflowError)):
        midi_io.write_midi(target, np.array([[0, 60, 80, "x"]], dtype=object), 120.0)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.mid"]
