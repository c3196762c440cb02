"""Token and position embeddings (SFS.md section 3; ``../shared/reference/README.md`` section 5.1).

Letters: B batch, T tokens, D model width, R table rows.

A note token is the sum of pitch, velocity and duration embeddings. Positions are
not token indices: each token carries its frame in the song, and the position code
is added to the token embedding.

Two forms of each (``ModelConfig.token_layout`` / ``position_code``):

- reference: FRAME (and END) tokens read one learned vector, PAD reads 0; the position
  code is a fixed 96-dim table, zero-padded to D: sinusoids of the frame's distance
  from the song's start and end (32), from its segment's start and end (32), and a
  one-hot of the frame within the bar (32). Token embeddings start N(0, 1), so the
  content dominates the input (a note's RMS about 1.7 against the code's 0.25).
- v1 (this project's first design): a learned vector per token type (PAD, FRAME,
  NOTE, END, and the decoder's START on the PAD row) plus the note sum; sinusoids of
  the four distances through a learned projection, plus a learned vector per frame in
  the bar.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sfs_jax.model.config import ModelConfig
from sfs_jax.model.initializers import Buffer, embed, linear
from sfs_jax.music import notes as notes_lib
from sfs_jax.music.tokenizer import NUM_DURATIONS, NUM_TOKEN_TYPES, TokenType

START_TYPE = int(TokenType.PAD)  # v1: the decoder's first input reuses the PAD row: PAD inputs are masked
SINUSOID_DIM = 32  # each start/end code: 16 dims from the start, 16 from the end
BEAT_DIM = notes_lib.FRAMES_PER_BAR
_FRAME, _NOTE, _END = int(TokenType.FRAME), int(TokenType.NOTE), int(TokenType.END)


# ---------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------


def sinusoid_table(rows: int, dim: int) -> np.ndarray:
    """[rows, dim] float32: row q = [sin(q w0), cos(q w0), sin(q w1), ...], w_i = 10000^(-2i/dim).

    Computed in float32 the way PyTorch builds the reference's buffers (float32
    position times float32 frequency), so a fresh table matches an imported one
    to float32 rounding of sin/cos.
    """
    position = np.arange(rows, dtype=np.float32)[:, None]
    inv_freq = np.exp(np.arange(0, dim, 2, dtype=np.float32) * np.float32(-np.log(10000.0) / dim))
    angles = (position * inv_freq.astype(np.float32)).astype(np.float32)
    table = np.zeros((rows, dim), np.float32)
    table[:, 0::2], table[:, 1::2] = np.sin(angles), np.cos(angles)
    return table


def beat_table(rows: int) -> np.ndarray:
    """[rows, 32] float32: row p is the one-hot of p mod 32 (the frame within its bar)."""
    return np.eye(BEAT_DIM, dtype=np.float32)[np.arange(rows) % BEAT_DIM]


def start_end_code(table_RxC: jax.Array, position_BxT: jax.Array, length_BxT: jax.Array) -> jax.Array:
    """[S(q), S(length - 1 - q)]: where a position sits from a span's start and from its end.

    Indices outside the table are clipped (the reference wraps them; both only happen at
    padding, whose outputs are never read).
    """
    take = lambda index: jnp.take(table_RxC, index, axis=0, mode="clip")
    return jnp.concatenate([take(position_BxT), take(length_BxT - 1 - position_BxT)], axis=-1)


def pitch_index(pitch_BxT: jax.Array) -> jax.Array:
    """v1: MIDI pitch 21..108 -> 1..88; anything else (non-note tokens) -> 0."""
    valid = (pitch_BxT >= notes_lib.MIN_PITCH) & (pitch_BxT <= notes_lib.MAX_PITCH)
    return jnp.where(valid, pitch_BxT - notes_lib.MIN_PITCH + 1, 0)


def note_class(pitch_BxT: jax.Array) -> jax.Array:
    """Reference: MIDI pitch 21..108 -> 0..87; anything else (FRAME, END, PAD carry pitch 0) -> 0."""
    valid = (pitch_BxT >= notes_lib.MIN_PITCH) & (pitch_BxT <= notes_lib.MAX_PITCH)
    return jnp.where(valid, pitch_BxT - notes_lib.MIN_PITCH, 0)


def condition_pitch_index(pitch_BxT: jax.Array, token_layout: str) -> jax.Array:
    """The row of a head's pitch-condition table for a (teacher-forced or sampled) pitch."""
    return note_class(pitch_BxT) if token_layout == "reference" else pitch_index(pitch_BxT)


# ---------------------------------------------------------------------------
# Token content
# ---------------------------------------------------------------------------


