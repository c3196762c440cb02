"""The one attention function and frame RoPE (sfs_jax/model/attention.py).

Properties proved here:
- the XLA path (``jax.nn.dot_product_attention``) and the reference einsum path agree
  under an arbitrary boolean mask;
- the ``FastPath`` the decoder and bar VAE hand to cuDNN (causal and/or per-row
  lengths) describes exactly the explicit mask they build, so the fast kernel and the
  mask-based paths compute the same function;
- a query row that sees no key returns exact zeros on every path;
- logits and softmax run in fp32 even for bf16 inputs;
- rotary codes make query-key dot products depend only on the position difference, partial
  (the reference: first half of each head, adjacent pairs) or full; a known answer for the pairs.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sfs_jax.model import attention
from sfs_jax.model.attention import FastPath, KVCache, Rotary, apply_rope, attend, causal_mask, padding_mask

FP32_ATOL = 1e-5  # reference vs XLA in fp32: same math, different op order
B, T, S, H, K = 2, 7, 11, 3, 8


def _qkv(seed: int, t: int = T, s: int = S, dtype: Any = jnp.float32) -> tuple[jax.Array, jax.Array, jax.Array]:
    kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(kq, (B, t, H, K)).astype(dtype), jax.random.normal(kk, (B, s, H, K)).astype(dtype),
            jax.random.normal(kv, (B, s, H, K)).astype(dtype))


def _random_mask(seed: int, t: int = T, s: int = S) -> jax.Array:
    """A random BxTxS mask with a few rows that see nothing."""
    mask = np.random.default_rng(seed).random((B, t, s)) < 0.5
    mask[0, 2] = False
    mask[1, t - 1] = False
    return jnp.asarray(mask)


def test_xla_matches_reference_under_random_mask() -> None:
    """``implementation="xla"`` equals the reference einsum path within 1e-5 (fp32)."""
    q, k, v = _qkv(0)
    mask = _random_mask(0)
    reference = attend(q, k, v, mask, implementation="reference")
    xla = attend(q, k, v, mask, implementation="xla")
    assert reference.shape == (B, T, H, K) and reference.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(xla), np.asarray(reference), atol=FP32_ATOL, rtol=0)
    # The mask matters: without it the output is different (the comparison has power).
    unmasked = attend(q, k, v, jnp.ones_like(mask), implementation="reference")
    assert np.max(np.abs(np.asarray(unmasked) - np.asarray(reference))) > 1e-2


@pytest.mark.parametrize("is_causal", [True, False])
def test_fast_path_equals_the_explicit_mask(is_causal: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``FastPath`` (causal flag + per-row lengths) is the same function as its explicit mask.

    The decoder builds ``causal_mask & padding_mask(valid, valid)`` with ``valid`` a
    prefix of length ``lengths``, and hands ``FastPath(is_causal=True, lengths, lengths)``
    to cuDNN; the bar VAE encoder does the same without the causal part. Here jax's XLA
    implementation of the fast form (``is_causal``, ``query_seq_lengths``,
    ``key_value_seq_lengths``) is checked against the reference path on that mask,
    including a length-0 row (nothing visible: zeros). Then ``attend``'s own cuDNN
    branch is run on CPU with the kernel swapped for XLA, proving it passes the
    FastPath through unchanged.
    """
    q, k, v = _qkv(1, t=T, s=T)
    lengths_B = jnp.asarray([5, 0], jnp.int32)
    valid_BxT = jnp.arange(T)[None, :] < lengths_B[:, None]
    mask = padding_mask(valid_BxT, valid_BxT)
    if is_causal:
        mask = causal_mask(T)[None] & mask
    reference = attend(q, k, v, mask, implementation="reference")
    fast = jax.nn.dot_product_attention(q, k, v, is_causal=is_causal, query_seq_lengths=lengths_B,
                                        key_value_seq_lengths=lengths_B, implementation="xla")
    np.testing.assert_allclose(np.asarray(fast), np.asarray(reference), atol=FP32_ATOL, rtol=0)
    assert not np.any(np.asarray(reference)[1]), "a length-0 row sees nothing and must be zero"

    real_attention = jax.nn.dot_product_attention

    def cudnn_as_xla(*args: Any, implementation: str | None = None, **kwargs: Any) -> jax.Array:
        assert implementation == "cudnn"
        assert kwargs.get("mask") is None, "the cuDNN branch must rely on the FastPath alone"
        return real_attention(*args, implementation="xla", **kwargs)

    monkeypatch.setattr(attention.jax.nn, "dot_product_attention", cudnn_as_xla)
    fast_path = FastPath(is_causal=is_causal, query_lengths_B=lengths_B, key_lengths_B=lengths_B)
    through_attend = attend(q, k, v, mask, fast_path=fast_path, implementation="cudnn")
    np.testing.assert_allclose(np.asarray(through_attend), np.asarray(reference), atol=FP32_ATOL, rtol=0)


