"""Request bodies of the web API and the checks every request passes before anything streams.

Place in the data flow: the browser's song (structure, notes, seed flag, sampling
knobs) -> here -> ``plan.py`` -> the worker. The same checks guard
``/api/generate``, ``/api/order`` and ``/api/midi/export``, so a song that exports
is exactly a song that generates. Every refusal is an ``InvalidRequest`` whose
message names the offending segment or note; the app turns it into a 422 before a
job exists, so a bad request can never fail later, mid-stream, inside the worker.
Structures go through ``structure.segments_from_lengths`` (the one validator the
dataset and the composer use) rather than a second set of rules.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt

from sfs_jax.music import notes as notes_lib
from sfs_jax.music.structure import MAX_SONG_BARS, Segment, StructureError, segments_from_lengths
from sfs_jax.sampling.segment import SamplingConfig

MIN_TEMPO_BPM, MAX_TEMPO_BPM = 20.0, 400.0
MAX_TEMPERATURE = 5.0
MAX_SEED = 2**31 - 1


class InvalidRequest(ValueError):
    """A request refused with HTTP 422; the message is shown to the user as it is."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one request may carry; sized so a 200-bar song of dense piano fits comfortably."""

    max_notes: int = 20_000
    max_body_bytes: int = 4_000_000  # JSON of max_notes notes is ~0.5 MB
    max_midi_bytes: int = 2_000_000
    max_segments: int = 100
    max_note_frames: int = 16 * notes_lib.FRAMES_PER_BAR


class _Body(BaseModel):
    """Unknown fields are refused, and numbers and flags must be JSON numbers and booleans
    (``"8"``, ``true`` and ``"yes"`` are not 8 bars, 1 bar or a seed)."""

    model_config = ConfigDict(extra="forbid")


Number = StrictFloat | StrictInt  # a JSON number, integer or not


class SegmentIn(_Body):
    """One segment of the structure bar: a one-letter label, its length, and the seed flag."""

    label: str = Field(max_length=8)
    bars: StrictInt
    seed: StrictBool = False


class SongIn(_Body):
    """The song as the browser holds it. Notes are rows [onset_frame, pitch, velocity, duration_frames]."""

    segments: list[SegmentIn] = Field(min_length=1)
    tempo_bpm: Number = 100.0
    notes: list[tuple[StrictInt, StrictInt, StrictInt, StrictInt]] = Field(default_factory=list)


class AudioIn(SongIn):
    """Asks for the notes starting in ``frames`` = [start, end) (default: the whole song) as sampled-piano WAV."""

    frames: tuple[StrictInt, StrictInt] | None = None


class SamplingIn(_Body):
    """The knobs shown in the app; the same values and seed reproduce a take."""

    temperature: Number = 1.0
    top_p: Number = 0.975
    top_k: StrictInt = 0


class GenerateIn(SongIn):
    """Write ``targets`` (segment indices, in this order) or the bars ``bar_range`` = [start, end)."""

    client: str = Field("", max_length=100)
    targets: list[StrictInt] | None = None
    bar_range: tuple[StrictInt, StrictInt] | None = None
    sampling: SamplingIn = Field(default_factory=SamplingIn)
    seed: StrictInt = 0


class StructureIn(_Body):
    """Structure text as typed in the app: ``A8 B8 A8 C4`` or ``A8B8A8C4``."""

    text: str = Field(max_length=2000)


class OrderIn(SongIn):
    """Asks for the default order in which "fill empty segments" writes them."""

    seed: StrictInt = 0


@dataclasses.dataclass(frozen=True)
class ValidSong:
    """A checked song: segments tiling bars from 0, at most one seed, notes normalized and inside the song."""

    segments: tuple[Segment, ...]
    seed_segment: int | None
    notes_Nx4: np.ndarray
    tempo_bpm: float

    @property
    def n_bars(self) -> int:
        return self.segments[-1].end_bar


