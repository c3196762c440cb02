"""How parameters start, and the fixed tables that are state but not parameters.

Place in the data flow: [5] every module of the model builds its Linear and Embed
layers through ``linear`` / ``embed`` here, so one config value (``ModelConfig.init``)
decides whether they start as PyTorch's do (the authors' model: Linear weights and
biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)), embeddings N(0, 1)) or with flax's
defaults (this project's first design).

``Buffer`` holds what the reference keeps as ``register_buffer``: the sinusoid and
beat tables of the position code, G's bar sinusoids and the rotary frequencies. They
are model state (checkpointed, and overwritten from the authors' file by the
importer, so a float64 port can use the exact float32 values the reference used)
but never trained: the optimizer and every parameter count see ``nnx.Param`` only.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx


class Buffer(nnx.Variable):
    """A fixed table (position codes, rotary frequencies): state, not a trained parameter."""


def torch_uniform(fan_in: int):
    """PyTorch's ``nn.Linear`` default for weight and bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    (kaiming_uniform with a = sqrt(5) gives exactly this bound for the weight.)
    """
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def linear(d_in: int, d_out: int, *, init: str, rngs: nnx.Rngs, use_bias: bool = True,
           dtype: jnp.dtype | None = None) -> nnx.Linear:
    """A Linear layer initialised as ``init`` ("torch" or "flax") says."""
    if init == "torch":
        return nnx.Linear(d_in, d_out, use_bias=use_bias, dtype=dtype, kernel_init=torch_uniform(d_in),
                          bias_init=torch_uniform(d_in), rngs=rngs)
    return nnx.Linear(d_in, d_out, use_bias=use_bias, dtype=dtype, rngs=rngs)


def embed(n: int, d: int, *, init: str, rngs: nnx.Rngs) -> nnx.Embed:
    """An embedding table: N(0, 1) as PyTorch's ``nn.Embedding`` ("torch"), or flax's default."""
    if init == "torch":
        return nnx.Embed(n, d, embedding_init=nnx.initializers.normal(1.0), rngs=rngs)
    return nnx.Embed(n, d, rngs=rngs)


def normal_param(shape: tuple[int, ...], *, init: str, rngs: nnx.Rngs, flax_scale: float = 0.02) -> nnx.Param:
    """A free vector (an ``nn.Parameter(torch.randn(...))`` in the reference): N(0, 1), or N(0, flax_scale^2)."""
    scale = 1.0 if init == "torch" else flax_scale
    return nnx.Param(jax.random.normal(rngs.params(), shape) * scale)
