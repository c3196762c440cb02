"""Notes on the SFS grid: 8 frames per beat, 4/4, 32 frames per bar (SFS.md section 2).

Place in the data flow: [1] every MIDI reader ends here, and every later stage
(segmentation, tokenizer, TFDS features, model examples, sampler output) reads the
one array layout defined here, so there is exactly one notion of "a note".

A song's notes are an int32 array ``notes_Nx4`` whose columns are ``NOTE_FIELDS``:
onset in frames from the song's bar 0, MIDI pitch, MIDI velocity, and duration in
frames (true quantized length, possibly above ``MAX_DURATION_FRAMES``; the
tokenizer clips and counts). Rows are sorted by (onset, pitch) and unique on that
pair after ``normalize_notes``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

FRAMES_PER_BEAT = 8
BEATS_PER_BAR = 4
FRAMES_PER_BAR = FRAMES_PER_BEAT * BEATS_PER_BAR
MIN_PITCH = 21
MAX_PITCH = 108
NUM_PITCHES = MAX_PITCH - MIN_PITCH + 1
NUM_VELOCITIES = 128
MAX_DURATION_FRAMES = 64
NOTE_FIELDS = ("onset_frames", "pitch", "velocity", "duration_frames")
ONSET, PITCH, VELOCITY, DURATION = range(4)


def empty_notes() -> np.ndarray:
    """A (0, 4) int32 note array: the canonical 'no notes' value."""
    return np.zeros((0, len(NOTE_FIELDS)), np.int32)


@dataclasses.dataclass
class NormalizationStats:
    """What ``normalize_notes`` changed; summed into the build report."""

    pitches_moved_by_octave: int = 0
    duplicates_removed: int = 0
    zero_length_fixed: int = 0
    overlaps_truncated: int = 0

    def add(self, other: NormalizationStats) -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))


def fold_pitch_into_range(pitch_N: np.ndarray) -> np.ndarray:
    """Moves pitches outside 21..108 by whole octaves into range (the original crashed)."""
    pitch_N = np.asarray(pitch_N, np.int64).copy()
    low = pitch_N < MIN_PITCH
    pitch_N[low] += 12 * ((MIN_PITCH - pitch_N[low] + 11) // 12)
    high = pitch_N > MAX_PITCH
    pitch_N[high] -= 12 * ((pitch_N[high] - MAX_PITCH + 11) // 12)
    return pitch_N


def normalize_notes(notes_Nx4: np.ndarray) -> tuple[np.ndarray, NormalizationStats]:
    """Puts quantized notes into the canonical form every later stage relies on.

    - pitches folded into 21..108 by octaves;
    - velocities clipped to 1..127 (velocity 0 is a note-off in MIDI);
    - durations of 0 frames (notes shorter than half a frame) become 1 frame;
    - duplicates (same onset and pitch) merged, keeping the longest, loudest;
    - a note overlapping the next onset of its own pitch is cut at that onset, so
      same-pitch notes never overlap. This is what makes duration 0 ("until the
      next onset of the same pitch in the bar") unambiguous in the tokenizer.
    """
    stats = NormalizationStats()
    notes = np.asarray(notes_Nx4, np.int64).reshape(-1, len(NOTE_FIELDS)).copy()
    if notes.shape[0] == 0:
        return empty_notes(), stats
    notes = notes[notes[:, ONSET] >= 0]
    folded = fold_pitch_into_range(notes[:, PITCH])
    stats.pitches_moved_by_octave = int(np.sum(folded != notes[:, PITCH]))
    notes[:, PITCH] = folded
    notes[:, VELOCITY] = np.clip(notes[:, VELOCITY], 1, NUM_VELOCITIES - 1)
    short = notes[:, DURATION] < 1
    stats.zero_length_fixed = int(np.sum(short))
    notes[short, DURATION] = 1

    # Sort by onset, pitch, then longest and loudest first so np.unique keeps them.
    order = np.lexsort((-notes[:, VELOCITY], -notes[:, DURATION], notes[:, PITCH], notes[:, ONSET]))
    notes = notes[order]
    keep = np.ones(len(notes), bool)
    keep[1:] = (notes[1:, ONSET] != notes[:-1, ONSET]) | (notes[1:, PITCH] != notes[:-1, PITCH])
    stats.duplicates_removed = int(np.sum(~keep))
    notes = notes[keep]

    # Same-pitch overlap: order by pitch then onset, compare with the next row.
    by_pitch = np.lexsort((notes[:, ONSET], notes[:, PITCH]))
    p = notes[by_pitch]
    same_pitch_next = np.zeros(len(p), bool)
    same_pitch_next[:-1] = p[1:, PITCH] == p[:-1, PITCH]
    next_onset = np.zeros(len(p), np.int64)
    next_onset[:-1] = p[1:, ONSET]
    offset = p[:, ONSET] + p[:, DURATION]
    overlap = same_pitch_next & (offset > next_onset)
    stats.overlaps_truncated = int(np.sum(overlap))
    p[overlap, DURATION] = next_onset[overlap] - p[overlap, ONSET]
    notes[by_pitch] = p
    return notes.astype(np.int32), stats


def notes_in_bars(notes_Nx4: np.ndarray, start_bar: int, end_bar: int) -> np.ndarray:
    """Notes whose onset lies in bars [start_bar, end_bar), onsets made relative to start_bar."""
    lo, hi = start_bar * FRAMES_PER_BAR, end_bar * FRAMES_PER_BAR
    sel = notes_Nx4[(notes_Nx4[:, ONSET] >= lo) & (notes_Nx4[:, ONSET] < hi)].copy()
    sel[:, ONSET] -= lo
    return sel


def end_at_bar(notes_Nx4: np.ndarray, n_bars: int) -> np.ndarray:
    """The notes of a song of ``n_bars`` bars: none starts after its last bar line, none rings past it.

    Generated durations can outlast the song (a note of 64 frames in its last bar); the
    song ends at its bar line, as its structure says.
    """
    end = n_bars * FRAMES_PER_BAR
    kept = notes_Nx4[notes_Nx4[:, ONSET] < end].copy()
    kept[:, DURATION] = np.minimum(kept[:, DURATION], end - kept[:, ONSET])
    return kept


def bars_spanned(notes_Nx4: np.ndarray) -> int:
    """Number of bars from bar 0 up to the bar holding the last onset (0 if empty)."""
    if len(notes_Nx4) == 0:
        return 0
    return int(notes_Nx4[:, ONSET].max()) // FRAMES_PER_BAR + 1
