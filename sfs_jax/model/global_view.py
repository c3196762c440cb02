"""The global view G: one vector per bar of the whole song (SFS.md section 1).

Letters: B batch, G bars, E bar-embedding size, D model width.

Every bar has an embedding from the frozen bar VAE when it is known (composed, or
an earlier bar of the target); unknown bars get a learned vector. A bidirectional
transformer over bars, rotary positions in bars, gives each bar a summary of the
whole song as composed so far; each target token then reads its own bar's vector.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from sfs_jax.model import layers
from sfs_jax.model.config import ModelConfig


class GlobalView(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs) -> None:
        dtype = jnp.dtype(config.compute_dtype)
        self.latent_dim = config.vae.latent_dim
        self.project = nnx.Linear(config.vae.latent_dim, config.d_model, rngs=rngs)
        self.unknown_bar = nnx.Param(jax.random.normal(rngs.params(), (config.d_model,)) * 0.02)
        self.blocks = layers.stack(config.n_global_layers, lambda: layers.Block(
            config.d_model, config.n_heads, config.d_ff, cross_attention=False, rope_base=config.rope_base,
            dtype=dtype, implementation=config.attention_implementation, rngs=rngs))
        self.norm = layers.layer_norm(config.d_model, rngs)

    def __call__(self, bar_embedding_BxGxE: jax.Array, bar_known_BxG: jax.Array,
                 bar_valid_BxG: jax.Array) -> jax.Array:
        if bar_embedding_BxGxE.shape[-1] != self.latent_dim:
            raise ValueError(f"bar embeddings have size {bar_embedding_BxGxE.shape[-1]}, the model's bar "
                             f"VAE latent is {self.latent_dim}: compute them with the matching VAE")
        known = bar_known_BxG & bar_valid_BxG
        x = jnp.where(known[..., None], self.project(bar_embedding_BxGxE), self.unknown_bar.value)
        bars_BxG = jnp.broadcast_to(jnp.arange(x.shape[1]), x.shape[:2])
        mask = bar_valid_BxG[:, :, None] & bar_valid_BxG[:, None, :]
        for block in self.blocks:
            x = block(x, bars_BxG, mask)
        return self.norm(x)


def gather_bars(per_bar_BxGxD: jax.Array, bar_BxT: jax.Array) -> jax.Array:
    """Each token's own bar vector (bars clipped into range)."""
    index = jnp.clip(bar_BxT, 0, per_bar_BxGxD.shape[1] - 1)
    return jnp.take_along_axis(per_bar_BxGxD, index[..., None], axis=1)
