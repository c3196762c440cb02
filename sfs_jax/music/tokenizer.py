"""The SFS music language: notes <-> compound tokens on the 32-frame bar grid (SFS.md section 2).

Place in the data flow: [2] between ``notes_Nx4`` (notes.py) and the model. The data
pipeline calls the fast numpy codecs (``encode_target`` / ``encode_context``) on every
training segment, the sampler's output goes back through ``decode_target``, and
``SFSFrameTokenizer`` exposes the same language as a miditok tokenizer (save/load a
config, ``encode(score)`` / ``decode(ids)``) for tooling that speaks miditok.

Token layout: an int32 array ``tokens_Tx5`` whose columns are ``TOKEN_FIELDS``.

- Target form (what the decoder generates): one FRAME token per frame of the
  segment, each followed by the NOTE tokens starting in that frame in strictly
  ascending pitch, then END. Positions are not tokens: a token's frame is the count
  of FRAME tokens before it, so decoding recomputes it and ignores the frame column
  (which is kept for the model's positional code only).
- Context form (what the context encoder reads): NOTE tokens only, each carrying its
  frame in the frame column, sorted by (frame, pitch).

Durations (shared by both forms): 0 means "until the next onset of the same pitch in
this bar, or else the next bar line"; it is written when the note is followed by the
same pitch exactly at its offset inside its bar, or ends exactly on the line closing
its bar (and so lasts at most one bar). Otherwise the duration is min(length, 64)
frames. With ``normalize_notes``'s guarantee (no same-pitch overlaps) decoding
reproduces every note exactly, up to that clip at 64 frames.
"""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path

import miditok
import numpy as np
import symusic
from miditok.classes import Event, TokSequence

from sfs_jax.music import midi_io
from sfs_jax.music import notes as notes_lib
from sfs_jax.music.notes import (
    FRAMES_PER_BAR,
    FRAMES_PER_BEAT,
    MAX_DURATION_FRAMES,
    MAX_PITCH,
    MIN_PITCH,
    NUM_VELOCITIES,
)

TOKEN_FIELDS = ("type", "pitch", "velocity", "duration", "frame")
TYPE, PITCH, VEL, DUR, FRAME = range(len(TOKEN_FIELDS))
NUM_DURATIONS = MAX_DURATION_FRAMES + 1  # classes 0..64, 0 being the "until next" code


class TokenType(enum.IntEnum):
    """Value of the ``type`` column. PAD is 0 so zero-filled batch padding is PAD."""

    PAD = 0
    FRAME = 1
    NOTE = 2
    END = 3


NUM_TOKEN_TYPES = len(TokenType)
# Plain ints for the hot paths (numpy compares them without enum overhead).
_PAD, _FRAME, _NOTE, _END = (int(t) for t in TokenType)
# Packs (a, b) with 0 <= b < 2**32 into one sortable int64 key.
_KEY_SHIFT = 32
_KEY_SENTINEL = np.iinfo(np.int64).max


@dataclasses.dataclass
class TokenizeStats:
    """What encoding had to give up; summed into the build report like NormalizationStats."""

    durations_clipped: int = 0  # notes longer than 64 frames written as 64

    def add(self, other: TokenizeStats) -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))


# ---------------------------------------------------------------------------
# Durations (shared by the target and the context forms)
# ---------------------------------------------------------------------------


