"""The full SFS model: context encoder + global view G + decoder (SFS.md section 3).

Letters: B batch, T target tokens, S context tokens, G bars, D model width.

``SFSModel(batch)`` returns the hidden states; ``logits`` turns them into the four
factorized heads with teacher forcing. The Flat baseline is this model with no
cross-attention, no G and no segment positions (see model/flat.py), so the two
share every line of code they have in common.
"""

from __future__ import annotations

import jax
from flax import nnx

from sfs_jax.model.config import ModelConfig
from sfs_jax.model.decoder import Decoder
from sfs_jax.model.encoder import ContextEncoder, slot_ids
from sfs_jax.model.global_view import GlobalView


class SFSModel(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs) -> None:
        self.config = config
        self.visible_slots = slot_ids(config.context_slots)
        self.encoder = ContextEncoder(config, rngs=rngs) if config.use_cross_attention else None
        self.global_view = GlobalView(config, rngs=rngs) if config.use_global_view else None
        self.decoder = Decoder(config, rngs=rngs)

    def encode_context(self, batch: dict[str, jax.Array]) -> jax.Array | None:
        return None if self.encoder is None else self.encoder(batch)

    def global_bars(self, batch: dict[str, jax.Array]) -> jax.Array | None:
        if self.global_view is None:
            return None
        return self.global_view(batch["bar_embedding"], batch["bar_known"], batch["bar_valid"])

    def __call__(self, batch: dict[str, jax.Array]) -> jax.Array:
        """Decoder hidden states BxTxD for every target position."""
        return self.decoder(batch, self.encode_context(batch), self.global_bars(batch), self.visible_slots)

    def logits(self, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """Teacher-forced logits of the four heads."""
        h = self(batch)
        heads = self.decoder.heads
        return {"type": heads.type_logits(h), "pitch": heads.pitch_logits(h),
                "velocity": heads.velocity_logits(h, batch["target_pitch"]),
                "duration": heads.duration_logits(h, batch["target_pitch"], batch["target_velocity"])}
