"""POP909 songs with their human phrase labels, aligned to the MIDI (SFS.md section 6).

Place in the data flow: [1]->[2] for the ``pop909`` TFDS config. Three facts about
the shared copy drive the design (see ``../shared/data/pop909/README.md``):

- most files carry a wrong time signature (617 say 1/4), so the meter check of
  ordinary files is skipped and the grid comes from ``beat_midi.txt`` instead;
- note ticks are not on the beat grid, so onsets are mapped to beats by
  interpolating the annotated beat times (linear extrapolation outside them);
- bar 0 of the labels is not bar 0 of the MIDI, so the label grid is found by the
  whole-beat shift that best matches the MELODY track against
  ``structure_melody.txt`` (same pitch, onset within one 16th note).

Annotator rule: both label files are valid readings. We take annotator 1 unless
its bar total differs from annotator 2's, in which case we take the one whose total
is closest to the length of ``structure_melody.txt`` rounded up to whole bars
(ties: annotator 1). Songs whose best shift matches fewer than
``MIN_MELODY_MATCH`` of the melody onsets fall back to automatic segmentation on
the MIDI's own downbeats and are marked ``label_source="auto"``.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np

from data_pipeline import segmentation
from sfs_jax.music import midi_io
from sfs_jax.music import notes as notes_lib
from sfs_jax.music.structure import Segment, segments_from_lengths

MIN_MELODY_MATCH = 0.9
SIXTEENTHS_PER_BEAT = 4
MAX_DATASET_SONG_BARS = 1000
_LABEL_RE = re.compile(r"([A-Za-z])(\d+)")


@dataclasses.dataclass
class LabelledSong:
    """One song on the frame grid with segments, ready for the TFDS features."""

    notes_Nx4: np.ndarray
    n_bars: int
    tempo_bpm: float
    segments: tuple[Segment, ...]
    label_source: str  # "human" or "auto"
    melody_match: float  # fraction of label melody onsets matched at the chosen shift
    shift_beats: int
    notes_outside_labels: int
    stats: notes_lib.NormalizationStats


def beats_of_seconds_fn(beat_times_s: np.ndarray):
    """Seconds -> fractional beat index by interpolating annotated beat times."""
    beat_times_s = np.asarray(beat_times_s, np.float64)
    if len(beat_times_s) < 2 or np.any(np.diff(beat_times_s) <= 0):
        raise midi_io.MidiSkip("bad_beat_annotation", "beat times must be >= 2 and increasing")
    index = np.arange(len(beat_times_s), dtype=np.float64)
    first_period = beat_times_s[1] - beat_times_s[0]
    last_period = beat_times_s[-1] - beat_times_s[-2]

    def beats_of_seconds(t_s: np.ndarray) -> np.ndarray:
        t_s = np.asarray(t_s, np.float64)
        beats = np.interp(t_s, beat_times_s, index)
        before, after = t_s < beat_times_s[0], t_s > beat_times_s[-1]
        beats[before] = (t_s[before] - beat_times_s[0]) / first_period
        beats[after] = index[-1] + (t_s[after] - beat_times_s[-1]) / last_period
        return beats

    return beats_of_seconds


def read_label_melody(path: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """(onsets in 16ths, pitches, total length in 16ths) of ``structure_melody.txt``."""
    rows = np.loadtxt(path, ndmin=2, dtype=np.int64)
    if rows.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), 0
    onsets = np.concatenate([[0], np.cumsum(rows[:, 1])[:-1]])
    sounding = rows[:, 0] > 0
    return onsets[sounding], rows[sounding, 0], int(rows[:, 1].sum())


def best_beat_shift(midi_16: np.ndarray, midi_pitch: np.ndarray, label_16: np.ndarray,
                    label_pitch: np.ndarray, tolerance_16: int = 1) -> tuple[int, float]:
    """Whole-beat shift s (label beat b = MIDI beat b + s) and its melody match rate.

    Candidate shifts are voted by same-pitch onset pairs (cheap), then the three
    best are scored exactly: the fraction of label onsets with a same-pitch MIDI
    melody onset within ``tolerance_16`` sixteenths.
    """
    if len(label_16) == 0 or len(midi_16) == 0:
        return 0, 0.0
    label_index, midi_index = np.nonzero(label_pitch[:, None] == midi_pitch[None, :])
    diff_P = midi_16[midi_index] - label_16[label_index]
    shift_P = np.floor_divide(diff_P + SIXTEENTHS_PER_BEAT // 2, SIXTEENTHS_PER_BEAT)
    votes = shift_P[np.abs(diff_P - SIXTEENTHS_PER_BEAT * shift_P) <= tolerance_16]
    if len(votes) == 0:
        return 0, 0.0
    values, counts = np.unique(votes, return_counts=True)
    # One sorted key per MIDI melody note: pitch in the high bits, 16th in the low.
    key_stride = 1 << 24
    midi_keys = np.sort(midi_pitch * key_stride + midi_16)
    best_shift, best_rate = 0, -1.0
    for shift in values[np.argsort(-counts, kind="stable")[:3]]:
        wanted = label_pitch * key_stride + label_16 + SIXTEENTHS_PER_BEAT * int(shift)
        lo = np.searchsorted(midi_keys, wanted - tolerance_16, side="left")
        hi = np.searchsorted(midi_keys, wanted + tolerance_16, side="right")
        rate = float(np.mean(hi > lo))
        if rate > best_rate:
            best_shift, best_rate = int(shift), rate
    return best_shift, best_rate


def parse_label_line(text: str) -> list[tuple[str, int]]:
    """``i4A4B8`` -> [("i", 4), ("A", 4), ("B", 8)]; raises on anything else."""
    compact = re.sub(r"\s+", "", text)
    pairs = [(m.group(1), int(m.group(2))) for m in _LABEL_RE.finditer(compact)]
    if not pairs or "".join(f"{lab}{n}" for lab, n in pairs) != compact:
        raise midi_io.MidiSkip("bad_label_file", f"cannot parse {text.strip()[:40]!r}")
    return pairs


def choose_annotation(song_dir: Path, melody_bars: int) -> list[tuple[str, int]]:
    """Applies the annotator rule in the module docstring."""
    first = parse_label_line((song_dir / "structure_human_label1.txt").read_text())
    second_path = song_dir / "structure_human_label2.txt"
    if not second_path.exists():
        return first
    second = parse_label_line(second_path.read_text())
    total_1, total_2 = (sum(n for _, n in labels) for labels in (first, second))
    if total_1 == total_2 or abs(total_1 - melody_bars) <= abs(total_2 - melody_bars):
        return first
    return second


def load_song(song_dir: str | Path, *, seed: int) -> LabelledSong:
    """Reads one ``songs/NNN`` folder; raises MidiSkip with a reason when unusable."""
    song_dir = Path(song_dir)
    midi_path = song_dir / f"{song_dir.name}.mid"
    score = midi_io.load_score(midi_path)
    raw = midi_io.merge_tracks(score.to("second"))
    try:
        beat_table = np.loadtxt(song_dir / "beat_midi.txt", ndmin=2)
    except (OSError, ValueError) as err:
        raise midi_io.MidiSkip("bad_beat_annotation", str(err)) from err
    beats_of_seconds = beats_of_seconds_fn(beat_table[:, 0])

    shift, match, labels = 0, 0.0, None
    melody_path = song_dir / "structure_melody.txt"
    if melody_path.exists() and (song_dir / "structure_human_label1.txt").exists():
        label_16, label_pitch, total_16 = read_label_melody(melody_path)
        midi_16 = np.rint(beats_of_seconds(raw.melody_start) * SIXTEENTHS_PER_BEAT).astype(np.int64)
        shift, match = best_beat_shift(midi_16, raw.melody_pitch, label_16, label_pitch)
        labels = choose_annotation(song_dir, -(-total_16 // 16))

    if labels is not None and match >= MIN_MELODY_MATCH:
        notes, stats = midi_io.quantize(raw, beats_of_seconds, origin_beats=float(shift))
        segments = segments_from_lengths(labels, max_bars=MAX_DATASET_SONG_BARS)
        n_bars = segments[-1].end_bar
        inside = notes[:, notes_lib.ONSET] < n_bars * notes_lib.FRAMES_PER_BAR
        return LabelledSong(notes[inside], n_bars, _tempo_of_beats(beat_table[:, 0]), segments,
                            "human", match, shift, int(np.sum(~inside)), stats)

    # Fallback: bar 0 at the first annotated downbeat, automatic segmentation.
    downbeats = np.flatnonzero(beat_table[:, 2] > 0) if beat_table.shape[1] > 2 else np.zeros(0)
    origin = float(downbeats[0]) if len(downbeats) else 0.0
    notes, stats = midi_io.quantize(raw, beats_of_seconds, origin_beats=origin)
    if len(notes) == 0:
        raise midi_io.MidiSkip("no_pitched_notes", "no notes after the first downbeat")
    n_bars = notes_lib.bars_spanned(notes)
    segments = segmentation.detect_structure(notes, n_bars, seed=seed)
    return LabelledSong(notes, n_bars, _tempo_of_beats(beat_table[:, 0]), segments, "auto",
                        match, int(origin), 0, stats)


def _tempo_of_beats(beat_times_s: np.ndarray) -> float:
    """Median beat period as BPM: the tempo generated MIDI is written at."""
    return float(60.0 / np.median(np.diff(beat_times_s)))


def song_dirs(manual_dir: str | Path) -> list[Path]:
    """The ``songs/NNN`` folders of a POP909 copy, sorted."""
    root = Path(manual_dir)
    songs = root / "songs" if (root / "songs").is_dir() else root
    return sorted(p for p in songs.iterdir() if p.is_dir() and (p / f"{p.name}.mid").exists())