def validate_song(body: SongIn, limits: Limits) -> ValidSong:
    """Checks structure, seed flags, tempo and notes; raises InvalidRequest naming the first problem."""
    if len(body.segments) > limits.max_segments:
        raise InvalidRequest(f"too many segments: {len(body.segments)} (the limit is {limits.max_segments})")
    for index, seg in enumerate(body.segments):
        if len(seg.label) != 1 or not seg.label.isascii() or not seg.label.isalpha():
            raise InvalidRequest(f"segment {index}: the label {seg.label!r} must be one letter A-Z or a-z")
    try:
        segments = segments_from_lengths([(s.label, s.bars) for s in body.segments], max_bars=MAX_SONG_BARS)
    except StructureError as err:
        raise InvalidRequest(f"impossible structure: {err}") from err
    seeds = [i for i, s in enumerate(body.segments) if s.seed]
    if len(seeds) > 1:
        named = " and ".join(f"{i} ({segments[i].label}{segments[i].n_bars})" for i in seeds)
        raise InvalidRequest(f"two seeds: segments {named} are all marked as the seed; mark at most one")
    if not MIN_TEMPO_BPM <= body.tempo_bpm <= MAX_TEMPO_BPM:
        raise InvalidRequest(f"tempo {float(body.tempo_bpm)} BPM is outside {MIN_TEMPO_BPM:g}..{MAX_TEMPO_BPM:g}")
    notes = check_notes(body.notes, segments[-1].end_bar, limits)
    return ValidSong(segments, seeds[0] if seeds else None, notes, float(body.tempo_bpm))


def check_notes(rows: list[tuple[int, int, int, int]], n_bars: int, limits: Limits) -> np.ndarray:
    """Notes as a normalized int32 [N, 4] array, or InvalidRequest for the first note out of range."""
    if len(rows) > limits.max_notes:
        raise InvalidRequest(f"too many notes: {len(rows)} (the limit is {limits.max_notes})")
    try:
        notes = np.asarray(rows, np.int64).reshape(-1, len(notes_lib.NOTE_FIELDS))
    except OverflowError as err:
        raise InvalidRequest("a note field does not fit in 64 bits") from err
    n_frames = n_bars * notes_lib.FRAMES_PER_BAR
    checks = (
        (notes_lib.ONSET, 0, n_frames - 1, f"onset frame {{}} is outside the song's {n_bars} bars "
                                           f"(frames 0..{n_frames - 1})"),
        (notes_lib.PITCH, notes_lib.MIN_PITCH, notes_lib.MAX_PITCH,
         f"pitch {{}} is outside the piano range {notes_lib.MIN_PITCH}..{notes_lib.MAX_PITCH}"),
        (notes_lib.VELOCITY, 1, notes_lib.NUM_VELOCITIES - 1, "velocity {} is outside 1..127"),
        (notes_lib.DURATION, 1, limits.max_note_frames,
         f"duration {{}} frames is outside 1..{limits.max_note_frames}"),
    )
    for column, low, high, what in checks:
        bad = np.flatnonzero((notes[:, column] < low) | (notes[:, column] > high))
        if len(bad):
            first = int(bad[0])
            more = f" ({len(bad)} notes like it)" if len(bad) > 1 else ""
            raise InvalidRequest(f"note {first} {notes[first].tolist()}: {what.format(notes[first, column])}{more}")
    return notes_lib.normalize_notes(notes)[0]


def sampling_config(sampling: SamplingIn) -> SamplingConfig:
    """The sampler's config for the app's knobs (its own checks, plus bounds that keep compiles few)."""
    if not 0 <= sampling.temperature <= MAX_TEMPERATURE:
        raise InvalidRequest(f"temperature {sampling.temperature} is outside 0..{MAX_TEMPERATURE:g}")
    if not 0 <= sampling.top_k <= notes_lib.NUM_VELOCITIES:
        raise InvalidRequest(f"top_k {sampling.top_k} is outside 0..{notes_lib.NUM_VELOCITIES} (0: off)")
    try:
        return SamplingConfig(temperature=float(sampling.temperature), top_p=float(sampling.top_p),
                              top_k=int(sampling.top_k))
    except ValueError as err:
        raise InvalidRequest(f"sampling: {err}") from err


def check_seed(seed: int) -> int:
    if not 0 <= seed <= MAX_SEED:
        raise InvalidRequest(f"seed {seed} is outside 0..{MAX_SEED}")
    return seed
