"""One work item -> one ``Outcome``: the per-song step of every ``sfs_songs`` config.

Place in the data flow: [1]->[2]. Each function here runs in a worker process of
the build, takes only picklable arguments, and never raises for a bad song: the
reason travels back in the Outcome so one odd file can never stop a corpus build
(and the report lists it). Splits are decided here, by a hash of the song id, so
they are the same whatever order or worker count the build uses.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from data_pipeline import pop909, segmentation, synthetic
from sfs_jax.music import midi_io
from sfs_jax.music import notes as notes_lib
from sfs_jax.music.song import Song

MAX_NOTES_PER_BAR = 256  # about 5x the densest real bar; denser files are not piano music
MAX_SONG_BARS = pop909.MAX_DATASET_SONG_BARS
SPLIT_PERCENT = (("train", 90), ("validation", 95), ("test", 100))
MIDI_SUFFIXES = (".mid", ".midi")


@dataclasses.dataclass
class Outcome:
    """What happened to one source song; ``song`` is None when it was skipped."""

    song_id: str
    source_file: str
    split: str
    song: Song | None = None
    skip_reason: str = ""
    skip_detail: str = ""
    stats: notes_lib.NormalizationStats = dataclasses.field(default_factory=notes_lib.NormalizationStats)
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)


def split_of(song_id: str) -> str:
    """Deterministic 90/5/5 split from a hash of the id (stable across builds and machines)."""
    bucket = int.from_bytes(hashlib.sha256(song_id.encode("utf-8")).digest()[:8], "big") % 100
    return next(name for name, upper in SPLIT_PERCENT if bucket < upper)


def check_limits(notes_Nx4: np.ndarray, n_bars: int) -> None:
    """Refuses songs the model cannot use, with the reason the report shows."""
    if n_bars > MAX_SONG_BARS:
        raise midi_io.MidiSkip("too_long", f"{n_bars} bars > {MAX_SONG_BARS}")
    per_bar = np.bincount(notes_Nx4[:, notes_lib.ONSET] // notes_lib.FRAMES_PER_BAR, minlength=1)
    if per_bar.max() > MAX_NOTES_PER_BAR:
        raise midi_io.MidiSkip("too_dense", f"{int(per_bar.max())} notes in bar {int(per_bar.argmax())}"
                               f" > {MAX_NOTES_PER_BAR}")


def _skip(outcome: Outcome, err: midi_io.MidiSkip) -> Outcome:
    outcome.skip_reason, outcome.skip_detail = err.reason, err.detail
    return outcome


def process_pop909(song_dir: str, seed: int) -> Outcome:
    """A POP909 song folder: human labels when aligned, automatic ones otherwise."""
    path = Path(song_dir)
    song_id = f"pop909-{path.name}"
    outcome = Outcome(song_id, f"{path.name}/{path.name}.mid", split_of(song_id))
    try:
        labelled = pop909.load_song(path, seed=seed)
        check_limits(labelled.notes_Nx4, labelled.n_bars)
    except midi_io.MidiSkip as err:
        return _skip(outcome, err)
    outcome.song = Song(song_id, labelled.notes_Nx4, labelled.n_bars, labelled.tempo_bpm,
                        labelled.segments, labelled.label_source, outcome.source_file)
    outcome.stats = labelled.stats
    outcome.extras = {"melody_match": labelled.melody_match,
                      "notes_outside_labels": labelled.notes_outside_labels}
    if labelled.label_source == "human":
        detected = segmentation.detect_structure(labelled.notes_Nx4, labelled.n_bars, seed=seed)
        outcome.extras["auto_vs_human"] = segmentation.score_segmentation(detected, labelled.segments)
    return outcome


def process_midi_file(path: str, root: str, seed: int) -> Outcome:
    """Any MIDI file: its own grid and meter, automatic segmentation."""
    relative = Path(path).relative_to(root).as_posix()
    song_id = "midi-" + relative.rsplit(".", 1)[0]
    outcome = Outcome(song_id, relative, split_of(song_id))
    try:
        parsed = midi_io.read_midi(path)
        n_bars = notes_lib.bars_spanned(parsed.notes_Nx4)
        check_limits(parsed.notes_Nx4, n_bars)
        segments = segmentation.detect_structure(parsed.notes_Nx4, n_bars, seed=seed)
    except midi_io.MidiSkip as err:
        return _skip(outcome, err)
    outcome.song = Song(song_id, parsed.notes_Nx4, n_bars, parsed.tempo_bpm, segments, "auto", relative)
    outcome.stats = parsed.stats
    if parsed.tempo_varies:  # the grid is in beats: the song keeps its tempo at the first note
        outcome.extras["tempo_span_bpm"] = [round(bpm, 3) for bpm in parsed.tempo_span_bpm]
    return outcome


def process_synthetic(index: int, seed: int) -> Outcome:
    """A procedurally generated song (the embedded default: nothing to download)."""
    generated = synthetic.generate_song(seed, index)
    outcome = Outcome(generated.song_id, "", split_of(generated.song_id))
    outcome.song = Song(generated.song_id, generated.notes_Nx4, generated.n_bars, generated.tempo_bpm,
                        generated.segments, "synthetic", "")
    return outcome


def midi_files(folder: str | Path) -> list[Path]:
    """Every MIDI file below a folder, sorted so builds are reproducible."""
    root = Path(folder)
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in MIDI_SUFFIXES)