@pytest.mark.parametrize("implementation", ["reference", "xla"])
def test_rows_with_no_visible_key_are_exact_zeros(implementation: str) -> None:
    """A query that sees no key (a padded token, an empty context) outputs exactly 0, not an average."""
    q, k, v = _qkv(2)
    mask = _random_mask(2)
    out = np.asarray(attend(q, k, v, mask, implementation=implementation))
    empty_BxT = ~np.asarray(mask).any(-1)
    assert empty_BxT.sum() >= 2
    assert np.all(out[empty_BxT] == 0.0)
    assert np.all(np.any(out[~empty_BxT] != 0.0, axis=(-2, -1)))
    # An all-False mask gives an all-zero output.
    nothing = np.asarray(attend(q, k, v, jnp.zeros_like(mask), implementation=implementation))
    assert np.all(nothing == 0.0)


def _fp32_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> np.ndarray:
    """Masked attention of the given (already bf16-rounded) values, computed in float64 numpy."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    logits = np.einsum("bthk,bshk->bhts", q, k) / np.sqrt(q.shape[-1])
    logits = np.where(np.asarray(mask)[:, None], logits, -np.inf)
    logits -= logits.max(-1, keepdims=True)
    weights = np.exp(logits)
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bhts,bshk->bthk", weights, v)


def _all_eqns(jaxpr: Any) -> list[Any]:
    """Every equation of a jaxpr, including those of nested jaxprs (custom_jvp, pjit)."""
    found = []
    for eqn in jaxpr.eqns:
        found.append(eqn)
        for param in eqn.params.values():
            inner = getattr(param, "jaxpr", param)
            if hasattr(inner, "eqns"):
                found += _all_eqns(inner)
    return found


def test_bf16_inputs_get_fp32_logits_and_softmax() -> None:
    """With bf16 q/k/v the logits and softmax are fp32; only the output is rounded to bf16.

    Large, nearly tied logits (about 226 +- 1) make the difference visible: bf16 keeps
    8 bits of mantissa, so a bf16 logit near 226 is off by up to 0.5 and a softmax
    weight by up to ~65%. The output must match a float64 computation on the same bf16-rounded
    inputs within bf16 output rounding (2e-2 on values of size ~1), and the same
    computation done in bf16 (the control below) must not, so the check has power.
    The jaxpr is also inspected: every ``exp`` runs on float32.
    """
    tolerance = 2e-2
    rng = np.random.default_rng(3)
    # Nearly tied large logits: q.k / sqrt(K) ~ 226 +- 1 (exact in fp32, steps of 1.0 in bf16).
    q = jnp.full((B, T, H, K), 8.0, jnp.bfloat16)
    k = jnp.asarray(10.0 + 0.1 * rng.normal(size=(B, S, H, K)), jnp.bfloat16)
    v = jnp.asarray(rng.normal(size=(B, S, H, K)), jnp.bfloat16)
    mask = jnp.ones((B, T, S), bool)
    out = attend(q, k, v, mask, implementation="reference")
    assert out.dtype == jnp.bfloat16
    expected = _fp32_attention(q, k, v, mask)
    np.testing.assert_allclose(np.asarray(out, np.float64), expected, atol=tolerance, rtol=0)

    # Control: the same attention with bf16 logits and softmax misses the tolerance.
    logits_bf16 = jnp.einsum("bthk,bshk->bhts", q, k) * jnp.bfloat16(K ** -0.5)
    weights_bf16 = jax.nn.softmax(logits_bf16, axis=-1)
    naive = jnp.einsum("bhts,bshk->bthk", weights_bf16, v)
    assert np.max(np.abs(np.asarray(naive, np.float64) - expected)) > tolerance

    jaxpr = jax.make_jaxpr(lambda *a: attend(*a, implementation="reference"))(q, k, v, mask)
    exp_inputs = [eqn.invars[0].aval.dtype for eqn in _all_eqns(jaxpr.jaxpr) if eqn.primitive.name == "exp"]
    assert exp_inputs and all(dtype == jnp.float32 for dtype in exp_inputs), exp_inputs


@pytest.mark.parametrize("rotary_dims, pairs", [(K // 2, "adjacent"), (K, "halves"), (K, "adjacent")],
                         ids=["partial_adjacent", "full_halves", "full_adjacent"])
def test_rope_dot_products_depend_only_on_position_difference(rotary_dims: int, pairs: str) -> None:
    """<rope(q, p + d), rope(k, p' + d)> == <rope(q, p), rope(k, p')> for every head and shift d.

    This is what makes cross-attention distances relative (SFS.md section 3): a target
    token and a context note interact through their distance in frames only. Positions
    up to ~2000 frames; 1e-4 relative tolerance covers fp32 angle rounding. Holds for the
    reference's partial rotary (first half of each head, adjacent pairs) and v1's full one.
    """
    rng = np.random.default_rng(4)
    q = jnp.asarray(rng.normal(size=(B, T, H, K)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(B, S, H, K)), jnp.float32)
    q_pos = jnp.asarray(rng.integers(0, 1000, (B, T)), jnp.int32)
    k_pos = jnp.asarray(rng.integers(0, 1000, (B, S)), jnp.int32)
    rotary = Rotary(rotary_dims, 10_000.0, pairs)
    rope = lambda x, positions: apply_rope(x, rotary.angles(positions))

    def dots(shift: int) -> np.ndarray:
        return np.asarray(jnp.einsum("bthk,bshk->bhts", rope(q, q_pos + shift), rope(k, k_pos + shift)))

    base = dots(0)
    for shift in (1, 37, 1000):
        np.testing.assert_allclose(dots(shift), base, rtol=1e-4, atol=1e-4)
    # Power: moving only the queries changes the dot products.
    moved = np.asarray(jnp.einsum("bthk,bshk->bhts", rope(q, q_pos + 5), rope(k, k_pos)))
    assert np.max(np.abs(moved - base)) > 1e-1
    # Rotation: norms are kept, position 0 is the identity, dims past rotary_dims pass unrotated.
    np.testing.assert_allclose(np.linalg.norm(np.asarray(rope(q, q_pos)), axis=-1),
                               np.linalg.norm(np.asarray(q), axis=-1), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(rope(q, jnp.zeros_like(q_pos))), np.asarray(q))
    np.testing.assert_array_equal(np.asarray(rope(q, q_pos))[..., rotary_dims:], np.asarray(q)[..., rotary_dims:])


def test_adjacent_pairs_rotate_dims_two_by_two() -> None:
    """Known answer: pair (2i, 2i+1) turns by position * 10000^(-2i/R); the reference's layout (x-transformers)."""
    x = jnp.asarray(np.arange(1, 9, dtype=np.float32)).reshape(1, 1, 1, 8)
    out = np.asarray(apply_rope(x, Rotary(4, 10_000.0, "adjacent").angles(jnp.asarray([[3]]))))[0, 0, 0]
    for i, freq in enumerate((1.0, 10_000.0 ** -0.5)):
        a, b, angle = 2 * i + 1.0, 2 * i + 2.0, 3 * freq
        np.testing.assert_allclose(out[2 * i: 2 * i + 2],
                                   [a * np.cos(angle) - b * np.sin(angle), b * np.cos(angle) + a * np.sin(angle)],
                                   rtol=1e-6)
    np.testing.assert_array_equal(out[4:], [5, 6, 7, 8])


