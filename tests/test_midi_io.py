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


def _score(tempos=(), meters=(), notes=((480, 480, 60),), drums=False) -> symusic.Score:
    """A one-track score at 480 ticks per beat: tempos (tick, bpm), meters (tick, n, d), notes (tick, length, pitch)."""
    score = symusic.Score(480)
    for tick, bpm in tempos:
        score.tempos.append(symusic.Tempo(tick, bpm))
    for tick, numerator, denominator in meters:
        score.time_signatures.append(symusic.TimeSignature(tick, numerator, denominator))
    track = symusic.Track("d" if drums else "p", program=0, is_drum=drums)
    for tick, length, pitch in notes:
        track.notes.append(symusic.Note(tick, length, pitch, 80))
    score.tracks.append(track)
    return score


def _read(tmp_path: Path, score: symusic.Score, name: str) -> midi_io.ParsedMidi:
    score.dump_midi(tmp_path / name)
    return midi_io.read_midi(tmp_path / name)


def test_tempo_is_the_one_in_force_at_the_first_note(tmp_path: Path) -> None:
    """A placeholder tempo before the music starts is not the song's tempo; one that changes is reported."""
    placeholder = _read(tmp_path, _score(tempos=[(0, 13.3), (480, 120.0)]), "placeholder.mid")
    assert placeholder.tempo_bpm == pytest.approx(120.0) and not placeholder.tempo_varies
    late = _read(tmp_path, _score(tempos=[(960, 90.0)]), "late.mid")  # nothing in force at the first note
    assert late.tempo_bpm == pytest.approx(midi_io.DEFAULT_TEMPO_BPM)
    changing = _read(tmp_path, _score(tempos=[(0, 100.0), (1920, 140.0)],
                                      notes=[(0, 480, 60), (3840, 480, 62)]), "changing.mid")
    assert changing.tempo_bpm == pytest.approx(100.0) and changing.tempo_varies
    assert changing.tempo_span_bpm == pytest.approx((100.0, 140.0), abs=0.01)  # MIDI stores us per beat


@pytest.mark.parametrize("meters, reason", [
    ([(0, 2, 2)], None),  # cut time: a bar of four quarter notes, as 4/4
    ([(0, 4, 4), (7680, 2, 2)], None),  # the same bar length throughout
    ([(0, 4, 4), (0, 2, 4)], "not_4_4"),  # two signatures at tick 0: the last is in force
    ([(0, 4, 4), (7680, 3, 4)], "meter_change"),
    ([(0, 3, 4)], "not_4_4"),
])
def test_meters_by_bar_length_and_the_one_in_force(tmp_path: Path, meters, reason) -> None:
    path = tmp_path / "m.mid"
    _score(meters=meters).dump_midi(path)
    if reason is None:
        assert len(midi_io.read_midi(path).notes_Nx4) == 1
    else:
        with pytest.raises(midi_io.MidiSkip) as skipped:
            midi_io.read_midi(path)
        assert skipped.value.reason == reason, skipped.value
    if meters == [(0, 4, 4), (0, 2, 4)]:
        assert "2/4" in str(skipped.value)


def test_no_notes_is_the_reason_whatever_the_meter(tmp_path: Path) -> None:
    for name, score, detail in (("empty_cut_time.mid", _score(meters=[(0, 2, 2)], notes=()), "holds no notes"),
                                ("drums.mid", _score(meters=[(0, 3, 4)], drums=True), "only drum notes")):
        score.dump_midi(tmp_path / name)
        with pytest.raises(midi_io.MidiSkip) as skipped:
            midi_io.read_midi(tmp_path / name)
        assert skipped.value.reason == "no_pitched_notes" and detail in str(skipped.value), name


def test_written_files_are_readable_like_any_other(tmp_path: Path) -> None:
    """mkstemp's 0600 is not kept: the MIDI gets the mode the umask gives every written file."""
    import os

    previous = os.umask(0o022)
    try:
        path = midi_io.write_midi(tmp_path / "song.mid", scale_notes(2), 120.0)
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o644


def test_songs_end_at_their_last_bar_line() -> None:
    from sfs_jax.music.notes import end_at_bar

    notes = np.array([[0, 60, 80, 8], [60, 62, 80, 64], [64, 64, 80, 4]])
    np.testing.assert_array_equal(end_at_bar(notes, 2), [[0, 60, 80, 8], [60, 62, 80, 4]])


def test_one_out_of_range_controller_byte_does_not_cost_the_song(tmp_path: Path) -> None:
    """A controller value of 200 (a broken byte): the strict parser refuses the file, the tolerant walk
    clamps that data byte and every note is read."""
    score = _score(notes=[(i * 480, 240, 60 + i) for i in range(8)])
    score.tracks[0].controls.append(symusic.ControlChange(0, 7, 100))
    data = bytes(score.dumps_midi())
    at = data.find(bytes([0xB0, 7, 100]))
    assert at > 0
    broken = tmp_path / "broken_controller.mid"
    broken.write_bytes(data[:at + 2] + bytes([200]) + data[at + 3:])
    with pytest.raises(RuntimeError):
        symusic.Score(str(broken))  # the premise: a strict reader gives up
    notes = midi_io.read_midi(broken).notes_Nx4
    np.testing.assert_array_equal(notes[:, 1], np.arange(60, 68))
    truncated = tmp_path / "truncated.mid"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(midi_io.MidiSkip, match="not_midi_or_corrupt"):
        midi_io.read_midi(truncated)
