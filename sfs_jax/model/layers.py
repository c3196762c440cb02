"""Pre-norm transformer blocks shared by the encoder, decoder, G and the bar VAE.

Letters: B batch, T tokens, S context tokens, D model width (L, H, K: see attention.KVCache).

One ``BlockStyle`` decides how every stack of a model is built (norm, GELU, rotary
pairs, init, widths), so the reference's x-transformers layers and this project's
first design (``ModelConfig`` values) share this code.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from sfs_jax.model.attention import FastPath, KVCache, MultiHeadAttention, Rope, Rotary
from sfs_jax.model.config import ModelConfig
from sfs_jax.model.initializers import linear


@dataclasses.dataclass(frozen=True)
class BlockStyle:
    """How the transformer stacks of one model are built (fields of ``ModelConfig``; ``of`` reads them)."""

    n_heads: int
    head_dim: int
    rotary_dims: int
    d_ff: int
    norm: str = "unit_offset"
    gelu: str = "exact"
    rotary_pairs: str = "adjacent"
    rope_base: float = 10_000.0
    init: str = "torch"
    compute_dtype: str = "float32"
    attention_implementation: str = "auto"

    @property
    def dtype(self) -> jnp.dtype:
        return jnp.dtype(self.compute_dtype)

    @property
    def float_dtype(self) -> jnp.dtype:
        """Where norms, softmax and heads run: float32, or float64 when the whole model does."""
        return jnp.promote_types(self.dtype, jnp.float32)

    def rotary(self) -> Rotary:
        return Rotary(self.rotary_dims, self.rope_base, self.rotary_pairs)


def gelu(x: jax.Array, style: str) -> jax.Array:
    """Exact (erf) GELU, as PyTorch's default, or its tanh approximation (jax's default)."""
    return jax.nn.gelu(x, approximate=style == "tanh")


class UnitOffsetLayerNorm(nnx.Module):
    """x-transformers' LayerNorm: no bias, eps 1e-5, gain 1 + gamma with gamma stored (and initialised) as 0."""

    def __init__(self, d_model: int, *, dtype: jnp.dtype) -> None:
        self.gamma = nnx.Param(jnp.zeros((d_model,), jnp.float32))
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(self.dtype)
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + 1e-5) * (self.gamma.value.astype(self.dtype) + 1)


def layer_norm(d_model: int, style: BlockStyle, rngs: nnx.Rngs) -> nnx.Module:
    """Norms run in float32 (float64 in a float64 model) whatever the compute dtype (stability under bf16)."""
    if style.norm == "unit_offset":
        return UnitOffsetLayerNorm(d_model, dtype=style.float_dtype)
    return nnx.LayerNorm(d_model, dtype=style.float_dtype, rngs=rngs)


