"""The one attention function, its masks and rotary positions (partial, in frames).

Letters: B batch, T query tokens, S key tokens, H heads, K head dim, D model width,
L cache length (the sampler's token budget).

Place in the data flow: [5] every attention in the model (context encoder, decoder
self- and cross-attention, the bar transformer G, the bar VAE) goes through
``attend``. Context selection is expressed only by the boolean mask handed to it,
so every ablation in SFS.md section 3 is a mask, never a code path.

Why rotary positions in frames: SFS.md section 3 rotates queries and keys by their
place in the song (frames), not by token index, so the distance between a target
token and a context note is their distance in musical time. The authors rotate only
the first 32 of each head's 64 dims (``Rotary``, ``ModelConfig.rotary_dims``): the
other 32 see the absolute position code of query and key unrotated.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from sfs_jax.model.initializers import Buffer, linear

NEG_INF = -1e30


@dataclasses.dataclass(frozen=True)
class FastPath:
    """A mask that is exactly "causal and/or per-row key lengths", so cuDNN can run it.

    ``attend`` uses it only where the backend supports it; the explicit boolean mask
    stays the single source of truth and is what every other path applies.
    """

    is_causal: bool
    query_lengths_B: jax.Array
    key_lengths_B: jax.Array


@struct.dataclass
class Rope:
    """cos/sin of each token's rotary angles, shaped BxTx1x(R/2) for R rotated dims per head.

    Computed once per stack (``Rotary.angles``) and handed to every attention in it, so
    the angles of a position are formed once, from the stack's stored frequencies.
    ``pairs`` is static: "adjacent" rotates dims (0,1), (2,3), ... (the reference, as
    x-transformers does); "halves" rotates dim i with dim i + R/2 (this project's v1).
    """

    cos: jax.Array
    sin: jax.Array
    pairs: str = struct.field(pytree_node=False, default="adjacent")


def rotary_frequencies(rotary_dims: int, base: float) -> np.ndarray:
    """inv_freq of ``rotary_dims`` rotated dims: base^(-2i/R), i = 0..R/2-1, in float32 as the reference stores it."""
    return (1.0 / (base ** (np.arange(0, rotary_dims, 2, dtype=np.float32) / np.float32(rotary_dims)))
            ).astype(np.float32)


class Rotary(nnx.Module):
    """The rotary frequencies of one transformer stack, kept as a ``Buffer`` (the reference's ``inv_freq``).

    Why a buffer and not a formula: the reference forms each angle as float32(position)
    times its stored float32 frequency; a port that recomputes the frequencies in
    another precision moves logits by ~1e-6, so imported weights bring theirs.
    """

    def __init__(self, rotary_dims: int, base: float, pairs: str) -> None:
        self.inv_freq = Buffer(jnp.asarray(rotary_frequencies(rotary_dims, base)))
        self.pairs = pairs

    def angles(self, positions_BxT: jax.Array) -> Rope:
        """cos/sin of positions (frames, token indices or bars) times every frequency."""
        inv_freq = self.inv_freq.value
        angles_BxTxR2 = positions_BxT.astype(inv_freq.dtype)[..., None] * inv_freq
        return Rope(jnp.cos(angles_BxTxR2)[:, :, None, :], jnp.sin(angles_BxTxR2)[:, :, None, :], self.pairs)


def apply_rope(x_BxTxHxK: jax.Array, rope: Rope) -> jax.Array:
    """Rotates the first R of the K dims of every head by the token's angles; the rest pass unrotated.

    The unrotated dims (the reference keeps 32 of 64) let a query match a key's
    absolute position code directly, at any distance.
    """
    n_rotated = 2 * rope.cos.shape[-1]
    compute = jnp.promote_types(x_BxTxHxK.dtype, jnp.float32)
    x = x_BxTxHxK.astype(compute)
    rotated, passed = x[..., :n_rotated], x[..., n_rotated:]
    cos, sin = rope.cos.astype(compute), rope.sin.astype(compute)
    if rope.pairs == "adjacent":
        pairs = rotated.reshape(*rotated.shape[:-1], n_rotated // 2, 2)
        first, second = pairs[..., 0], pairs[..., 1]
        out = jnp.stack([first * cos - second * sin, second * cos + first * sin], axis=-1).reshape(rotated.shape)
    else:
        first, second = jnp.split(rotated, 2, axis=-1)
        out = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
    return jnp.concatenate([out, passed], axis=-1).astype(x_BxTxHxK.dtype)


def causal_mask(length: int) -> jax.Array:
    """TxT lower-triangular: token t sees tokens <= t."""
    return jnp.tril(jnp.ones((length, length), bool))


def padding_mask(query_valid_BxT: jax.Array, key_valid_BxS: jax.Array) -> jax.Array:
    """BxTxS: both query and key are real tokens."""
    return query_valid_BxT[:, :, None] & key_valid_BxS[:, None, :]


@struct.dataclass
class KVCache:
    """Keys/values of one attention layer, head-major, for decoding one token at a time (SFS.md section 4).

    The decoder's self-attention cache is preallocated to the window's token budget
    L so the sampler's loop has static shapes; token t writes slot t and attends to
    slots <= t. The original SFS has no cache and re-runs the decoder over the whole
    prefix for every token. The encoded contexts' cross-attention keys/values use
    the same container (L = S), computed once per segment.

    Layouts are the ones a one-token query multiplies without moving anything: keys
    BxHxKxL (transposed, so the L logits of a head are one matrix-vector product
    over K-major rows), values BxHxLxK. With keys stored BxHxLxK (``attend``'s order)
    XLA:CPU transposed every layer's keys at every token, contexts included: at
    ``paper`` size 8 x (1536 + 1024) x 512 floats moved twice per token.
    """

    kT_BxHxKxL: jax.Array
    v_BxHxLxK: jax.Array

    @classmethod
    def zeros(cls, batch_size: int, max_tokens: int, n_heads: int, head_dim: int, dtype: jnp.dtype) -> KVCache:
        return cls(jnp.zeros((batch_size, n_heads, head_dim, max_tokens), dtype),
                   jnp.zeros((batch_size, n_heads, max_tokens, head_dim), dtype))

    @classmethod
    def from_keys_values(cls, k_BxLxHxK: jax.Array, v_BxLxHxK: jax.Array) -> KVCache:
        """The cache of a whole sequence (a prefill, or the contexts), from ``keys_values``' layout."""
        return cls(jnp.transpose(k_BxLxHxK, (0, 2, 3, 1)), jnp.swapaxes(v_BxLxHxK, 1, 2))

    def write(self, t: jax.Array, k_Bx1xHxK: jax.Array, v_Bx1xHxK: jax.Array) -> KVCache:
        """The cache with token t's key/value in slot t (all rows decode token t together)."""
        kT_BxHxKx1 = jnp.transpose(k_Bx1xHxK, (0, 2, 3, 1)).astype(self.kT_BxHxKxL.dtype)
        v_BxHx1xK = jnp.swapaxes(v_Bx1xHxK, 1, 2).astype(self.v_BxHxLxK.dtype)
        return KVCache(jax.lax.dynamic_update_slice(self.kT_BxHxKxL, kT_BxHxKx1, (0, 0, 0, t)),
                       jax.lax.dynamic_update_slice(self.v_BxHxLxK, v_BxHx1xK, (0, 0, t, 0)))

    def attend_and_write(self, t: jax.Array, q_Bx1xHxK: jax.Array, k_Bx1xHxK: jax.Array,
                         v_Bx1xHxK: jax.Array) -> tuple[jax.Array, KVCache]:
        """Token t's self-attention over slots 0..t, then the cache with its key/value in slot t.

        Equal to ``write`` then ``attend`` to slots 0..t (``causal_mask`` row t; up to float
        rounding): one softmax over the cached slots 0..t-1 and token t's own key,
        whose term is added from the new key/value directly. Why this order: the
        cache is read before it is written, so XLA updates it in place; reading it
        after the write made XLA:CPU copy every layer's cache twice per token (at
        ``paper`` size 64 MB of copies per token, more than the weights it reads).
        """
        scale = q_Bx1xHxK.shape[-1] ** -0.5
        accumulation = _accumulation(q_Bx1xHxK.dtype)
        max_tokens = self.v_BxHxLxK.shape[2]
        cached_logits_BxHx1xL = jnp.einsum("bthk,bhks->bhts", q_Bx1xHxK, self.kT_BxHxKxL,
                                           preferred_element_type=accumulation) * scale
        cached_logits_BxHx1xL = jnp.where(jnp.arange(max_tokens) < t, cached_logits_BxHx1xL, NEG_INF)
        own_logit_BxHx1x1 = jnp.einsum("bthk,bthk->bht", q_Bx1xHxK, k_Bx1xHxK,
                                       preferred_element_type=accumulation)[..., None] * scale
        top_BxHx1x1 = jnp.maximum(jnp.max(cached_logits_BxHx1xL, axis=-1, keepdims=True), own_logit_BxHx1x1)
        cached_weights = jnp.exp(cached_logits_BxHx1xL - top_BxHx1x1)
        own_weight = jnp.exp(own_logit_BxHx1x1 - top_BxHx1x1)
        total_BxHx1x1 = jnp.sum(cached_weights, axis=-1, keepdims=True) + own_weight
        cached_out_BxHx1xK = jnp.einsum("bhts,bhsk->bhtk", cached_weights.astype(self.v_BxHxLxK.dtype),
                                        self.v_BxHxLxK, preferred_element_type=accumulation)
        own_out_BxHx1xK = own_weight * jnp.swapaxes(v_Bx1xHxK, 1, 2).astype(accumulation)
        out_BxHx1xK = (cached_out_BxHx1xK + own_out_BxHx1xK) / total_BxHx1x1
        out_Bx1xHxK = jnp.swapaxes(out_BxHx1xK, 1, 2).astype(q_Bx1xHxK.dtype)
        return out_Bx1xHxK, self.write(t, k_Bx1xHxK, v_Bx1xHxK)

    def attend(self, q_BxTxHxK: jax.Array, mask_BxTxL: jax.Array) -> jax.Array:
        """``attend``'s reference path on the cached keys/values; BxTxHxK, zeros where nothing is visible."""
        scale = q_BxTxHxK.shape[-1] ** -0.5
        logits_BxHxTxL = jnp.einsum("bthk,bhks->bhts", q_BxTxHxK, self.kT_BxHxKxL,
                                    preferred_element_type=_accumulation(q_BxTxHxK.dtype)) * scale
        weights_BxHxTxL = _masked_softmax(logits_BxHxTxL, mask_BxTxL)
        out_BxHxTxK = jnp.einsum("bhts,bhsk->bhtk", weights_BxHxTxL.astype(self.v_BxHxLxK.dtype), self.v_BxHxLxK,
                                 preferred_element_type=_accumulation(q_BxTxHxK.dtype))
        return _zero_unseen(jnp.swapaxes(out_BxHxTxK, 1, 2), mask_BxTxL, q_BxTxHxK.dtype)


def _accumulation(dtype: jnp.dtype) -> jnp.dtype:
    """Logits and softmax run in float32 (float64 when the model does, for the tight parity check)."""
    return jnp.promote_types(dtype, jnp.float32)


def _masked_softmax(logits_BxHxTxS: jax.Array, mask_BxTxS: jax.Array) -> jax.Array:
    return jax.nn.softmax(jnp.where(mask_BxTxS[:, None], logits_BxHxTxS, NEG_INF), axis=-1)


def _zero_unseen(out_BxTxHxK: jax.Array, mask_BxTxS: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """Rows with no visible key attend to nothing (e.g. a target with no contexts) and give zeros."""
    any_visible_BxT = jnp.any(mask_BxTxS, axis=-1)
    return jnp.where(any_visible_BxT[:, :, None, None], out_BxTxHxK, 0).astype(dtype)


def _reference_attention(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, mask_BxTxS) -> jax.Array:
    """Plain masked attention with fp32 logits and softmax (runs everywhere)."""
    scale = q_BxTxHxK.shape[-1] ** -0.5
    accumulation = _accumulation(q_BxTxHxK.dtype)
    logits_BxHxTxS = jnp.einsum("bthk,bshk->bhts", q_BxTxHxK, k_BxSxHxK,
                                preferred_element_type=accumulation) * scale
    weights_BxHxTxS = _masked_softmax(logits_BxHxTxS, mask_BxTxS)
    return jnp.einsum("bhts,bshk->bthk", weights_BxHxTxS.astype(v_BxSxHxK.dtype), v_BxSxHxK,
                      preferred_element_type=accumulation)


def _resolve_implementation(implementation: str, dtype: jnp.dtype, fast_path: FastPath | None) -> str:
    if implementation == "cudnn" and fast_path is None:
        # Masks without the fast form (context encoder, G, cross-attention, the KV-cache
        # step) run the same function through XLA, so "cudnn" works model-wide.
        return "xla"
    if implementation != "auto":
        return implementation
    on_gpu = jax.default_backend() == "gpu"
    if on_gpu and fast_path is not None and dtype in (jnp.bfloat16, jnp.float16):
        return "cudnn"
    return "xla" if on_gpu else "reference"


def attend(q_BxTxHxK: jax.Array, k_BxSxHxK: jax.Array, v_BxSxHxK: jax.Array, mask_BxTxS: jax.Array,
           *, fast_path: FastPath | None = None, implementation: str = "auto") -> jax.Array:
    """Masked multi-head attention; softmax in fp32; rows with no visible key give zeros.

    ``implementation``: "reference" (einsum, any backend), "xla" or "cudnn" (through
    ``jax.nn.dot_product_attention``; "cudnn" runs masks given a ``fast_path`` on
    cuDNN and the others through XLA), "auto" picks
    cuDNN flash attention on GPU when the mask has the fast form and the inputs are
    half precision, else the reference path.
    """
    impl = _resolve_implementation(implementation, q_BxTxHxK.dtype, fast_path)
    if impl == "reference":
        out = _reference_attention(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, mask_BxTxS)
    elif impl == "cudnn":
        if fast_path is None:
            raise ValueError("the cudnn attention path needs a FastPath description of the mask")
        out = jax.nn.dot_product_attention(
            q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, is_causal=fast_path.is_causal,
            query_seq_lengths=fast_path.query_lengths_B.astype(jnp.int32),
            key_value_seq_lengths=fast_path.key_lengths_B.astype(jnp.int32), implementation="cudnn")
    elif impl == "xla":
        out = jax.nn.dot_product_attention(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, mask=mask_BxTxS[:, None],
                                           implementation="xla")
    else:
        raise ValueError(f"unknown attention implementation {impl!r}")
    return _zero_unseen(out, mask_BxTxS, q_BxTxHxK.dtype)


class MultiHeadAttention(nnx.Module):
    """Projections around ``attend``, split so keys/values can be computed once and cached.

    Width: q, k, v project ``d_model`` to ``n_heads * head_dim`` (head-major: feature
    h * head_dim + d is dim d of head h), the output projects back; no biases (the
    reference's x-transformers layers). Rotary angles come in as ``Rope`` (one per
    stack). Cross-attention in the sampler computes ``keys_values`` of the contexts
    once per segment; decoder self-attention writes each new token's keys/values into
    a cache.
    """

    def __init__(self, d_model: int, n_heads: int, head_dim: int, *, dtype: jnp.dtype, implementation: str,
                 init: str, rngs: nnx.Rngs) -> None:
        self.n_heads, self.head_dim = n_heads, head_dim
        self.implementation = implementation
        inner = n_heads * head_dim
        make = lambda d_in, d_out: linear(d_in, d_out, use_bias=False, dtype=dtype, init=init, rngs=rngs)
        self.query, self.key, self.value = make(d_model, inner), make(d_model, inner), make(d_model, inner)
        self.out = make(inner, d_model)

    def _heads(self, x_BxTxD: jax.Array) -> jax.Array:
        return x_BxTxD.reshape(*x_BxTxD.shape[:-1], self.n_heads, self.head_dim)

    def queries(self, x_BxTxD: jax.Array, rope: Rope) -> jax.Array:
        return apply_rope(self._heads(self.query(x_BxTxD)), rope)

    def keys_values(self, x_BxSxD: jax.Array, rope: Rope) -> tuple[jax.Array, jax.Array]:
        keys = apply_rope(self._heads(self.key(x_BxSxD)), rope)
        return keys, self._heads(self.value(x_BxSxD))

    def attend_to(self, q_BxTxHxK: jax.Array, k_BxSxHxK: jax.Array, v_BxSxHxK: jax.Array,
                  mask_BxTxS: jax.Array, fast_path: FastPath | None = None) -> jax.Array:
        out = attend(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, mask_BxTxS, fast_path=fast_path,
                     implementation=self.implementation)
        return self._project(out)

    def attend_to_cache(self, q_BxTxHxK: jax.Array, cache: KVCache, mask_BxTxL: jax.Array) -> jax.Array:
        """``attend_to`` on cached (head-major) keys/values: the sampler's cross-attention."""
        return self._project(cache.attend(q_BxTxHxK, mask_BxTxL))

    def decode_step(self, h_Bx1xD: jax.Array, rope: Rope, cache: KVCache, t: jax.Array) -> tuple[jax.Array, KVCache]:
        """Self-attention of one token per row at slot t over the cache, and the cache with it written."""
        keys, values = self.keys_values(h_Bx1xD, rope)
        out, cache = cache.attend_and_write(t, self.queries(h_Bx1xD, rope), keys, values)
        return self._project(out), cache

    def _project(self, out_BxTxHxK: jax.Array) -> jax.Array:
        return self.out(out_BxTxHxK.reshape(*out_BxTxHxK.shape[:2], -1))
