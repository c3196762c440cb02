"""Pure training and evaluation steps over ``(graphdef, state, batch)``.

Letters: B batch, T target tokens, M micro-batches (gradient accumulation).

Following the Flax performance guide, the model and optimizer are split once;
a jitted step merges them inside, computes the loss, updates and splits again,
so the Python loop never touches parameters. Metrics come back as sums and
counts so evaluation over many batches aggregates exactly (bits per beat is a
ratio of sums, not a mean of ratios).

Gradient accumulation is exact: a task's ``normalizer_fn`` gives the full batch's
denominators (tokens per head, bars), every micro-batch divides by those instead
of its own, so the summed micro-batch gradients and metrics are the full batch's
(a mean of per-micro-batch means would over-weight micro-batches with few tokens).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from sfs_jax.model import token_layout as layout_lib
from sfs_jax.music.tokenizer import TokenType

HEADS = ("type", "pitch", "velocity", "duration")
# How the four heads' token losses make the training loss (``config.train.loss_reduction``):
# "sum_per_example" (the reference: each head's NLL summed over an example's tokens, averaged over
# the examples, heads summed) or "mean_per_head" (v1: each head's mean NLL per scored token, summed).
LOSS_REDUCTIONS = ("sum_per_example", "mean_per_head")
Normalizers = Mapping[str, jax.Array]
# loss_fn(model, batch, key, step, normalizers=None) -> (loss, metrics); step is -1 in evaluation.
# With normalizers (the full batch's denominators) every returned value is this batch's additive
# share of the full batch's value; without, the batch is its own full batch.
LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]
# normalizer_fn(batch) -> the denominators of the loss over the whole batch (labels only, no model).
NormalizerFn = Callable[[dict[str, jax.Array]], dict[str, jax.Array]]


def head_labels(batch: dict[str, jax.Array], layout: str = "reference") -> dict[str, tuple[jax.Array, jax.Array]]:
    """(labels, mask) per head at each decoder position (``token_layout.head_labels``)."""
    return layout_lib.head_labels(layout_lib.predicted_tokens(batch, layout), layout)


def example_count(batch: dict[str, jax.Array]) -> jax.Array:
    """Examples with a real target (the reference loss's denominator; all-padding rows are not examples)."""
    return jnp.sum(jnp.any(batch["target_type"] != int(TokenType.PAD), axis=1))


def sfs_normalizers(batch: dict[str, jax.Array], layout: str = "reference") -> dict[str, jax.Array]:
    """Tokens scored by each head, and examples, over the whole batch: the denominators of ``sfs_loss``."""
    counts = {f"{head}_count": jnp.sum(mask) for head, (_, mask) in head_labels(batch, layout).items()}
    return {**counts, "n_examples": example_count(batch)}


def factorized_nll(logits: dict[str, jax.Array], labels: dict[str, tuple[jax.Array, jax.Array]],
                   normalizers: Normalizers | None = None, reduction: str = "sum_per_example",
                   n_examples: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The loss of the four heads (SFS.md section 3) under ``reduction``, plus sums/counts.

    "sum_per_example": every head's NLL summed over the tokens, divided by the examples
    (``n_examples``, or ``normalizers["n_examples"]``: the whole batch's, for gradient
    accumulation), heads summed. "mean_per_head": each head's NLL divided by its scored
    tokens (``normalizers[f"{head}_count"]`` when given, else this batch's), summed.
    """
    if reduction not in LOSS_REDUCTIONS:
        raise ValueError(f"loss reduction must be one of {LOSS_REDUCTIONS}, got {reduction!r}")
    if reduction == "sum_per_example" and n_examples is None and normalizers is None:
        raise ValueError("the sum_per_example loss needs n_examples (or the whole batch's normalizers)")
    loss, metrics = jnp.zeros((), jnp.float32), {}
    nll_BxT = 0.0
    for head in HEADS:
        label, mask = labels[head]
        logits_head = logits[head].astype(jnp.promote_types(logits[head].dtype, jnp.float32))
        nll = optax.softmax_cross_entropy_with_integer_labels(logits_head, label)
        nll = jnp.where(mask, nll, 0.0)
        count = jnp.sum(mask)
        correct = jnp.sum((jnp.argmax(logits[head], -1) == label) & mask)
        if reduction == "sum_per_example":
            denominator = n_examples if normalizers is None else normalizers["n_examples"]
        else:
            denominator = count if normalizers is None else normalizers[f"{head}_count"]
        loss = loss + jnp.sum(nll) / jnp.maximum(denominator, 1)
        metrics[f"{head}_nll_sum"], metrics[f"{head}_count"] = jnp.sum(nll), count
        metrics[f"{head}_correct"] = correct
        nll_BxT = nll_BxT + nll
    metrics["nll_sum"] = jnp.sum(nll_BxT)
    return loss, metrics


def sfs_loss(model: nnx.Module, batch: dict[str, jax.Array], key: jax.Array, step: jax.Array,
             normalizers: Normalizers | None = None,
             reduction: str = "sum_per_example") -> tuple[jax.Array, dict[str, jax.Array]]:
    """Teacher-forced loss of the SFS (or Flat) model; ``key`` and ``step`` unused (no dropout)."""
    del key, step
    layout = model.config.token_layout
    loss, metrics = factorized_nll(model.logits(batch), head_labels(batch, layout), normalizers, reduction,
                                   example_count(batch))
    metrics["n_beats"] = jnp.sum(batch["n_beats"]).astype(jnp.float32)
    metrics["tokens"] = jnp.sum(batch["target_type"] != int(TokenType.PAD))
    metrics["loss"] = loss
    return loss, metrics


def summarize(metric_sums: dict[str, Any], n_batches: int) -> dict[str, float]:
    """Summed metrics of ``n_batches`` steps -> readable values.

    Per-head sums/counts become exact per-token means and accuracies, their sum the
    loss, and ``nll_sum / n_beats`` bits per beat; any other metric (the VAE's
    ``kl``, ``beta``, the gradient norm) is averaged over the batches.
    """
    out: dict[str, float] = {}
    head_keys = {"nll_sum", "n_beats", "tokens"}
    for head in HEADS:
        if f"{head}_count" not in metric_sums:
            continue
        head_keys |= {f"{head}_nll_sum", f"{head}_count", f"{head}_correct"}
        count = max(float(metric_sums[f"{head}_count"]), 1.0)
        out[f"{head}_nll"] = float(metric_sums[f"{head}_nll_sum"]) / count
        out[f"{head}_accuracy"] = float(metric_sums[f"{head}_correct"]) / count
    for name, value in metric_sums.items():
        if name not in head_keys:
            out[name] = float(value) / max(n_batches, 1)
    if any(f"{head}_nll" in out for head in HEADS):
        out["loss"] = sum(out[f"{head}_nll"] for head in HEADS if f"{head}_nll" in out)
    if float(metric_sums.get("n_beats", 0.0)) > 0:
        out["bits_per_beat"] = float(metric_sums["nll_sum"]) / math.log(2) / float(metric_sums["n_beats"])
    return out


def split_micro_batches(batch: dict[str, jax.Array], n_micro: int) -> dict[str, jax.Array]:
    """B... -> M x (B/M)...: the leading axis gradient accumulation scans over."""
    return jax.tree.map(lambda x: x.reshape(n_micro, x.shape[0] // n_micro, *x.shape[1:]), batch)


def train_step(graphdef: nnx.GraphDef, state: nnx.State, batch: dict[str, jax.Array], key: jax.Array,
               step: jax.Array, *, loss_fn: LossFn, grad_accum_steps: int = 1,
               normalizer_fn: NormalizerFn | None = None) -> tuple[nnx.State, dict[str, jax.Array]]:
    """One optimizer update with the gradient of the whole batch, in ``grad_accum_steps`` micro-batches.

    With accumulation, ``normalizer_fn`` gives the whole batch's denominators once; each
    micro-batch's loss is its share of the full-batch loss, so the summed gradients and
    metrics equal one pass over the whole batch (up to float summation order).
    """
    model, optimizer = nnx.merge(graphdef, state)
    model_def, params, others = nnx.split(model, nnx.Param, ...)

    def micro_grads(micro_batch, micro_key, normalizers=None):
        def loss_of(p):
            return loss_fn(nnx.merge(model_def, p, others), micro_batch, micro_key, step, normalizers=normalizers)
        (_, metrics), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
        return grads, metrics

    if grad_accum_steps == 1:
        grads, metrics = micro_grads(batch, key)
    else:
        if normalizer_fn is None:
            raise ValueError("gradient accumulation needs the task's normalizer_fn (the full batch's denominators)")
        normalizers = normalizer_fn(batch)
        micro = split_micro_batches(batch, grad_accum_steps)
        keys = jax.random.split(key, grad_accum_steps)

        def body(acc, xs):
            grads, metrics = micro_grads(*xs, normalizers)
            return jax.tree.map(jnp.add, acc, (grads, metrics)), None

        zeros = jax.eval_shape(micro_grads, jax.tree.map(lambda x: x[0], micro), keys[0], normalizers)
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zeros)
        (grads, metrics), _ = jax.lax.scan(body, zeros, (micro, keys))
    metrics["grad_norm"] = optax.global_norm(grads)
    optimizer.update(model, grads)
    return nnx.state((model, optimizer)), metrics


def eval_step(graphdef: nnx.GraphDef, state: nnx.State, batch: dict[str, jax.Array], key: jax.Array,
              *, loss_fn: LossFn) -> dict[str, jax.Array]:
    """Loss metrics without an update (state is the same (model, optimizer) state)."""
    model, _ = nnx.merge(graphdef, state)
    _, metrics = loss_fn(model, batch, key, jnp.asarray(-1, jnp.int32))
    return metrics
