"""The context encoder shared by the four context slots (SFS.md section 3).

Letters: B batch, S context tokens, D model width.

All selected contexts of a target arrive concatenated with a slot id per token.
Each context is encoded on its own (attention stays inside its slot) by the same
bidirectional layers, with a learned slot-type vector added, and the outputs stay
concatenated for the decoder's cross-attention.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from sfs_jax.model import layers
from sfs_jax.model.config import CONTEXT_SLOT_NAMES, ModelConfig
from sfs_jax.model.embeddings import PositionCode, TokenEmbedding
from sfs_jax.music.tokenizer import TokenType

NUM_SLOTS = len(CONTEXT_SLOT_NAMES) + 1  # slot 0 is padding


def slot_ids(names: tuple[str, ...]) -> tuple[int, ...]:
    """Config slot names -> ContextSlot values (left=1 ... previous=5)."""
    return tuple(CONTEXT_SLOT_NAMES.index(name) + 1 for name in names)


def same_slot_mask(slot_BxS: jax.Array) -> jax.Array:
    """BxSxS: both tokens real and in the same context slot."""
    valid = slot_BxS > 0
    return (slot_BxS[:, :, None] == slot_BxS[:, None, :]) & valid[:, :, None] & valid[:, None, :]


class ContextEncoder(nnx.Module):
    """Bidirectional layers over each context; returns BxSxD features."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs) -> None:
        dtype = jnp.dtype(config.compute_dtype)
        self.embed = TokenEmbedding(config.d_model, rngs=rngs)
        self.position = PositionCode(config.d_model, use_segment_positions=config.use_segment_positions,
                                     max_period_frames=config.max_position_frames, rngs=rngs)
        self.slot = nnx.Embed(NUM_SLOTS, config.d_model, rngs=rngs)
        self.blocks = layers.stack(config.n_encoder_layers, lambda: layers.Block(
            config.d_model, config.n_heads, config.d_ff, cross_attention=False, rope_base=config.rope_base,
            dtype=dtype, implementation=config.attention_implementation, rngs=rngs))
        self.norm = layers.layer_norm(config.d_model, rngs)

    def __call__(self, batch: dict[str, jax.Array]) -> jax.Array:
        slot = batch["context_slot"]
        note_type = jnp.where(slot > 0, int(TokenType.NOTE), int(TokenType.PAD))
        positions = batch["context_song_frame"]
        x = (self.embed(note_type, batch["context_pitch"], batch["context_velocity"],
                        batch["context_duration"])
             + self.position(positions, batch["song_n_frames"], batch["context_segment_start_frame"],
                             batch["context_segment_end_frame"])
             + self.slot(slot))
        mask = same_slot_mask(slot)
        for block in self.blocks:
            x = block(x, positions, mask)
        return self.norm(x)