def test_attend_and_write_equals_write_then_attend() -> None:
    """The decoding step's attention (cached slots < t plus token t's own key) equals writing slot t and
    attending to slots <= t, and leaves the cache that ``write`` leaves; token 0 sees only itself."""
    batch_size, heads, head_dim, slots = 2, 3, 8, 16
    keys = jax.random.split(jax.random.key(7), 5)
    cache = KVCache.from_keys_values(jax.random.normal(keys[0], (batch_size, slots, heads, head_dim)),
                                     jax.random.normal(keys[1], (batch_size, slots, heads, head_dim)))
    q, k, v = (jax.random.normal(key, (batch_size, 1, heads, head_dim)) for key in keys[2:])
    for t in (0, 5, slots - 1):
        out, written = cache.attend_and_write(jnp.int32(t), q, k, v)
        expected_cache = cache.write(jnp.int32(t), k, v)
        slots_0_to_t = jnp.broadcast_to(jnp.arange(slots) <= t, (batch_size, 1, slots))  # causal_mask row t
        expected = expected_cache.attend(q, slots_0_to_t)
        np.testing.assert_allclose(np.asarray(out), np.asarray(expected), atol=1e-6, rtol=1e-6)
        for got, want in zip(jax.tree.leaves(written), jax.tree.leaves(expected_cache), strict=True):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    np.testing.assert_allclose(np.asarray(cache.attend_and_write(jnp.int32(0), q, k, v)[0]), np.asarray(v),
                               atol=1e-6)