class MLP(nnx.Module):
    """Two linear layers with GELU: the feed-forward sublayer, and the velocity/duration heads."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int, *, style: BlockStyle, rngs: nnx.Rngs,
                 dtype: jnp.dtype | None = None) -> None:
        dtype = style.dtype if dtype is None else dtype
        self.up = linear(d_in, d_hidden, dtype=dtype, init=style.init, rngs=rngs)
        self.down = linear(d_hidden, d_out, dtype=dtype, init=style.init, rngs=rngs)
        self.gelu = style.gelu

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down(gelu(self.up(x), self.gelu))


class ResidualMLP(nnx.Module):
    """The reference's condition MLP (``in_attn_transform``): W3 gelu(W2 gelu(W1 x + b1) + b2) + b3 + (W1 x + b1).

    Residual around the first linear, so the condition starts as a linear map of its
    input plus the MLP's correction. G's vector per token goes through it in the SFS
    decoder, the latent z in the bar VAE's decoder.
    """

    def __init__(self, d_in: int, d_model: int, *, style: BlockStyle, rngs: nnx.Rngs) -> None:
        make = lambda a, b: linear(a, b, dtype=style.dtype, init=style.init, rngs=rngs)
        self.input, self.hidden, self.output = make(d_in, d_model), make(d_model, d_model), make(d_model, d_model)
        self.gelu = style.gelu

    @property
    def down(self) -> nnx.Linear:
        """The last projection (zeroed by ``zero_init_paths``'s "global_view")."""
        return self.output

    def __call__(self, x: jax.Array) -> jax.Array:
        first = self.input(x)
        return self.output(gelu(self.hidden(gelu(first, self.gelu)), self.gelu)) + first


class Block(nnx.Module):
    """Self-attention, optional cross-attention, MLP; each sublayer pre-normed.

    ``condition_BxTxD`` (the decoder's per-token G vector) is added to the input of
    every sublayer before its norm, as SFS.md section 3 and the reference do, without
    entering the residual stream itself.
    """

    def __init__(self, d_model: int, style: BlockStyle, *, cross_attention: bool, rngs: nnx.Rngs) -> None:
        attention = lambda: MultiHeadAttention(d_model, style.n_heads, style.head_dim, dtype=style.dtype,
                                               implementation=style.attention_implementation, init=style.init,
                                               rngs=rngs)
        self.dtype = style.dtype
        self.float_dtype = style.float_dtype
        self.self_norm, self.self_attention = layer_norm(d_model, style, rngs), attention()
        self.cross_norm = layer_norm(d_model, style, rngs) if cross_attention else None
        self.cross_attention = attention() if cross_attention else None
        self.mlp_norm = layer_norm(d_model, style, rngs)
        self.mlp = MLP(d_model, style.d_ff, d_model, style=style, rngs=rngs)

    def _input(self, norm: nnx.Module, x: jax.Array, condition: jax.Array | None) -> jax.Array:
        return norm(x if condition is None else x + condition).astype(self.dtype)

    def self_attend(self, x_BxTxD, rope_BxT, mask_BxTxT, condition_BxTxD=None, fast_path=None):
        return self.self_attend_keeping_kv(x_BxTxD, rope_BxT, mask_BxTxT, condition_BxTxD, fast_path)[0]

    def self_attend_keeping_kv(self, x_BxTxD: jax.Array, rope_BxT: Rope, mask_BxTxT: jax.Array,
                               condition_BxTxD: jax.Array | None = None,
                               fast_path: FastPath | None = None) -> tuple[jax.Array, KVCache]:
        """``self_attend`` that also returns its keys/values: the sampler's cache after a prefill."""
        h = self._input(self.self_norm, x_BxTxD, condition_BxTxD)
        keys, values = self.self_attention.keys_values(h, rope_BxT)
        q = self.self_attention.queries(h, rope_BxT)
        out = self.self_attention.attend_to(q, keys, values, mask_BxTxT, fast_path)
        return x_BxTxD + out, KVCache.from_keys_values(keys, values)

    def cross_attend(self, x_BxTxD, rope_BxT, context_k, context_v, mask_BxTxS, condition_BxTxD=None):
        """Cross-attention on precomputed context keys/values (computed once per segment)."""
        return self._cross_attend(x_BxTxD, rope_BxT, (context_k, context_v), mask_BxTxS, condition_BxTxD)

    def _cross_attend(self, x_BxTxD, rope_BxT, context_kv: tuple | KVCache, mask_BxTxS, condition_BxTxD):
        """``context_kv``: (keys, values) BxSxHxK of a full pass, or the sampler's head-major ``KVCache``."""
        h = self._input(self.cross_norm, x_BxTxD, condition_BxTxD)
        q = self.cross_attention.queries(h, rope_BxT)
        if isinstance(context_kv, KVCache):
            return x_BxTxD + self.cross_attention.attend_to_cache(q, context_kv, mask_BxTxS)
        return x_BxTxD + self.cross_attention.attend_to(q, *context_kv, mask_BxTxS)

    def feed_forward(self, x_BxTxD, condition_BxTxD=None):
        return x_BxTxD + self.mlp(self._input(self.mlp_norm, x_BxTxD, condition_BxTxD))

    def cached_self_attend(self, x_Bx1xD: jax.Array, rope_Bx1: Rope, cache: KVCache, slot: jax.Array,
                           condition_Bx1xD: jax.Array | None = None) -> tuple[jax.Array, KVCache]:
        """``self_attend`` for one token alone: its key/value go into cache ``slot``, its query reads slots <= it."""
        h = self._input(self.self_norm, x_Bx1xD, condition_Bx1xD)
        out, cache = self.self_attention.decode_step(h, rope_Bx1, cache, slot)
        return x_Bx1xD + out, cache

    def _cross_and_feed_forward(self, x_BxTxD, cross_rope_BxT, condition_BxTxD, context_kv, cross_mask_BxTxS):
        """The sublayers after self-attention, shared by the full pass and the cached step."""
        if self.cross_attention is not None and context_kv is not None:
            x_BxTxD = self._cross_attend(x_BxTxD, cross_rope_BxT, context_kv, cross_mask_BxTxS, condition_BxTxD)
        return self.feed_forward(x_BxTxD, condition_BxTxD).astype(self.float_dtype)

    def __call__(self, x_BxTxD: jax.Array, rope_BxT: Rope, mask_BxTxT: jax.Array, *,
                 condition_BxTxD: jax.Array | None = None, context_kv: tuple | None = None,
                 cross_mask_BxTxS: jax.Array | None = None, fast_path: FastPath | None = None,
                 cross_rope_BxT: Rope | None = None) -> jax.Array:
        return self.prefill(x_BxTxD, rope_BxT, mask_BxTxT, condition_BxTxD=condition_BxTxD,
                            context_kv=context_kv, cross_mask_BxTxS=cross_mask_BxTxS, fast_path=fast_path,
                            cross_rope_BxT=cross_rope_BxT)[0]

    def prefill(self, x_BxTxD: jax.Array, rope_BxT: Rope, mask_BxTxT: jax.Array, *,
                condition_BxTxD: jax.Array | None = None, context_kv: tuple | None = None,
                cross_mask_BxTxS: jax.Array | None = None, fast_path: FastPath | None = None,
                cross_rope_BxT: Rope | None = None) -> tuple[jax.Array, KVCache]:
        """``__call__`` that also returns the self-attention cache of all T tokens.

        The sampler runs a teacher-forced prefix (SFS.md section 4: the bars already in
        a sliding window) through this in one parallel pass instead of token by token.
        ``cross_rope_BxT`` rotates the cross-attention queries (default: ``rope_BxT``).
        """
        x, cache = self.self_attend_keeping_kv(x_BxTxD, rope_BxT, mask_BxTxT, condition_BxTxD, fast_path)
        cross_rope = rope_BxT if cross_rope_BxT is None else cross_rope_BxT
        return self._cross_and_feed_forward(x, cross_rope, condition_BxTxD, context_kv, cross_mask_BxTxS), cache

    def decode_step(self, x_Bx1xD: jax.Array, rope_Bx1: Rope, cache: KVCache, slot: jax.Array, *,
                    condition_Bx1xD: jax.Array | None = None, context_kv: tuple | None = None,
                    cross_mask_Bx1xS: jax.Array | None = None,
                    cross_rope_Bx1: Rope | None = None) -> tuple[jax.Array, KVCache]:
        """``__call__`` for one input token of every row, cached in self-attention ``slot``.

        ``context_kv`` is this layer's cross-attention ``KVCache`` of the encoded contexts
        (``Decoder.context_caches``), computed once per segment (SFS.md section 4:
        contexts are encoded once); (keys, values) as in ``__call__`` work too.
        """
        x, cache = self.cached_self_attend(x_Bx1xD, rope_Bx1, cache, slot, condition_Bx1xD)
        cross_rope = rope_Bx1 if cross_rope_Bx1 is None else cross_rope_Bx1
        return self._cross_and_feed_forward(x, cross_rope, condition_Bx1xD, context_kv, cross_mask_Bx1xS), cache


def stack(n_layers: int, make_block) -> nnx.List:
    """n independently initialized blocks."""
    return nnx.List([make_block() for _ in range(n_layers)])


def block_style(config: ModelConfig) -> BlockStyle:
    """The SFS model's stacks (context encoder, decoder, G) as ``config`` describes them."""
    return BlockStyle(n_heads=config.n_heads, head_dim=config.head_dim, rotary_dims=config.rotary_dims,
                      d_ff=config.d_ff, **_shared_style(config))


def vae_block_style(config: ModelConfig, decoder: bool = False) -> BlockStyle:
    """The bar VAE's encoder (or decoder) stacks: its own widths (``config.vae``), the SFS model's style."""
    vae = config.vae
    return BlockStyle(n_heads=vae.n_heads, head_dim=vae.head_dim, rotary_dims=vae.rotary_dims,
                      d_ff=vae.decoder_ff if decoder else vae.d_ff, **_shared_style(config))


def _shared_style(config: ModelConfig) -> dict:
    return dict(norm=config.norm, gelu=config.gelu, rotary_pairs=config.rotary_pairs, rope_base=config.rope_base,
                init=config.init, compute_dtype=config.compute_dtype,
                attention_implementation=config.attention_implementation)
