"""What the decoder reads and predicts at each position: the one home of the token layouts.

Letters: B batch, T target tokens.

Examples store target tokens by meaning (``TokenType``: PAD, FRAME, NOTE, END; a
window-relative frame per token; END one frame past the window). A model's
``ModelConfig.token_layout`` decides how that stream meets the decoder:

- "reference" (the authors' model, ``../shared/reference/README.md`` sections 4 and 5.6):
  input i is target token i and predicts token i + 1, so the window's first FRAME is
  never predicted (``LEAD`` 1: one token is given before the first prediction). The
  type head has 2 classes, FRAME and NOTE; END is a FRAME-type token at position 0:
  as an input it reads the FRAME vector, the position code of the window's first
  frame and G of its first bar; as a prediction it is the FRAME class once every
  frame of the window is out.
- "v1" (this project's first design): input i is target token i - 1 (a START vector
  at i = 0, placed at the window's first frame) and predicts token i (``LEAD`` 0);
  the type head has 4 classes, one per ``TokenType``.

The training step (labels), the decoder (inputs) and the sampler (class <-> type,
cache slots) all ask here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sfs_jax.model.embeddings import START_TYPE, note_class
from sfs_jax.music import notes as notes_lib
from sfs_jax.music.tokenizer import TokenType

TARGET_FIELDS = ("type", "pitch", "velocity", "duration", "song_frame", "bar")
LAYOUTS = ("reference", "v1")
# Target tokens given before the first prediction.
LEAD = {"reference": 1, "v1": 0}
# The TokenType each class of the type head stands for; the reference's class 0 is FRAME or END.
TYPE_CLASSES = {"reference": (TokenType.FRAME, TokenType.NOTE), "v1": tuple(TokenType)}
_PAD, _FRAME, _NOTE, _END = (int(t) for t in TokenType)


def start_inputs(batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """v1's first decoder input per row (fields ``TARGET_FIELDS``, shape B): START at the window start."""
    start_frame = batch["window_start_bar"] * notes_lib.FRAMES_PER_BAR
    return {"type": jnp.full_like(start_frame, START_TYPE), "pitch": jnp.zeros_like(start_frame),
            "velocity": jnp.zeros_like(start_frame), "duration": jnp.zeros_like(start_frame),
            "song_frame": start_frame, "bar": batch["window_start_bar"]}


def target_fields(batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    return {name: batch[f"target_{name}"] for name in TARGET_FIELDS}


def as_inputs(fields: dict[str, jax.Array], batch: dict[str, jax.Array], layout: str) -> dict[str, jax.Array]:
    """Tokens as decoder inputs: the reference's END sits at the window's first frame and bar."""
    if layout == "v1":
        return fields
    is_end = fields["type"] == _END
    start_bar = jnp.broadcast_to(batch["window_start_bar"][:, None], is_end.shape)
    return {**fields, "song_frame": jnp.where(is_end, start_bar * notes_lib.FRAMES_PER_BAR, fields["song_frame"]),
            "bar": jnp.where(is_end, start_bar, fields["bar"])}


def shift_right(batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """v1 decoder inputs: target fields moved one step right, START in front."""
    first = start_inputs(batch)
    return {name: jnp.concatenate([first[name][:, None], batch[f"target_{name}"][:, :-1]], axis=1)
            for name in TARGET_FIELDS}


def decoder_inputs(batch: dict[str, jax.Array], layout: str) -> dict[str, jax.Array]:
    """The decoder's input fields (``TARGET_FIELDS``, BxT) of a batch's target tokens."""
    if layout == "v1":
        return shift_right(batch)
    return as_inputs(target_fields(batch), batch, layout)


def shift_left(x_BxT: jax.Array) -> jax.Array:
    """x[:, 1:] with a zero (PAD) appended: the token each reference input predicts."""
    return jnp.concatenate([x_BxT[:, 1:], jnp.zeros_like(x_BxT[:, :1])], axis=1)


def predicted_tokens(batch: dict[str, jax.Array], layout: str) -> dict[str, jax.Array]:
    """type, pitch, velocity, duration (BxT) of the token each decoder position predicts.

    Note fields of anything but a NOTE read 0 (FRAME, END and PAD carry [0, 0, 0] in the
    reference), so the velocity and duration heads at those positions never depend on
    what padding holds.
    """
    fields = {name: batch[f"target_{name}"] for name in ("type", "pitch", "velocity", "duration")}
    if layout == "reference":
        fields = {name: shift_left(x) for name, x in fields.items()}
    is_note = fields["type"] == _NOTE
    return {name: x if name == "type" else jnp.where(is_note, x, 0) for name, x in fields.items()}


def type_class(token_type_BxT: jax.Array, layout: str) -> jax.Array:
    """The type head's class of a ``TokenType`` (PAD maps to class 0; it is never scored)."""
    if layout == "v1":
        return token_type_BxT
    return (token_type_BxT == _NOTE).astype(jnp.int32)


def class_allowed(allowed_types_BxK: jax.Array, layout: str) -> jax.Array:
    """Bx(classes): a grammar mask over ``TokenType`` (Bx4, indexed by type) as one over the head's classes."""
    if layout == "v1":
        return allowed_types_BxK
    return jnp.stack([allowed_types_BxK[:, _FRAME] | allowed_types_BxK[:, _END], allowed_types_BxK[:, _NOTE]], -1)


def class_to_type(class_B: jax.Array, frames_left_B: jax.Array, layout: str) -> jax.Array:
    """The ``TokenType`` of a drawn class; the reference's FRAME class is END once no frame is left."""
    if layout == "v1":
        return class_B
    frame_or_end = jnp.where(frames_left_B > 0, _FRAME, _END)
    return jnp.where(class_B == 1, _NOTE, frame_or_end).astype(jnp.int32)


def head_labels(predicted: dict[str, jax.Array], layout: str) -> dict[str, tuple[jax.Array, jax.Array]]:
    """(labels, mask) per head of the predicted tokens: type over real tokens, the note heads over NOTEs.

    The reference's type mask covers END (a FRAME-class prediction), as its loss does.
    """
    token_type = predicted["type"]
    real, note = token_type != _PAD, token_type == _NOTE
    return {"type": (type_class(token_type, layout), real),
            "pitch": (note_class(predicted["pitch"]), note),
            "velocity": (jnp.clip(predicted["velocity"], 0, notes_lib.NUM_VELOCITIES - 1), note),
            "duration": (jnp.clip(predicted["duration"], 0, notes_lib.MAX_DURATION_FRAMES), note)}