def _bar_end_frames(onset_N: np.ndarray) -> np.ndarray:
    """The bar line closing each onset's bar, on the 32-frame grid counted from frame 0."""
    return (onset_N // FRAMES_PER_BAR + 1) * FRAMES_PER_BAR


def encode_durations(notes_Nx4: np.ndarray) -> tuple[np.ndarray, int]:
    """Duration codes 0..64 of notes sorted by (onset, pitch), and how many were clipped.

    Code 0 exactly when SFS.md section 2 says so, as the reference tokenizer decides it:
    the next onset of the same pitch (the first one after this onset) lies exactly at
    the offset and the offset is inside the onset's bar, or the offset is the line
    closing the onset's bar (which implies a length of at most one bar, 32 frames).
    Both cases are the ones ``decode_durations`` reconstructs exactly. (Only the next
    same-pitch onset counts: with overlapping same-pitch notes, a later onset at the
    offset would decode to the wrong length.)
    """
    onset = notes_Nx4[:, notes_lib.ONSET].astype(np.int64)
    pitch = notes_Nx4[:, notes_lib.PITCH].astype(np.int64)
    length = notes_Nx4[:, notes_lib.DURATION].astype(np.int64)
    offset = onset + length
    bar_end = _bar_end_frames(onset)
    has_next, next_onset = _next_same_pitch_onset(onset, pitch)
    zero = ((offset < bar_end) & has_next & (next_onset == offset)) | (offset == bar_end)
    code = np.where(zero, 0, np.minimum(length, MAX_DURATION_FRAMES))
    n_clipped = int(np.sum(~zero & (length > MAX_DURATION_FRAMES)))
    return code, n_clipped


def _next_same_pitch_onset(onset_N: np.ndarray, pitch_N: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(whether one exists, its onset): the first onset of the same pitch strictly after each onset."""
    by_pitch = np.sort((pitch_N << _KEY_SHIFT) | onset_N)
    padded = np.append(by_pitch, _KEY_SENTINEL)
    following = padded[np.searchsorted(padded, (pitch_N << _KEY_SHIFT) | onset_N, side="right")]
    return (following >> _KEY_SHIFT) == pitch_N, following & ((1 << _KEY_SHIFT) - 1)


def decode_durations(onset_N: np.ndarray, pitch_N: np.ndarray, code_N: np.ndarray) -> np.ndarray:
    """Lengths in frames from duration codes; code 0 searches all the given notes.

    Code 0 lasts until the next onset of the same pitch strictly after this onset
    within the same bar, else until the bar line (SFS.md section 2).
    """
    onset = onset_N.astype(np.int64)
    pitch = pitch_N.astype(np.int64)
    bar_end = _bar_end_frames(onset)
    same_pitch, next_onset = _next_same_pitch_onset(onset, pitch)  # the sentinel never matches a pitch
    until = np.where(same_pitch & (next_onset < bar_end), next_onset, bar_end)
    return np.where(code_N == 0, until - onset, code_N).astype(np.int64)


# ---------------------------------------------------------------------------
# Validation shared by the encoders
# ---------------------------------------------------------------------------


def _sorted_checked_notes(notes_Nx4: np.ndarray) -> np.ndarray:
    """Notes sorted by (onset, pitch) as int64, refusing what the language cannot say.

    Each refusal names its cause, since it means ``normalize_notes`` was skipped.
    """
    notes = np.asarray(notes_Nx4).reshape(-1, len(notes_lib.NOTE_FIELDS)).astype(np.int64)
    onset, pitch, velocity, length = notes.T
    problems = {
        "negative onset": onset < 0,
        "pitch outside 21..108": (pitch < MIN_PITCH) | (pitch > MAX_PITCH),
        "velocity outside 0..127": (velocity < 0) | (velocity >= NUM_VELOCITIES),
        "duration below 1 frame": length < 1,
    }
    _raise_on_problems(notes, problems)
    key = (onset << _KEY_SHIFT) | pitch
    if np.all(key[1:] > key[:-1]):  # the usual case: normalize_notes output is sorted
        return notes
    order = np.argsort(key, kind="stable")
    notes, key = notes[order], key[order]
    duplicate = np.concatenate([[False], key[1:] == key[:-1]])
    _raise_on_problems(notes, {"duplicate (onset, pitch)": duplicate})
    return notes


def _raise_on_problems(notes_Nx4: np.ndarray, problems: dict[str, np.ndarray]) -> None:
    for what, bad in problems.items():
        if np.any(bad):
            raise ValueError(f"{what} in {int(np.sum(bad))} notes, e.g. {notes_Nx4[bad][0].tolist()}; "
                             "run notes.normalize_notes first")


def _note_rows(notes_Nx4: np.ndarray) -> tuple[np.ndarray, TokenizeStats]:
    """NOTE tokens (frame = onset) for sorted, checked notes, and the clip count."""
    code, n_clipped = encode_durations(notes_Nx4)
    rows = np.stack([np.full(len(notes_Nx4), _NOTE, np.int64), notes_Nx4[:, notes_lib.PITCH],
                     notes_Nx4[:, notes_lib.VELOCITY], code, notes_Nx4[:, notes_lib.ONSET]], axis=1)
    return rows.astype(np.int32), TokenizeStats(durations_clipped=n_clipped)


def _notes_from_rows(onset_N: np.ndarray, note_rows_Nx5: np.ndarray) -> np.ndarray:
    """Inverse of ``_note_rows`` given each note's onset; sorted by (onset, pitch)."""
    pitch = note_rows_Nx5[:, PITCH].astype(np.int64)
    ranges = {"pitch": (pitch, MIN_PITCH, MAX_PITCH),
              "velocity": (note_rows_Nx5[:, VEL], 0, NUM_VELOCITIES - 1),
              "duration": (note_rows_Nx5[:, DUR], 0, MAX_DURATION_FRAMES)}
    for what, (values, low, high) in ranges.items():
        if np.any((values < low) | (values > high)):
            raise ValueError(f"note token {what} outside {low}..{high}")
    length = decode_durations(onset_N, pitch, note_rows_Nx5[:, DUR])
    notes = np.stack([onset_N, pitch, note_rows_Nx5[:, VEL], length], axis=1).astype(np.int32)
    key = (onset_N.astype(np.int64) << _KEY_SHIFT) | pitch
    return notes if np.all(key[1:] >= key[:-1]) else notes[np.argsort(key, kind="stable")]


def _body(tokens_Tx5: np.ndarray) -> np.ndarray:
    """The rows before the first END or PAD: the part of a sequence that carries music."""
    tokens = np.asarray(tokens_Tx5).reshape(-1, len(TOKEN_FIELDS))
    stops = np.flatnonzero((tokens[:, TYPE] == _END) | (tokens[:, TYPE] == _PAD))
    return tokens[: stops[0]] if len(stops) else tokens


def frames_from_types(type_T: np.ndarray) -> np.ndarray:
    """The frame column implied by the types alone (SFS.md 2: positions are not tokens).

    FRAME and NOTE: count of FRAME tokens up to and including the row, minus one
    (so -1 for a note before any FRAME); END: the count itself (one past the last
    frame); PAD: 0, like zero-filled padding.
    """
    is_frame = type_T == _FRAME
    frames = np.cumsum(is_frame) - 1 + (type_T == _END)
    return np.where(type_T == _PAD, 0, frames).astype(np.int32)


# ---------------------------------------------------------------------------
# Target form
# ---------------------------------------------------------------------------


def encode_target(notes_Nx4: np.ndarray, n_frames: int) -> tuple[np.ndarray, TokenizeStats]:
    """Target tokens of a segment: FRAME per frame, its notes by ascending pitch, END.

    ``notes_Nx4`` onsets are relative to the segment start (a bar line); notes may
    sound past ``n_frames``. Length of the result: n_frames + N + 1.
    """
    if n_frames < 0:
        raise ValueError(f"n_frames must be >= 0, got {n_frames}")
    raw_onset = np.asarray(notes_Nx4).reshape(-1, len(notes_lib.NOTE_FIELDS))[:, notes_lib.ONSET]
    outside = (raw_onset < 0) | (raw_onset >= n_frames)
    if np.any(outside):
        raise ValueError(f"{int(np.sum(outside))} notes have onsets outside the segment's frames "
                         f"[0, {n_frames}), e.g. onset {int(raw_onset[outside][0])}")
    notes = _sorted_checked_notes(notes_Nx4)
    onset = notes[:, notes_lib.ONSET]
    note_rows, stats = _note_rows(notes)
    tokens = np.zeros((n_frames + len(notes) + 1, len(TOKEN_FIELDS)), np.int32)
    # FRAME f is preceded by f FRAMEs and by the notes of frames < f; note i (in sorted
    # order) by the FRAMEs 0..onset_i and by the i notes before it.
    frame_index = np.arange(n_frames)
    frame_pos = frame_index + np.searchsorted(onset, frame_index, side="left")
    tokens[frame_pos, TYPE] = _FRAME
    tokens[frame_pos, FRAME] = frame_index
    tokens[onset + 1 + np.arange(len(notes))] = note_rows
    tokens[-1, TYPE] = _END
    tokens[-1, FRAME] = n_frames
    return tokens, stats


def decode_target(tokens_Tx5: np.ndarray) -> np.ndarray:
    """Notes of a target sequence, sorted by (onset, pitch); stops at END or PAD.

    Frames are recounted from the FRAME tokens (the frame column is not trusted), so
    a sampled sequence decodes by the same rule the model was trained on.
    """
    body = _body(tokens_Tx5)
    types = body[:, TYPE]
    unknown = (types != _FRAME) & (types != _NOTE)
    if np.any(unknown):
        raise ValueError(f"token types {sorted(set(types[unknown].tolist()))} inside a target sequence")
    frames = frames_from_types(types)
    is_note = types == _NOTE
    if np.any(frames[is_note] < 0):
        raise ValueError("a NOTE token comes before the first FRAME token")
    return _notes_from_rows(frames[is_note].astype(np.int64), body[is_note])


# ---------------------------------------------------------------------------
# Context form
# ---------------------------------------------------------------------------


def encode_context(notes_Nx4: np.ndarray) -> np.ndarray:
    """Context tokens: NOTE tokens only, frame column = onset, sorted by (frame, pitch)."""
    note_rows, _ = _note_rows(_sorted_checked_notes(notes_Nx4))
    return note_rows


def decode_context(tokens_Tx5: np.ndarray) -> np.ndarray:
    """Notes of a context sequence (stops at END or PAD), sorted by (onset, pitch)."""
    body = _body(tokens_Tx5)
    if np.any(body[:, TYPE] != _NOTE):
        raise ValueError("a context sequence holds NOTE tokens only")
    return _notes_from_rows(body[:, FRAME].astype(np.int64), body)


def count_token_errors(tokens_Tx5: np.ndarray) -> int:
    """Tokens breaking the target grammar (at most one error per token).

    Errors: an unknown type; a NOTE before the first FRAME, not strictly above the
    previous pitch of its frame, or with a value outside its class range; anything
    but PAD after the first END. Used for miditok's ``tokens_errors`` on samples.
    """
    tokens = np.asarray(tokens_Tx5).reshape(-1, len(TOKEN_FIELDS)).astype(np.int64)
    types = tokens[:, TYPE]
    is_note = types == _NOTE
    previous_is_note = np.concatenate([[False], is_note[:-1]])
    previous_pitch = np.concatenate([[0], tokens[:-1, PITCH]])
    out_of_range = ((tokens[:, PITCH] < MIN_PITCH) | (tokens[:, PITCH] > MAX_PITCH)
                    | (tokens[:, VEL] < 0) | (tokens[:, VEL] >= NUM_VELOCITIES)
                    | (tokens[:, DUR] < 0) | (tokens[:, DUR] > MAX_DURATION_FRAMES))
    bad_note = is_note & ((frames_from_types(types) < 0) | out_of_range
                          | (previous_is_note & (tokens[:, PITCH] <= previous_pitch)))
    after_end = np.cumsum(types == _END) - (types == _END) > 0
    bad = ((types < _PAD) | (types > _END)) | bad_note | (after_end & (types != _PAD))
    return int(np.sum(bad))


# ---------------------------------------------------------------------------
# miditok glue
# ---------------------------------------------------------------------------


def score_to_notes(score: symusic.Score) -> np.ndarray:
    """A 4/4 score on the frame grid the way the data pipeline reads MIDI (midi_io).

    All non-drum tracks merged, sustain applied, onsets/offsets rounded to 1/8 beat
    with the score's own ticks per quarter, then ``normalize_notes``.
    """
    midi_io.check_four_four(score)
    try:
        raw = midi_io.merge_tracks(score)
    except midi_io.MidiSkip as err:
        if err.reason != "no_pitched_notes":
            raise
        return notes_lib.empty_notes()
    ticks_per_quarter = float(score.ticks_per_quarter)
    notes, _ = midi_io.quantize(raw, lambda ticks: ticks / ticks_per_quarter)
    return notes


# Grid parameters stored in TokenizerConfig.additional_params: the numpy codec above is
# built for exactly these, so a saved config that disagrees is refused on load.
_GRID_PARAMS = {
    "frames_per_beat": FRAMES_PER_BEAT,
    "frames_per_bar": FRAMES_PER_BAR,
    "max_duration_frames": MAX_DURATION_FRAMES,
}
# Names of the Type stream, indexed by TokenType (PAD is miditok's own special token).
_TYPE_TOKENS = {TokenType.FRAME: "Type_Frame", TokenType.NOTE: "Type_Note", TokenType.END: "Type_End"}
# (token column, miditok token type, values) of the three value streams, in stream order.
_VALUE_STREAMS = (
    (PITCH, "Pitch", range(MIN_PITCH, MAX_PITCH + 1)),
    (VEL, "Velocity", range(NUM_VELOCITIES)),
    (DUR, "Duration", range(NUM_DURATIONS)),
)
_PAD_TOKEN = "PAD_None"
_IGNORE_TOKEN = "Ignore_None"  # miditok's (CPWord's) filler for a field a token lacks


def sfs_tokenizer_config(**overrides: object) -> miditok.TokenizerConfig:
    """The TokenizerConfig of ``SFSFrameTokenizer``: one piano stream, 1/8-beat grid."""
    params = {
        "pitch_range": (MIN_PITCH, MAX_PITCH),  # inclusive in miditok 3.x
        "beat_res": {(0, MAX_DURATION_FRAMES // FRAMES_PER_BEAT): FRAMES_PER_BEAT},
        "num_velocities": NUM_VELOCITIES - 1,  # miditok's 1..127 bins: velocities untouched
        **_GRID_PARAMS,
        **overrides,
    }
    return miditok.TokenizerConfig(**params)


class SFSFrameTokenizer(miditok.MusicTokenizer):
    """The SFS target language as a multi-vocabulary (compound, like CPWord) miditok tokenizer.

    Each token is 4 ids, one per stream: Type (Frame/Note/End), Pitch 21..108,
    Velocity 0..127, Duration 0..64; FRAME and END carry ``Ignore_None`` in the value
    streams, PAD is ``PAD_None`` everywhere. ``encode(score)`` reads the score like the
    data pipeline (``score_to_notes``), treats the whole song as one target segment of
    ``bars_spanned`` bars, and calls ``encode_target``; ``decode`` calls
    ``decode_target``. Ids convert to/from ``tokens_Tx5`` with ``array_to_ids`` /
    ``ids_to_array``, vectorized.
    """

    def __init__(self, tokenizer_config: miditok.TokenizerConfig | None = None,
                 params: str | Path | None = None) -> None:
        if tokenizer_config is None and params is None:
            tokenizer_config = sfs_tokenizer_config()
        super().__init__(tokenizer_config, params)
        self._build_id_tables()

    # -- configuration and vocabulary ------------------------------------------

    def _tweak_config_before_creating_voc(self) -> None:
        """Forces what the language assumes; runs on creation and on load alike.

        All tracks are merged into one piano stream (use_programs with program 0 and
        one stream is how miditok spells that, and makes the i/o format (T, C));
        tempo, meter, pedal and the other extras are not part of SFS.md section 2.
        """
        config = self.config
        for key, value in _GRID_PARAMS.items():
            stored = config.additional_params.setdefault(key, value)
            if stored != value:
                raise ValueError(f"{key}={stored} in the config, but the SFS codec is built for {value}")
        if tuple(config.pitch_range) != (MIN_PITCH, MAX_PITCH):
            raise ValueError(f"pitch_range must be ({MIN_PITCH}, {MAX_PITCH}), got {config.pitch_range}")
        if _PAD_TOKEN not in config.special_tokens:
            raise ValueError("SFSFrameTokenizer needs the PAD special token (TokenType.PAD maps to it)")
        config.use_programs = True
        config.programs = [0]
        config.one_token_stream_for_programs = True
        config.program_changes = False
        for flag in ("use_chords", "use_rests", "use_tempos", "use_time_signatures",
                     "use_key_signatures", "use_sustain_pedals", "use_pitch_bends",
                     "use_control_changes", "use_pitch_intervals", "use_pitchdrum_tokens"):
            setattr(config, flag, False)
        self._disable_attribute_controls()

    def _create_base_vocabulary(self) -> list[list[str]]:
        """Four streams; miditok prepends its special tokens to each."""
        vocab = [list(_TYPE_TOKENS.values())]
        vocab += [[_IGNORE_TOKEN, *(f"{name}_{value}" for value in values)]
                  for _, name, values in _VALUE_STREAMS]
        return vocab

    def _create_token_types_graph(self) -> dict[str, set[str]]:
        """Successions of the Type stream's values: nothing follows End but specials."""
        return {"Frame": {"Frame", "Note", "End"}, "Note": {"Note", "Frame", "End"}, "End": set()}

    def _build_id_tables(self) -> None:
        """Lookup arrays between the token columns and each stream's ids."""
        type_vocab = self.vocab[0]
        self._type_to_id = np.array([type_vocab[_PAD_TOKEN]]
                                    + [type_vocab[name] for name in _TYPE_TOKENS.values()])
        self._id_to_type = np.full(len(type_vocab), -1, np.int64)
        self._id_to_type[self._type_to_id] = np.arange(NUM_TOKEN_TYPES)
        self._value_to_id, self._id_to_value, self._fill_ids = [], [], []
        for stream, (_, name, values) in enumerate(_VALUE_STREAMS, start=1):
            vocab = self.vocab[stream]
            value_to_id = np.full(max(values) + 1, -1, np.int64)
            value_to_id[list(values)] = [vocab[f"{name}_{value}"] for value in values]
            id_to_value = np.full(len(vocab), -1, np.int64)
            id_to_value[value_to_id[list(values)]] = list(values)
            self._value_to_id.append(value_to_id)
            self._id_to_value.append(id_to_value)
            self._fill_ids.append((vocab[_PAD_TOKEN], vocab[_IGNORE_TOKEN]))

    # -- ids <-> token array ---------------------------------------------------

    def array_to_ids(self, tokens_Tx5: np.ndarray) -> np.ndarray:
        """miditok ids [T, 4] (Type, Pitch, Velocity, Duration) of a token array."""
        tokens = np.asarray(tokens_Tx5).reshape(-1, len(TOKEN_FIELDS)).astype(np.int64)
        types = tokens[:, TYPE]
        if np.any((types < 0) | (types >= NUM_TOKEN_TYPES)):
            raise ValueError("token type outside 0..3")
        ids = np.empty((len(tokens), 1 + len(_VALUE_STREAMS)), np.int64)
        ids[:, 0] = self._type_to_id[types]
        is_note = types == _NOTE
        for stream, (column, name, _) in enumerate(_VALUE_STREAMS, start=1):
            table = self._value_to_id[stream - 1]
            values = tokens[:, column]
            in_range = (values >= 0) & (values < len(table))
            note_ids = table[np.where(in_range, values, 0)]
            if np.any(is_note & ((~in_range) | (note_ids < 0))):
                raise ValueError(f"note token {name} outside the vocabulary")
            pad_id, ignore_id = self._fill_ids[stream - 1]
            ids[:, stream] = np.where(is_note, note_ids, np.where(types == _PAD, pad_id, ignore_id))
        return ids

    def ids_to_array(self, ids_Tx4: np.ndarray) -> np.ndarray:
        """Token array of miditok ids; the frame column is recomputed from the types.

        Ids with no meaning in the language (BOS, MASK, a filler where a NOTE needs a
        value) become -1, which ``decode_target`` refuses and ``count_token_errors``
        counts.
        """
        ids = np.asarray(ids_Tx4, np.int64).reshape(-1, 1 + len(_VALUE_STREAMS))
        tokens = np.zeros((len(ids), len(TOKEN_FIELDS)), np.int64)
        tokens[:, TYPE] = _lookup(self._id_to_type, ids[:, 0])
        is_note = tokens[:, TYPE] == _NOTE
        for stream, (column, _, _) in enumerate(_VALUE_STREAMS, start=1):
            tokens[:, column] = np.where(is_note, _lookup(self._id_to_value[stream - 1], ids[:, stream]), 0)
        tokens[:, FRAME] = frames_from_types(tokens[:, TYPE])
        return tokens.astype(np.int32)

    # -- miditok hooks -----------------------------------------------------------

    def preprocess_score(self, score: symusic.Score) -> symusic.Score:
        """The score as the data pipeline sees it (merged, quantized, normalized notes).

        Replaces miditok's resampling, which would drop out-of-range pitches instead of
        folding them, ignore the pedal and snap durations to its own bins.
        """
        return midi_io.notes_to_score(score_to_notes(score), midi_io.first_tempo_bpm(score))

    def _score_to_tokens(self, score: symusic.Score,
                         attribute_controls_indexes: object = None) -> TokSequence:
        """The whole song as one target segment: ``encode_target`` over its bars."""
        notes_Nx4 = score_to_notes(score)
        tokens_Tx5, _ = encode_target(notes_Nx4, notes_lib.bars_spanned(notes_Nx4) * FRAMES_PER_BAR)
        sequence = TokSequence(ids=self.array_to_ids(tokens_Tx5).tolist())
        self.complete_sequence(sequence)
        return sequence

    def _add_time_events(self, events: list[Event], time_division: int) -> list[Event]:
        """Never called: time is intrinsic to the language (one FRAME token per frame).

        miditok inserts time tokens between note events here; ``_score_to_tokens`` is
        overridden to go through ``encode_target`` instead, so no event list exists.
        """
        raise NotImplementedError("SFSFrameTokenizer encodes through _score_to_tokens/encode_target")

    def _tokens_to_score(self, tokens: TokSequence,
                         programs: list[tuple[int, bool]] | None = None) -> symusic.Score:
        """``decode_target`` of the ids, written as one piano track (midi_io.notes_to_score)."""
        notes_Nx4 = decode_target(self.ids_to_array(np.asarray(tokens.ids, np.int64)))
        return midi_io.notes_to_score(notes_Nx4, float(self.default_tempo))

    def _tokens_errors(self, tokens: list[list[str]]) -> int:
        """Grammar errors of a (sampled) sequence, through ``count_token_errors``."""
        return count_token_errors(self.ids_to_array(np.asarray(self._tokens_to_ids(tokens))))


def _lookup(table_V: np.ndarray, ids_T: np.ndarray) -> np.ndarray:
    """table[ids] with -1 for ids outside the table."""
    inside = (ids_T >= 0) & (ids_T < len(table_V))
    return np.where(inside, table_V[np.where(inside, ids_T, 0)], -1)


def remi_tokenizer() -> miditok.REMI:
    """miditok's stock REMI on the SFS grid, for the tokenization ablation.

    1/8-beat positions (32 per bar) and durations of 1..64 frames at 1/8 beat, so
    every onset and (clipped) length of ``notes_Nx4`` is representable; 88 pitches;
    32 velocity bins; one track, no programs; no TimeSig tokens (the grid is 4/4 only),
    which also makes its decoded scores use 8 ticks per quarter, i.e. tick == frame.
    """
    config = miditok.TokenizerConfig(
        pitch_range=(MIN_PITCH, MAX_PITCH),
        beat_res={(0, 4): FRAMES_PER_BEAT, (4, MAX_DURATION_FRAMES // FRAMES_PER_BEAT): FRAMES_PER_BEAT},
        num_velocities=32,
        use_programs=False,
        use_time_signatures=False,
    )
    return miditok.REMI(config)
