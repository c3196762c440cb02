"""MIDI bytes <-> the app's song: import (notes, tempo, structure from markers) and export.

Place in the data flow: [1] and [7] for the browser. Both directions go through
``midi_io`` (the reader that merges tracks, applies the pedal, folds pitches and
refuses meters other than 4/4; the writer with tempo, 4/4 and one marker per
segment, the seed flagged), so a file exported by the app is the file the
command-line generator writes, and importing it restores the structure from its
markers.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile

import numpy as np

from sfs_jax.music import midi_io
from sfs_jax.music import notes as notes_lib
from sfs_jax.music.structure import MAX_SONG_BARS
from sfs_jax.serving.schemas import MAX_TEMPO_BPM, MIN_TEMPO_BPM, InvalidRequest, Limits, ValidSong

# ASCII digits, at most 6: a marker "A" with 5,000 digits is not a segment (and int() would refuse it).
_MARKER_RE = re.compile(r"^\s*([A-Za-z])([0-9]{1,6})(\s+seed)?\s*$", re.ASCII)


@dataclasses.dataclass
class ImportedMidi:
    """What ``/api/midi/import`` answers; ``segments`` is None when the file has no usable markers."""

    notes_Nx4: np.ndarray
    tempo_bpm: float
    n_bars: int
    segments: list[dict] | None
    warnings: list[str]

    def to_json(self) -> dict:
        return {"notes": self.notes_Nx4.tolist(), "tempo_bpm": self.tempo_bpm, "n_bars": self.n_bars,
                "segments": self.segments, "warnings": self.warnings}


def structure_from_markers(markers: list[tuple[int, str]], n_bars: int) -> tuple[list[dict] | None, str | None]:
    """Segments from markers like ``A8`` / ``B8 seed`` laid end to end from bar 0, or (None, why not)."""
    if not markers:
        return None, None
    segments, bar = [], 0
    for marker_bar, text in markers:
        match = _MARKER_RE.match(text)
        if match is None:
            return None, f"marker {text!r} at bar {marker_bar} is not a segment marker like 'A8'"
        if marker_bar != bar:
            return None, f"marker {text!r} is at bar {marker_bar}, but the previous segment ends at bar {bar}"
        length = int(match.group(2))
        if length < 1:
            return None, f"marker {text!r} has zero length"
        segments.append({"label": match.group(1), "bars": length, "seed": bool(match.group(3))})
        bar += length
    if bar > MAX_SONG_BARS:
        return None, f"the markers describe {bar} bars, more than the limit of {MAX_SONG_BARS}"
    if bar < n_bars:
        return None, f"the markers cover {bar} bars but the notes run to bar {n_bars}"
    if sum(s["seed"] for s in segments) > 1:
        for seg in segments:
            seg["seed"] = False
        return segments, "more than one marker says 'seed'; no segment was marked as the seed"
    return segments, None


def import_midi(data: bytes, limits: Limits) -> ImportedMidi:
    """Reads MIDI bytes onto the frame grid; a file that is not a usable 4/4 piano song is an InvalidRequest."""
    if not data:
        raise InvalidRequest("the MIDI file is empty")
    if len(data) > limits.max_midi_bytes:
        raise InvalidRequest(f"the MIDI file has {len(data)} bytes, more than the limit of {limits.max_midi_bytes}")
    fd, path = tempfile.mkstemp(suffix=".mid")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        parsed = midi_io.read_midi(path)
        markers = midi_io.read_markers(midi_io.load_score(path))
    except midi_io.MidiSkip as err:
        raise InvalidRequest(f"not a usable MIDI file: {err}") from err
    finally:
        os.unlink(path)
    if not MIN_TEMPO_BPM <= parsed.tempo_bpm <= MAX_TEMPO_BPM:
        raise InvalidRequest(f"the file's tempo at its first note is {parsed.tempo_bpm:.4g} BPM, outside "
                             f"{MIN_TEMPO_BPM:g}..{MAX_TEMPO_BPM:g}: not a playable song tempo")
    warnings = []
    if parsed.tempo_varies:
        warnings.append(f"the tempo changes from {parsed.tempo_span_bpm[0]:.4g} to {parsed.tempo_span_bpm[1]:.4g} "
                        f"BPM; the song keeps {parsed.tempo_bpm:.4g} BPM, its tempo at the first note")
    notes = parsed.notes_Nx4
    n_bars = notes_lib.bars_spanned(notes)
    if n_bars > MAX_SONG_BARS:
        warnings.append(f"the file has {n_bars} bars; only the first {MAX_SONG_BARS} were kept")
        notes, n_bars = notes_lib.notes_in_bars(notes, 0, MAX_SONG_BARS), MAX_SONG_BARS
    if len(notes) > limits.max_notes:
        warnings.append(f"the file has {len(notes)} notes; only the first {limits.max_notes} were kept")
        notes = notes[: limits.max_notes]
        n_bars = notes_lib.bars_spanned(notes)
    notes[:, notes_lib.DURATION] = np.minimum(notes[:, notes_lib.DURATION], limits.max_note_frames)
    segments, warning = structure_from_markers(markers, n_bars)
    if warning:
        warnings.append(f"structure not restored: {warning}" if segments is None else warning)
    return ImportedMidi(notes, round(parsed.tempo_bpm, 3), n_bars, segments, warnings)


def export_midi(song: ValidSong) -> bytes:
    """A type-1 MIDI file: one piano track, the song's tempo, 4/4, one marker per segment (seed flagged)."""
    score = midi_io.notes_to_score(song.notes_Nx4, song.tempo_bpm, song.segments, song.seed_segment)
    return bytes(score.dumps_midi())