class TokenEmbedding(nnx.Module):
    """Compound note embedding, plus the FRAME vector (reference) or a per-type vector (v1)."""

    def __init__(self, d_model: int, *, token_layout: str, init: str, rngs: nnx.Rngs) -> None:
        self.token_layout = token_layout
        n_pitch_rows = notes_lib.NUM_PITCHES if token_layout == "reference" else notes_lib.NUM_PITCHES + 1
        if token_layout == "reference":
            self.frame = embed(1, d_model, init=init, rngs=rngs)
        else:
            self.type = embed(NUM_TOKEN_TYPES, d_model, init=init, rngs=rngs)
        self.pitch = embed(n_pitch_rows, d_model, init=init, rngs=rngs)
        self.velocity = embed(notes_lib.NUM_VELOCITIES, d_model, init=init, rngs=rngs)
        self.duration = embed(NUM_DURATIONS, d_model, init=init, rngs=rngs)

    def __call__(self, type_BxT, pitch_BxT, velocity_BxT, duration_BxT) -> jax.Array:
        is_note = (type_BxT == _NOTE)[..., None]
        pitch_row = condition_pitch_index(pitch_BxT, self.token_layout)
        note = (self.pitch(pitch_row) + self.velocity(jnp.clip(velocity_BxT, 0, 127))
                + self.duration(jnp.clip(duration_BxT, 0, NUM_DURATIONS - 1)))
        if self.token_layout == "v1":
            return self.type(type_BxT) + jnp.where(is_note, note, 0.0)
        is_frame = ((type_BxT == _FRAME) | (type_BxT == _END))[..., None]
        frame = self.frame.embedding.value[0]
        return jnp.where(is_note, note, jnp.where(is_frame, frame, 0.0))


# ---------------------------------------------------------------------------
# Position codes
# ---------------------------------------------------------------------------


class FixedPositionCode(nnx.Module):
    """The reference's position code: a table lookup, no parameters (dims 0..95 of D, the rest 0).

    Buffers as the reference stores them (``start_end_pe.pe`` [R, 16], ``beat_pe`` [R, 32]),
    so imported tables replace these exactly.
    """

    def __init__(self, d_model: int, *, rows: int, use_segment_positions: bool) -> None:
        self.start_end = Buffer(jnp.asarray(sinusoid_table(rows, SINUSOID_DIM // 2)))
        self.beat = Buffer(jnp.asarray(beat_table(rows)))
        self.d_model, self.use_segment_positions = d_model, use_segment_positions

    def __call__(self, song_frame_BxT, song_n_frames_B, segment_start_BxT, segment_end_BxT) -> jax.Array:
        table = self.start_end.value
        song = start_end_code(table, song_frame_BxT, jnp.broadcast_to(song_n_frames_B[:, None], song_frame_BxT.shape))
        segment = start_end_code(table, song_frame_BxT - segment_start_BxT, segment_end_BxT - segment_start_BxT)
        if not self.use_segment_positions:
            segment = jnp.zeros_like(segment)
        # Slices start on bar lines, so the reference's beat row (frame in slice) is frame mod 32 in the song.
        beat = jnp.take(self.beat.value, jnp.mod(song_frame_BxT, BEAT_DIM), axis=0)
        code = jnp.concatenate([song, segment, beat], axis=-1)
        return jnp.pad(code, [(0, 0)] * (code.ndim - 1) + [(0, self.d_model - code.shape[-1])])


class BeatCode(nnx.Module):
    """The bar VAE encoder's code: only the frame-in-bar one-hot, in dims 0..31 (``beat_pe`` [32, 32])."""

    def __init__(self, d_model: int) -> None:
        self.beat = Buffer(jnp.asarray(beat_table(BEAT_DIM)))
        self.d_model = d_model

    def __call__(self, frame_BxT: jax.Array) -> jax.Array:
        beat = jnp.take(self.beat.value, jnp.mod(frame_BxT, BEAT_DIM), axis=0)
        return jnp.pad(beat, [(0, 0)] * (beat.ndim - 1) + [(0, self.d_model - BEAT_DIM)])


def sinusoids(values_BxT: jax.Array, dim: int, max_period: float) -> jax.Array:
    """v1: standard sin/cos code of a scalar per token, periods from 1 to max_period."""
    half = dim // 2
    freqs = jnp.exp(-jnp.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = values_BxT.astype(jnp.float32)[..., None] * freqs
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class LearnedPositionCode(nnx.Module):
    """v1: song (and optionally segment) distance sinusoids -> D, plus frame-in-bar vectors."""

    def __init__(self, d_model: int, *, use_segment_positions: bool, max_period_frames: float, init: str,
                 rngs: nnx.Rngs) -> None:
        n_codes = 4 if use_segment_positions else 2
        self.use_segment_positions = use_segment_positions
        self.max_period_frames = max_period_frames
        self.project = linear(n_codes * SINUSOID_DIM, d_model, init=init, rngs=rngs)
        self.frame_in_bar = embed(notes_lib.FRAMES_PER_BAR, d_model, init=init, rngs=rngs)

    def __call__(self, song_frame_BxT, song_n_frames_B, segment_start_BxT, segment_end_BxT) -> jax.Array:
        distances = [song_frame_BxT, song_n_frames_B[:, None] - song_frame_BxT]
        if self.use_segment_positions:
            distances += [song_frame_BxT - segment_start_BxT, segment_end_BxT - song_frame_BxT]
        code = jnp.concatenate([sinusoids(d, SINUSOID_DIM, self.max_period_frames) for d in distances], -1)
        beat = self.frame_in_bar(jnp.mod(song_frame_BxT, notes_lib.FRAMES_PER_BAR))
        return self.project(code) + beat


def position_code(config: ModelConfig, rngs: nnx.Rngs) -> nnx.Module:
    """The position code ``config`` names, for the context encoder or the decoder."""
    if config.position_code == "fixed":
        return FixedPositionCode(config.d_model, rows=config.max_position_frames,
                                 use_segment_positions=config.use_segment_positions)
    return LearnedPositionCode(config.d_model, use_segment_positions=config.use_segment_positions,
                               max_period_frames=config.max_position_frames, init=config.init, rngs=rngs)
