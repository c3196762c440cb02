"""Pre-norm transformer blocks shared by the encoder, decoder, G and the bar VAE.

Letters: B batch, T tokens, S context tokens, D model width (L, H, K: see attention.KVCache).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from sfs_jax.model.attention import FastPath, KVCache, MultiHeadAttention


class MLP(nnx.Module):
    """Two linear layers with GELU: the feed-forward sublayer."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int, *, dtype: jnp.dtype, rngs: nnx.Rngs) -> None:
        self.up = nnx.Linear(d_in, d_hidden, dtype=dtype, rngs=rngs)
        self.down = nnx.Linear(d_hidden, d_out, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down(jax.nn.gelu(self.up(x)))


def layer_norm(d_model: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """Norms run in fp32 whatever the compute dtype (stability under bf16)."""
    return nnx.LayerNorm(d_model, dtype=jnp.float32, rngs=rngs)


class Block(nnx.Module):
    """Self-attention, optional cross-attention, MLP; each sublayer pre-normed.

    ``condition_BxTxD`` (the decoder's per-token G vector) is added to the input of
    every sublayer, as SFS.md section 3 describes, without entering the residual
    stream itself.
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int, *, cross_attention: bool, rope_base: float,
                 dtype: jnp.dtype, implementation: str, rngs: nnx.Rngs) -> None:
        attention = lambda: MultiHeadAttention(d_model, n_heads, rope_base=rope_base, dtype=dtype,
                                               implementation=implementation, rngs=rngs)
        self.dtype = dtype
        self.self_norm, self.self_attention = layer_norm(d_model, rngs), attention()
        self.cross_norm = layer_norm(d_model, rngs) if cross_attention else None
        self.cross_attention = attention() if cross_attention else None
        self.mlp_norm = layer_norm(d_model, rngs)
        self.mlp = MLP(d_model, d_ff, d_model, dtype=dtype, rngs=rngs)

    def _input(self, norm: nnx.LayerNorm, x: jax.Array, condition: jax.Array | None) -> jax.Array:
        return norm(x if condition is None else x + condition).astype(self.dtype)

    def self_attend(self, x_BxTxD, positions_BxT, mask_BxTxT, condition_BxTxD=None, fast_path=None):
        return self.self_attend_keeping_kv(x_BxTxD, positions_BxT, mask_BxTxT, condition_BxTxD, fast_path)[0]

    def self_attend_keeping_kv(self, x_BxTxD: jax.Array, positions_BxT: jax.Array, mask_BxTxT: jax.Array,
                               condition_BxTxD: jax.Array | None = None,
                               fast_path: FastPath | None = None) -> tuple[jax.Array, KVCache]:
        """``self_attend`` that also returns its keys/values: the sampler's cache after a prefill."""
        h = self._input(self.self_norm, x_BxTxD, condition_BxTxD)
        keys, values = self.self_attention.keys_values(h, positions_BxT)
        q = self.self_attention.queries(h, positions_BxT)
        out = self.self_attention.attend_to(q, keys, values, mask_BxTxT, fast_path)
        return x_BxTxD + out, KVCache.from_keys_values(keys, values)

    def cross_attend(self, x_BxTxD, positions_BxT, context_k, context_v, mask_BxTxS, condition_BxTxD=None):
        """Cross-attention on precomputed context keys/values (computed once per segment)."""
        return self._cross_attend(x_BxTxD, positions_BxT, (context_k, context_v), mask_BxTxS, condition_BxTxD)

    def _cross_attend(self, x_BxTxD, positions_BxT, context_kv: tuple | KVCache, mask_BxTxS, condition_BxTxD):
        """``context_kv``: (keys, values) BxSxHxK of a full pass, or the sampler's head-major ``KVCache``."""
        h = self._input(self.cross_norm, x_BxTxD, condition_BxTxD)
        q = self.cross_attention.queries(h, positions_BxT)
        if isinstance(context_kv, KVCache):
            return x_BxTxD + self.cross_attention.attend_to_cache(q, context_kv, mask_BxTxS)
        return x_BxTxD + self.cross_attention.attend_to(q, *context_kv, mask_BxTxS)

    def feed_forward(self, x_BxTxD, condition_BxTxD=None):
        return x_BxTxD + self.mlp(self._input(self.mlp_norm, x_BxTxD, condition_BxTxD))

    def cached_self_attend(self, x_Bx1xD: jax.Array, position_Bx1: jax.Array, cache: KVCache, t: jax.Array,
                           condition_Bx1xD: jax.Array | None = None) -> tuple[jax.Array, KVCache]:
        """``self_attend`` for token t alone: its key/value go into the cache, its query reads slots <= t."""
        h = self._input(self.self_norm, x_Bx1xD, condition_Bx1xD)
        cache = cache.write(t, *self.self_attention.keys_values(h, position_Bx1))
        q = self.self_attention.queries(h, position_Bx1)
        return x_Bx1xD + self.self_attention.attend_to_cache(q, cache, cache.visible_mask(t)), cache

    def _cross_and_feed_forward(self, x_BxTxD, cross_positions_BxT, condition_BxTxD, context_kv, cross_mask_BxTxS):
        """The sublayers after self-attention, shared by the full pass and the cached step."""
        if self.cross_attention is not None and context_kv is not None:
            x_BxTxD = self._cross_attend(x_BxTxD, cross_positions_BxT, context_kv, cross_mask_BxTxS, condition_BxTxD)
        return self.feed_forward(x_BxTxD, condition_BxTxD).astype(jnp.float32)

    def __call__(self, x_BxTxD: jax.Array, positions_BxT: jax.Array, mask_BxTxT: jax.Array, *,
                 condition_BxTxD: jax.Array | None = None, context_kv: tuple | None = None,
                 cross_mask_BxTxS: jax.Array | None = None, fast_path: FastPath | None = None,
                 cross_positions_BxT: jax.Array | None = None) -> jax.Array:
        return self.prefill(x_BxTxD, positions_BxT, mask_BxTxT, condition_BxTxD=condition_BxTxD,
                            context_kv=context_kv, cross_mask_BxTxS=cross_mask_BxTxS, fast_path=fast_path,
                            cross_positions_BxT=cross_positions_BxT)[0]

    def prefill(self, x_BxTxD: jax.Array, positions_BxT: jax.Array, mask_BxTxT: jax.Array, *,
                condition_BxTxD: jax.Array | None = None, context_kv: tuple | None = None,
                cross_mask_BxTxS: jax.Array | None = None, fast_path: FastPath | None = None,
                cross_positions_BxT: jax.Array | None = None) -> tuple[jax.Array, KVCache]:
        """``__call__`` that also returns the self-attention cache of all T tokens.

        The sampler runs a teacher-forced prefix (SFS.md section 4: the bars already in
        a sliding window) through this in one parallel pass instead of token by token.
        ``cross_positions_BxT`` rotate the cross-attention queries (default: ``positions_BxT``).
        """
        x, cache = self.self_attend_keeping_kv(x_BxTxD, positions_BxT, mask_BxTxT, condition_BxTxD, fast_path)
        cross_positions = positions_BxT if cross_positions_BxT is None else cross_positions_BxT
        return self._cross_and_feed_forward(x, cross_positions, condition_BxTxD, context_kv, cross_mask_BxTxS), cache

    def decode_step(self, x_Bx1xD: jax.Array, position_Bx1: jax.Array, cache: KVCache, t: jax.Array, *,
                    condition_Bx1xD: jax.Array | None = None, context_kv: tuple | None = None,
                    cross_mask_Bx1xS: jax.Array | None = None,
                    cross_position_Bx1: jax.Array | None = None) -> tuple[jax.Array, KVCache]:
        """``__call__`` for the single token t of every row, with its self-attention cache.

        ``context_kv`` is this layer's cross-attention ``KVCache`` of the encoded contexts
        (``Decoder.context_caches``), computed once per segment (SFS.md section 4:
        contexts are encoded once); (keys, values) as in ``__call__`` work too.
        """
        x, cache = self.cached_self_attend(x_Bx1xD, position_Bx1, cache, t, condition_Bx1xD)
        cross_position = position_Bx1 if cross_position_Bx1 is None else cross_position_Bx1
        return self._cross_and_feed_forward(x, cross_position, condition_Bx1xD, context_kv, cross_mask_Bx1xS), cache


def stack(n_layers: int, make_block) -> nnx.List:
    """n independently initialized blocks."""
    return nnx.List([make_block() for _ in range(n_layers)])
