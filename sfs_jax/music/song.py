"""A segmented song: the record the TFDS dataset stores and everything downstream reads.

Place in the data flow: [2]->[3] the pipeline builds ``Song`` objects and writes
``to_features()``; [4] the example builder reads ``Song.from_features`` back from the
data source; [6] the composer builds one note by note. Keeping both directions of
the feature mapping in one class means the stored layout cannot drift from what
the model reads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from sfs_jax.music import notes as notes_lib
from sfs_jax.music.structure import Segment, validate_segments

LABEL_SOURCES = ("human", "auto", "synthetic", "user")


@dataclasses.dataclass(frozen=True)
class Song:
    """Notes on the frame grid from bar 0, with segments tiling bars [0, n_bars)."""

    song_id: str
    notes_Nx4: np.ndarray
    n_bars: int
    tempo_bpm: float
    segments: tuple[Segment, ...]
    label_source: str
    source_file: str = ""

    def __post_init__(self) -> None:
        validate_segments(self.segments, self.n_bars)
        if self.label_source not in LABEL_SOURCES:
            raise ValueError(f"label_source {self.label_source!r} not in {LABEL_SOURCES}")
        notes = np.asarray(self.notes_Nx4)
        if notes.ndim != 2 or notes.shape[1] != len(notes_lib.NOTE_FIELDS):
            raise ValueError(f"notes must have shape (N, 4), got {notes.shape}")
        if len(notes) and (notes[:, notes_lib.ONSET].min() < 0 or
                           notes[:, notes_lib.ONSET].max() >= self.n_bars * notes_lib.FRAMES_PER_BAR):
            raise ValueError(f"song {self.song_id}: note onsets outside bars [0, {self.n_bars})")

    def to_features(self) -> dict[str, Any]:
        """The TFDS feature dict (see data_pipeline/sfs_songs/sfs_songs.py)."""
        return {
            "id": self.song_id,
            "notes": np.asarray(self.notes_Nx4, np.int32).reshape(-1, 4),
            "n_bars": np.int32(self.n_bars),
            "tempo_bpm": np.float32(self.tempo_bpm),
            "segments": {
                "start_bar": np.array([s.start_bar for s in self.segments], np.int32),
                "end_bar": np.array([s.end_bar for s in self.segments], np.int32),
                "label": [s.label for s in self.segments],
            },
            "label_source": self.label_source,
            "source_file": self.source_file,
        }

    @classmethod
    def from_features(cls, example: Mapping[str, Any]) -> Song:
        """Inverse of ``to_features`` for examples read back through ``tfds.data_source``."""
        seg = example["segments"]
        labels = [_text(label) for label in seg["label"]]
        segments = tuple(Segment(int(s), int(e), label)
                         for s, e, label in zip(seg["start_bar"], seg["end_bar"], labels, strict=True))
        return cls(song_id=_text(example["id"]),
                   notes_Nx4=np.asarray(example["notes"], np.int32).reshape(-1, 4),
                   n_bars=int(example["n_bars"]), tempo_bpm=float(example["tempo_bpm"]),
                   segments=segments, label_source=_text(example["label_source"]),
                   source_file=_text(example["source_file"]))


def _text(value: Any) -> str:
    """TFDS returns Text features as bytes; accept str too."""
    return value.decode("utf-8") if isinstance(value, bytes | np.bytes_) else str(value)
