"""Token and position embeddings (SFS.md section 3).

Letters: B batch, T tokens, D model width.

A note token is the sum of pitch, velocity and duration embeddings; FRAME, END and
the decoder's START have one learned vector each (by type). Positions are not
token indices: each token carries its frame in the song, and the positional code
is sinusoids of the distance from the song's start and end and from its
segment's start and end, plus a learned vector per frame within the bar (the
beat one-hot times a matrix).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from sfs_jax.music import notes as notes_lib
from sfs_jax.music.tokenizer import NUM_DURATIONS, NUM_TOKEN_TYPES, TokenType

START_TYPE = int(TokenType.PAD)  # the decoder's first input reuses the PAD row: PAD inputs are masked
SINUSOID_DIM = 32


def sinusoids(values_BxT: jax.Array, dim: int, max_period: float) -> jax.Array:
    """Standard sin/cos code of a scalar per token, periods from 1 to max_period."""
    half = dim // 2
    freqs = jnp.exp(-jnp.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = values_BxT.astype(jnp.float32)[..., None] * freqs
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def pitch_index(pitch_BxT: jax.Array) -> jax.Array:
    """MIDI pitch 21..108 -> 1..88; anything else (non-note tokens) -> 0."""
    valid = (pitch_BxT >= notes_lib.MIN_PITCH) & (pitch_BxT <= notes_lib.MAX_PITCH)
    return jnp.where(valid, pitch_BxT - notes_lib.MIN_PITCH + 1, 0)


class TokenEmbedding(nnx.Module):
    """Compound note embedding plus a per-type vector."""

    def __init__(self, d_model: int, *, rngs: nnx.Rngs) -> None:
        self.type = nnx.Embed(NUM_TOKEN_TYPES, d_model, rngs=rngs)
        self.pitch = nnx.Embed(notes_lib.NUM_PITCHES + 1, d_model, rngs=rngs)
        self.velocity = nnx.Embed(notes_lib.NUM_VELOCITIES, d_model, rngs=rngs)
        self.duration = nnx.Embed(NUM_DURATIONS, d_model, rngs=rngs)

    def __call__(self, type_BxT, pitch_BxT, velocity_BxT, duration_BxT) -> jax.Array:
        is_note = (type_BxT == TokenType.NOTE)[..., None]
        note = (self.pitch(pitch_index(pitch_BxT)) + self.velocity(jnp.clip(velocity_BxT, 0, 127))
                + self.duration(jnp.clip(duration_BxT, 0, NUM_DURATIONS - 1)))
        return self.type(type_BxT) + jnp.where(is_note, note, 0.0)


class PositionCode(nnx.Module):
    """Song (and optionally segment) distance sinusoids -> D, plus frame-in-bar vectors."""

    def __init__(self, d_model: int, *, use_segment_positions: bool, max_period_frames: float,
                 rngs: nnx.Rngs) -> None:
        n_codes = 4 if use_segment_positions else 2
        self.use_segment_positions = use_segment_positions
        self.max_period_frames = max_period_frames
        self.project = nnx.Linear(n_codes * SINUSOID_DIM, d_model, rngs=rngs)
        self.frame_in_bar = nnx.Embed(notes_lib.FRAMES_PER_BAR, d_model, rngs=rngs)

    def __call__(self, song_frame_BxT, song_n_frames_B, segment_start_BxT, segment_end_BxT) -> jax.Array:
        distances = [song_frame_BxT, song_n_frames_B[:, None] - song_frame_BxT]
        if self.use_segment_positions:
            distances += [song_frame_BxT - segment_start_BxT, segment_end_BxT - song_frame_BxT]
        code = jnp.concatenate([sinusoids(d, SINUSOID_DIM, self.max_period_frames) for d in distances], -1)
        beat = self.frame_in_bar(jnp.mod(song_frame_BxT, notes_lib.FRAMES_PER_BAR))
        return self.project(code) + beat
