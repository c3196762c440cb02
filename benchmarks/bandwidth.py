"""The memory-traffic bound of a decoding step: what it must read, and how fast this machine streams it.

At batch 1 a decoding step is a chain of matrix-vector products: it must read every
weight it uses once, and the keys/values its token attends to. ``step_bytes``
counts those bytes (cross-attention keys/values projections are used once per
window, not per step, so they are left out); ``stream_rate`` measures how fast the
machine streams the decoder's own matrices through one matrix-vector product each
in a jitted loop (the floor the step cannot beat). Bytes / rate is the step's
lower bound; the generation benchmark prints it beside the measured speed.
"""

from __future__ import annotations

import functools
import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx

from sfs_jax.model.config import ModelConfig


def nbytes(arrays: list[jax.Array]) -> int:
    """Bytes the arrays hold."""
    return sum(a.size * a.dtype.itemsize for a in arrays)


def decoder_matrices(model: nnx.Module, dtype: jnp.dtype | None = None) -> list[jax.Array]:
    """The decoder's 2-D parameters (every projection and embedding table), optionally cast."""
    matrices = [leaf for leaf in jax.tree.leaves(nnx.state(model.decoder, nnx.Param)) if leaf.ndim == 2]
    return matrices if dtype is None else [m.astype(dtype) for m in matrices]


@functools.partial(jax.jit, static_argnums=2)
def _stream(matrices: list[jax.Array], x: jax.Array, n_steps: int) -> jax.Array:
    def body(_: jax.Array, x: jax.Array) -> jax.Array:
        acc = x
        for w in matrices:
            acc = acc + jnp.sum(jnp.dot(x[:, :w.shape[0]].astype(w.dtype), w, preferred_element_type=jnp.float32),
                                keepdims=True)
        return acc * 1e-6
    return jax.lax.fori_loop(0, n_steps, body, x)


def stream_rate(matrices: list[jax.Array], n_steps: int = 32, repeats: int = 3) -> float:
    """Bytes per second of one matrix-vector product with each matrix, ``n_steps`` times in a jitted loop."""
    x = jnp.ones((1, max(w.shape[0] for w in matrices)), jnp.float32)
    jax.block_until_ready(_stream(matrices, x, n_steps))
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        jax.block_until_ready(_stream(matrices, x, n_steps))
        times.append(time.perf_counter() - began)
    return nbytes(matrices) * n_steps / statistics.median(times)


def step_bytes(model: nnx.Module, config: ModelConfig, batch_size: int, attended_tokens: float,
               context_tokens: int) -> float:
    """Bytes one decoding step of ``batch_size`` rows must read: the weights it uses once, and per row the
    self-attention keys/values of ``attended_tokens`` slots and the contexts' keys/values."""
    weights = nbytes(decoder_matrices(model))
    for block in model.decoder.blocks:
        if block.cross_attention is not None:  # contexts' keys/values: projected once per window
            weights -= nbytes([block.cross_attention.key.kernel.value, block.cross_attention.value.kernel.value])
    itemsize = jnp.dtype(config.compute_dtype).itemsize
    per_slot = 2 * config.n_heads * config.head_dim * itemsize * config.n_decoder_layers
    cross = context_tokens if config.use_cross_attention else 0
    return weights + batch_size * per_slot * (attended_tokens + cross)
