"""The global view G: one vector per bar of the whole song (SFS.md section 1; reference README 5.4).

Letters: B batch, G bars, E bar-embedding size, D model width.

Every bar has an embedding from the frozen bar VAE when it is known (composed, or
an earlier bar of the target); unknown bars get a learned vector. A bidirectional
transformer over bars, rotary positions in bars, gives each bar a summary of the
whole song as composed so far; each target token then reads its own bar's vector.

Forms (``ModelConfig.global_view_form``):
- reference: unknown bars take the learned latent ``unknown_bar`` (the reference's
  ``masked_bar_embedding``) before the input projection, and the bar's sinusoids from
  the song's start and end (a fixed table, D/2 dims each) are added after it;
- v1: the projection of known bars, a learned D-dim vector for unknown ones, no bar code.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from sfs_jax.model import layers
from sfs_jax.model.config import ModelConfig
from sfs_jax.model.embeddings import sinusoid_table, start_end_code
from sfs_jax.model.initializers import Buffer, linear, normal_param


class GlobalView(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs) -> None:
        style = layers.block_style(config)
        self.form = config.global_view_form
        self.latent_dim = config.vae.latent_dim
        self.project = linear(config.vae.latent_dim, config.d_model, init=config.init, rngs=rngs)
        if self.form == "reference":
            self.unknown_bar = normal_param((config.vae.latent_dim,), init=config.init, rngs=rngs)
            self.bar_code = Buffer(jnp.asarray(sinusoid_table(config.max_position_frames, config.d_model // 2)))
        else:
            self.unknown_bar = normal_param((config.d_model,), init=config.init, rngs=rngs)
        self.rotary = style.rotary()
        self.blocks = layers.stack(config.n_global_layers,
                                   lambda: layers.Block(config.d_model, style, cross_attention=False, rngs=rngs))
        self.norm = layers.layer_norm(config.d_model, style, rngs)

    def __call__(self, bar_embedding_BxGxE: jax.Array, bar_known_BxG: jax.Array, bar_valid_BxG: jax.Array,
                 first_bar_B: jax.Array | None = None, song_n_bars_B: jax.Array | None = None) -> jax.Array:
        """Per-bar vectors BxGxD of bars [first_bar, first_bar + G) of songs of ``song_n_bars`` bars.

        ``first_bar_B`` and ``song_n_bars_B`` place the bars in their song for the
        reference's bar code (defaults: G starts at bar 0, songs of the valid bars).
        """
        if bar_embedding_BxGxE.shape[-1] != self.latent_dim:
            raise ValueError(f"bar embeddings have size {bar_embedding_BxGxE.shape[-1]}, the model's bar "
                             f"VAE latent is {self.latent_dim}: compute them with the matching VAE")
        known = (bar_known_BxG & bar_valid_BxG)[..., None]
        if self.form == "reference":
            embeddings = jnp.where(known, bar_embedding_BxGxE, self.unknown_bar.value)
            x = self.project(embeddings) + self._bar_code(bar_valid_BxG, first_bar_B, song_n_bars_B)
        else:
            x = jnp.where(known, self.project(bar_embedding_BxGxE), self.unknown_bar.value)
        bars_BxG = jnp.broadcast_to(jnp.arange(x.shape[1]), x.shape[:2])
        mask = bar_valid_BxG[:, :, None] & bar_valid_BxG[:, None, :]
        rope = self.rotary.angles(bars_BxG)
        for block in self.blocks:
            x = block(x, rope, mask)
        return self.norm(x)

    def _bar_code(self, bar_valid_BxG: jax.Array, first_bar_B: jax.Array | None,
                  song_n_bars_B: jax.Array | None) -> jax.Array:
        batch_size, n_bars = bar_valid_BxG.shape
        first = jnp.zeros(batch_size, jnp.int32) if first_bar_B is None else first_bar_B
        n_song = jnp.sum(bar_valid_BxG, axis=1) if song_n_bars_B is None else song_n_bars_B
        bar_BxG = first[:, None] + jnp.arange(n_bars)[None, :]
        return start_end_code(self.bar_code.value, bar_BxG, jnp.broadcast_to(n_song[:, None], bar_BxG.shape))


def gather_bars(per_bar_BxGxD: jax.Array, bar_BxT: jax.Array) -> jax.Array:
    """Each token's own bar vector (bars clipped into range)."""
    index = jnp.clip(bar_BxT, 0, per_bar_BxGxD.shape[1] - 1)
    return jnp.take_along_axis(per_bar_BxGxD, index[..., None], axis=1)
