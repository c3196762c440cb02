"""The context encoder shared by the four context slots (SFS.md section 3; reference README 5.3).

Letters: B batch, S context tokens, D model width.

All selected contexts of a target arrive concatenated with a slot id per token.
Each context is encoded on its own (attention stays inside its slot) by the same
bidirectional layers, and the outputs stay concatenated for the decoder's
cross-attention. The reference encodes each slot as its own tensor; a same-slot mask
and per-slot positions make the concatenated pass the same computation.

Reference form (the defaults): rotary positions are token indices within the slot,
and the context-type vector (N(0, 1), as large as the content) is added after the
final norm, so every key and value carries its slot. v1: rotary positions are song
frames and the slot vector is added at the input.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from sfs_jax.model import layers
from sfs_jax.model.config import CONTEXT_SLOT_NAMES, ModelConfig
from sfs_jax.model.embeddings import TokenEmbedding, position_code
from sfs_jax.model.initializers import embed
from sfs_jax.music.tokenizer import TokenType

NUM_SLOTS = len(CONTEXT_SLOT_NAMES) + 1  # slot ids: 0 is padding, LEFT=1 ... PREVIOUS=5


def slot_ids(names: tuple[str, ...]) -> tuple[int, ...]:
    """Config slot names -> ContextSlot values (left=1 ... previous=5)."""
    return tuple(CONTEXT_SLOT_NAMES.index(name) + 1 for name in names)


def same_slot_mask(slot_BxS: jax.Array) -> jax.Array:
    """BxSxS: both tokens real and in the same context slot."""
    valid = slot_BxS > 0
    return (slot_BxS[:, :, None] == slot_BxS[:, None, :]) & valid[:, :, None] & valid[:, None, :]


def index_in_slot(slot_BxS: jax.Array) -> jax.Array:
    """Each token's index among the tokens of its own slot (0 for the first), as if each slot were its own tensor."""
    one_hot_BxSxN = jax.nn.one_hot(slot_BxS, NUM_SLOTS, dtype=jnp.int32)
    count_BxSxN = jnp.cumsum(one_hot_BxSxN, axis=1)
    return jnp.sum(count_BxSxN * one_hot_BxSxN, axis=-1) - 1


class ContextEncoder(nnx.Module):
    """Bidirectional layers over each context; returns BxSxD features."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs) -> None:
        style = layers.block_style(config)
        self.config = config
        self.embed = TokenEmbedding(config.d_model, token_layout=config.token_layout, init=config.init, rngs=rngs)
        self.position = position_code(config, rngs)
        # Reference: one row per SFS slot (slot id - 1); v1: a row per slot id, row 0 for padding.
        n_rows = config.n_slot_embeddings if config.slot_embedding == "output" else NUM_SLOTS
        self.slot = embed(n_rows, config.d_model, init=config.init, rngs=rngs)
        self.rotary = style.rotary()
        self.blocks = layers.stack(config.n_encoder_layers,
                                   lambda: layers.Block(config.d_model, style, cross_attention=False, rngs=rngs))
        self.norm = layers.layer_norm(config.d_model, style, rngs)

    def __call__(self, batch: dict[str, jax.Array]) -> jax.Array:
        slot = batch["context_slot"]
        note_type = jnp.where(slot > 0, int(TokenType.NOTE), int(TokenType.PAD))
        song_frame = batch["context_song_frame"]
        x = (self.embed(note_type, batch["context_pitch"], batch["context_velocity"], batch["context_duration"])
             + self.position(song_frame, batch["song_n_frames"], batch["context_segment_start_frame"],
                             batch["context_segment_end_frame"]))
        if self.config.slot_embedding == "input":
            x = x + self.slot(slot)
        positions = index_in_slot(slot) if self.config.context_positions == "token_index" else song_frame
        rope = self.rotary.angles(positions)
        mask = same_slot_mask(slot)
        for block in self.blocks:
            x = block(x, rope, mask)
        x = self.norm(x)
        if self.config.slot_embedding == "output":
            x = x + self.slot(jnp.clip(slot - 1, 0, self.slot.num_embeddings - 1))
        return x
