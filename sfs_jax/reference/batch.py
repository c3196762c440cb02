"""The authors' collated batch -> our batch dict (``sfs_jax.data.loader.collate``'s keys).

Place in the data flow: beside [4]. ``../shared/reference/README.md`` section 3 gives
their layout: per group (target, then the context slots left, right, seed, reference)
``token`` columns (pitch index, velocity, duration class), ``token_type`` (-1 PAD,
0 FRAME, 1 NOTE; END is the last FRAME-type token, at pos 0), ``pos`` (frame in the
slice) and the slice's shift and duration fields. Ours stores tokens by meaning
(``TokenType``, MIDI pitch, song frames). The context slots stay in their padded
tensors side by side (a pad between slots carries slot 0), so our encoded contexts
line up position for position with theirs.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from sfs_jax.music.contexts import ContextSlot
from sfs_jax.music.notes import FRAMES_PER_BAR, FRAMES_PER_BEAT, MIN_PITCH
from sfs_jax.music.tokenizer import TokenType

SLOTS = {"left": ContextSlot.LEFT, "right": ContextSlot.RIGHT, "seed": ContextSlot.SEED,
         "reference": ContextSlot.REF}
_THEIR_PAD, _THEIR_FRAME, _THEIR_NOTE = -1, 0, 1


def _types(their_type_BxT: np.ndarray) -> np.ndarray:
    ours = np.full(their_type_BxT.shape, int(TokenType.PAD), np.int32)
    ours[their_type_BxT == _THEIR_FRAME] = int(TokenType.FRAME)
    ours[their_type_BxT == _THEIR_NOTE] = int(TokenType.NOTE)
    return ours


def _note_fields(inputs: Mapping[str, np.ndarray], group: str, is_note_BxT: np.ndarray) -> dict[str, np.ndarray]:
    """MIDI pitch, velocity and duration class of note tokens (0 elsewhere, as in our examples)."""
    pitch = np.where(is_note_BxT, inputs[f"{group}.pitch"] + MIN_PITCH, 0)
    velocity = np.where(is_note_BxT, inputs[f"{group}.velocity"], 0)
    duration = np.where(is_note_BxT, inputs[f"{group}.duration"], 0)
    return {"pitch": pitch.astype(np.int32), "velocity": velocity.astype(np.int32),
            "duration": duration.astype(np.int32)}


def target_fields(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Our ``target_*`` fields and window scalars from their ``target.*`` group."""
    their_type = inputs["target.token_type"]
    types = _types(their_type)
    real = their_type != _THEIR_PAD
    lengths = real.sum(axis=1)
    rows = np.arange(len(types))
    end = lengths - 1
    if np.any(lengths < 2) or np.any(their_type[rows, end] != _THEIR_FRAME) or np.any(inputs["target.pos"][rows, end]):
        raise ValueError("every target row must end with END (a FRAME-type token at pos 0) after its frames")
    types[rows, end] = int(TokenType.END)
    n_frames = np.sum(types == int(TokenType.FRAME), axis=1)
    shift = inputs["target.shift_from_song_start"].astype(np.int64)
    if np.any(shift % FRAMES_PER_BAR):
        raise ValueError(f"target slices must start on bar lines, got shifts {shift.tolist()}")
    frame = np.where(real, inputs["target.pos"], 0)
    frame[rows, end] = n_frames
    song_frame = shift[:, None] + frame
    window_end_bar = (shift + n_frames) // FRAMES_PER_BAR
    bar = np.minimum(song_frame // FRAMES_PER_BAR, window_end_bar[:, None] - 1)
    segment_start = shift - inputs["target.shift_from_segment_start"]
    fields = _note_fields(inputs, "target", types == int(TokenType.NOTE))
    return {
        "target_type": types, **{f"target_{k}": v for k, v in fields.items()},
        "target_frame": frame.astype(np.int32), "target_song_frame": song_frame.astype(np.int32),
        "target_bar": bar.astype(np.int32),
        "segment_start_frame": segment_start.astype(np.int32),
        "segment_end_frame": (segment_start + inputs["target.segment_duration"]).astype(np.int32),
        "song_n_frames": inputs["target.song_duration"].astype(np.int32),
        "window_start_bar": (shift // FRAMES_PER_BAR).astype(np.int32),
        "n_beats": (n_frames / FRAMES_PER_BEAT).astype(np.float32),
        "n_bars": (inputs["target.song_duration"] // FRAMES_PER_BAR).astype(np.int32),
        "global_start_bar": np.zeros(len(types), np.int32),
    }


def context_fields(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Our ``context_*`` fields: their slot tensors concatenated in ``context.order``."""
    parts = []
    for name in [str(n) for n in inputs["context.order"]]:
        group = f"context.{name}"
        their_type = inputs[f"{group}.token_type"]
        real = their_type != _THEIR_PAD
        if np.any(their_type[real] != _THEIR_NOTE):
            raise ValueError(f"{group} holds non-note tokens; contexts are notes only")
        shift = inputs[f"{group}.shift_from_song_start"][:, None]
        segment_start = shift - inputs[f"{group}.shift_from_segment_start"][:, None]
        segment_end = segment_start + inputs[f"{group}.segment_duration"][:, None]
        fields = _note_fields(inputs, group, real)
        shape = their_type.shape
        parts.append({
            "context_pitch": fields["pitch"], "context_velocity": fields["velocity"],
            "context_duration": fields["duration"],
            "context_song_frame": np.where(real, inputs[f"{group}.pos"] + shift, 0),
            "context_slot": np.where(real, int(SLOTS[name]), 0),
            "context_segment_start_frame": np.broadcast_to(segment_start, shape),
            "context_segment_end_frame": np.broadcast_to(segment_end, shape),
        })
    return {key: np.concatenate([part[key] for part in parts], axis=1).astype(np.int32) for key in parts[0]}


def bar_fields(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """G's inputs: their (already masked) bar embeddings, the known mask, and which bars each song has."""
    embeddings = inputs["bar_embeddings"]
    n_bars = inputs["target.song_duration"] // FRAMES_PER_BAR
    return {"bar_embedding": embeddings, "bar_known": inputs["bar_embeddings_mask"].astype(bool),
            "bar_valid": np.arange(embeddings.shape[1])[None, :] < n_bars[:, None]}


def to_batch(inputs: Mapping[str, np.ndarray], float_dtype: np.dtype = np.float32) -> dict[str, np.ndarray]:
    """Our model's batch for their forward batch (``inputs.npz`` of a golden case)."""
    batch = {**target_fields(inputs), **context_fields(inputs), **bar_fields(inputs)}
    batch["bar_embedding"] = batch["bar_embedding"].astype(float_dtype)
    return batch


def bar_tokens(inputs: Mapping[str, np.ndarray], group: str) -> dict[str, np.ndarray]:
    """Our bar-token fields (``tokenizer.TOKEN_FIELDS``) of one of their VAE inputs (``vae.bar0``, ``vae.batched``)."""
    types = _types(inputs[f"{group}.token_type"])
    fields = _note_fields(inputs, group, types == int(TokenType.NOTE))
    frame = np.where(types != int(TokenType.PAD), inputs[f"{group}.pos"], 0)
    return {"type": types, **fields, "frame": frame.astype(np.int32)}
