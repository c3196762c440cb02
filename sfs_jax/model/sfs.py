"""The full SFS model: context encoder + global view G + decoder (SFS.md section 3).

Letters: B batch, T decoder positions, S context tokens, G bars, D model width.

``SFSModel(batch)`` returns the hidden states; ``logits`` turns them into the four
factorized heads with teacher forcing; ``features`` also returns what the reference
parity tests compare (encoded contexts, G per bar and per token). The Flat baseline
is this model with no cross-attention, no G and no segment positions (see
model/flat.py), so the two share every line of code they have in common.
"""

from __future__ import annotations

import jax
from flax import nnx

from sfs_jax.model import token_layout as layout_lib
from sfs_jax.model.config import ModelConfig
from sfs_jax.model.decoder import Decoder
from sfs_jax.model.encoder import ContextEncoder, slot_ids
from sfs_jax.model.global_view import GlobalView, gather_bars


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
        return self.global_view(batch["bar_embedding"], batch["bar_known"], batch["bar_valid"],
                                batch["global_start_bar"], batch["n_bars"])

    def __call__(self, batch: dict[str, jax.Array]) -> jax.Array:
        """Decoder hidden states BxTxD for every decoder position."""
        return self.decoder(batch, self.encode_context(batch), self.global_bars(batch), self.visible_slots)

    def features(self, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """The forward's intermediate outputs and logits (what ``../shared/reference`` stores, by our names).

        ``context`` BxSxD (slot vector included), ``global_per_bar`` BxGxD,
        ``global_per_token`` BxTxD (before the condition MLP), ``decoder_input`` BxTxD
        (token embedding + position code), ``decoder`` BxTxD (after the final norm) and
        ``logits`` of the four heads.
        """
        context, per_bar = self.encode_context(batch), self.global_bars(batch)
        inputs = layout_lib.decoder_inputs(batch, self.config.token_layout)
        out: dict[str, jax.Array] = {}
        h, _ = self.decoder.run(inputs, batch, context, per_bar, self.visible_slots, features=out)
        out.update(decoder=h, logits=self.decoder.heads.teacher_forced(
            h, layout_lib.predicted_tokens(batch, self.config.token_layout)))
        if context is not None:
            out["context"] = context
        if per_bar is not None:
            out["global_per_bar"] = per_bar
            out["global_per_token"] = gather_bars(per_bar, inputs["bar"] - batch["global_start_bar"][:, None])
        return out

    def logits(self, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """Teacher-forced logits of the four heads, one row per decoder position."""
        predicted = layout_lib.predicted_tokens(batch, self.config.token_layout)
        return self.decoder.heads.teacher_forced(self(batch), predicted)
