"""``train_and_evaluate``: the training loop shared by SFS, Flat and the bar VAE.

Place in the data flow: [4]->[5]. A ``Task`` says what is trained (model
constructor, pure loss, loaders); this module owns everything else: optimizer
and schedule, data-parallel sharding, the jitted pure step, periodic validation
with bits per beat, TensorBoard scalars, a progress line, a NaN/inf guard and
orbax checkpoints whose resume is exact (state, data iterator and step-folded
PRNG keys are all restored).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from sfs_jax.training import sharding, steps
from sfs_jax.training.checkpoint import Checkpoints
from sfs_jax.training.metrics_writer import MetricsWriter


@dataclasses.dataclass
class Task:
    """What to train: everything model- and data-specific the loop needs."""

    name: str
    make_model: Callable[[nnx.Rngs], nnx.Module]
    loss_fn: steps.LossFn
    # batch -> the loss's denominators over the whole batch (exact gradient accumulation)
    normalizer_fn: steps.NormalizerFn | None
    make_train_iterator: Callable[[int], Any]  # seed -> checkpointable grain iterator
    make_eval_iterator: Callable[[], Iterator[dict[str, np.ndarray]] | None]
    tokens_key: str = "target_type"  # non-zero entries of this field are the batch's tokens
    config_json: dict = dataclasses.field(default_factory=dict)
    # config json -> what a resumed run must share with its checkpoint (None: not checked)
    resume_identity: Callable[[dict], Any] | None = None


def _leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, Mapping):
        return {k: v for key, value in tree.items() for k, v in _leaves(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): tree}


def check_resumable(identity: Callable[[dict], Any] | None, saved_config_json: Mapping[str, Any],
                    config_json: Mapping[str, Any], workdir: str | Path) -> None:
    """Refuses to resume (or reuse) a workdir whose checkpoint trained another model or other examples.

    Resuming restores weights and data position and carries on with today's config,
    so a changed model or example recipe would give one run two definitions without a word.
    ``identity`` (``Task.resume_identity``) says what must match; None checks nothing.
    """
    if identity is None:
        return
    saved, current = _leaves(identity(dict(saved_config_json))), _leaves(identity(dict(config_json)))
    differing = sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k))
    if differing:
        shown = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in differing[:4])
        raise ValueError(f"{workdir} holds a run of another model or examples ({shown}"
                         f"{', ...' if len(differing) > 4 else ''}); resuming would mix the two: use a new --workdir")


def say(text: str) -> None:
    """A progress line, from process 0 only (every process computes the same global metrics)."""
    if jax.process_index() == 0:
        print(text, flush=True)


class NonFiniteLossError(FloatingPointError):
    """Training produced NaN/inf; the last good checkpoint is kept."""


def make_optimizer(train_config: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation, Callable]:
    """Adam(W) with an optional linear warmup, then the named decay; clipped when ``clip_norm`` > 0.

    Schedules: "exponential" (lr times ``decay_rate`` per step: the reference's 0.999998502),
    "cosine" / "linear" (to ``final_lr_fraction`` of the peak at ``num_steps``), "constant".
    Fields a config saved before a field existed take the v1 recipe's value.
    """
    get = lambda name, default: train_config.get(name, default)
    peak, warmup = train_config.learning_rate, train_config.warmup_steps
    decay_steps = max(train_config.num_steps - warmup, 1)
    end = peak * train_config.final_lr_fraction
    if train_config.schedule == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=train_config.final_lr_fraction)
    elif train_config.schedule == "linear":
        decay = optax.linear_schedule(peak, end, decay_steps)
    elif train_config.schedule == "constant":
        decay = optax.constant_schedule(peak)
    elif train_config.schedule == "exponential":
        decay = optax.exponential_decay(peak, transition_steps=1, decay_rate=get("decay_rate", 1.0))
    else:
        raise ValueError(f"unknown schedule {train_config.schedule!r}: exponential, cosine, linear or constant")
    schedule = (optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup]) if warmup > 0
                else decay)
    adam = optax.adamw(schedule, b1=get("b1", 0.9), b2=get("b2", 0.98), eps=get("eps", 1e-8),
                       weight_decay=train_config.weight_decay)
    clip_norm = get("clip_norm", 1.0)
    tx = optax.chain(optax.clip_by_global_norm(clip_norm), adam) if clip_norm > 0 else optax.chain(adam)
    return tx, schedule


def model_inputs(batch: dict[str, Any]) -> dict[str, np.ndarray]:
    """Drops host-only counters (ints/strings the model never reads) from a collated batch."""
    return {k: v for k, v in batch.items() if isinstance(v, np.ndarray) and v.ndim >= 1
            and v.dtype != object}


def init_state(task: Task, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh
               ) -> tuple[nnx.GraphDef, nnx.State, Callable]:
    """(graphdef, state, lr schedule) of a fresh model and optimizer, placed as ``config.mesh`` says.

    The state is built under ``jit`` straight into its shardings (``sharding.init_sharded``):
    replicated by default, its large matrices split over the ``fsdp`` axis when that is > 1.
    """
    tx, schedule = make_optimizer(config.train)

    def make() -> tuple[nnx.Module, nnx.Optimizer]:
        model = task.make_model(nnx.Rngs(params=config.train.seed))
        return model, nnx.Optimizer(model, tx, wrt=nnx.Param)

    graphdef, state = sharding.init_sharded(make, mesh, mesh_rules(config))
    return graphdef, state, schedule


def mesh_fsdp(config: ml_collections.ConfigDict) -> int:
    """The config's fsdp axis size (1 for configs written before the mesh block existed)."""
    return int((config.get("mesh") or {}).get("fsdp", 1))


def mesh_rules(config: ml_collections.ConfigDict) -> tuple[tuple[str, str | None], ...]:
    """The config's logical axis rules (``sharding.DEFAULT_RULES`` when it has none)."""
    rules = (config.get("mesh") or {}).get("rules", sharding.DEFAULT_RULES)
    return tuple((str(name), None if axis in (None, "", "None") else str(axis)) for name, axis in rules)


def parameter_count(state: nnx.State) -> int:
    model_state = state[0] if isinstance(state, (tuple, list)) else state
    return int(sum(x.size for x in jax.tree.leaves(nnx.filter_state(model_state, nnx.Param))))


def evaluate(eval_fn: Callable, graphdef, state, eval_iterator, mesh, key: jax.Array) -> dict[str, float]:
    """Sums metrics over the whole validation iterator, then summarizes."""
    totals: dict[str, float] = {}
    n_batches = 0
    for index, batch in enumerate(eval_iterator):
        n_batches += 1
        metrics = jax.device_get(eval_fn(graphdef, state, sharding.shard_batch(model_inputs(batch), mesh),
                                         jax.random.fold_in(key, index)))
        for name, value in metrics.items():
            totals[name] = totals.get(name, 0.0) + float(value)
    return steps.summarize(totals, n_batches) if totals else {}


def train_and_evaluate(task: Task, config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Trains ``task`` to ``config.train.num_steps`` in ``workdir``, resuming if possible.

    Returns the last training and validation summaries. Raises NonFiniteLossError
    (after closing the writers) when the loss stops being finite.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    train_config = config.train
    mesh = sharding.make_mesh(mesh_fsdp(config))
    if train_config.batch_size % (jax.device_count() * train_config.grad_accum_steps):
        raise ValueError(f"batch_size {train_config.batch_size} must divide by devices x grad_accum_steps "
                         f"({jax.device_count()} x {train_config.grad_accum_steps})")
    graphdef, state, schedule = init_state(task, config, mesh)
    logging.info("%s: %d parameters", task.name, parameter_count(state))
    if mesh.shape["fsdp"] > 1:
        fraction = sharding.sharded_fraction(nnx.filter_state(state[0], nnx.Param))
        say(f"[{task.name}] mesh data={mesh.shape['data']} fsdp={mesh.shape['fsdp']}: {100 * fraction:.1f}% of the "
            f"parameter bytes (and of Adam's moments) split over the fsdp axis")
    checkpoints = Checkpoints(workdir, keep=train_config.keep_checkpoints)
    train_iterator = task.make_train_iterator(train_config.seed)
    start_step = 0
    if checkpoints.latest_step() is not None:
        check_resumable(task.resume_identity, checkpoints.meta().get("config", {}), task.config_json, workdir)
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
        state, data_state, meta = checkpoints.restore(abstract)
        if data_state:  # an imported checkpoint (restore.write_run) has no data position: start the stream
            train_iterator.set_state(data_state)
        start_step = int(meta["step"])
        logging.info("resumed %s at step %d", workdir, start_step)
        final = workdir / "final_metrics.json"
        if start_step >= train_config.num_steps and final.exists():
            checkpoints.close()
            return json.loads(final.read_text())

    loss_fn = task.loss_fn
    # The updated state keeps the state's placement (fsdp: split weights stay split).
    state_shardings = jax.tree.map(lambda x: x.sharding, state)
    replicated = NamedSharding(mesh, P())
    train_fn = jax.jit(functools.partial(steps.train_step, loss_fn=loss_fn, normalizer_fn=task.normalizer_fn,
                                         grad_accum_steps=train_config.grad_accum_steps), donate_argnums=1,
                       out_shardings=(state_shardings, replicated))
    eval_fn = jax.jit(functools.partial(steps.eval_step, loss_fn=loss_fn))
    base_key = jax.random.key(train_config.seed)
    writer = MetricsWriter(workdir, enabled=jax.process_index() == 0)
    meta_base = {"task": task.name, "config": task.config_json}
    shapes_seen: set = set()
    pending: list[dict[str, jax.Array]] = []
    last_train: dict[str, float] = {}
    last_eval: dict[str, float] = {}
    window_start, window_tokens = time.perf_counter(), 0
    # A wall-clock budget (config.train.max_train_seconds, 0: none) ends the run early at a
    # validation + checkpoint step, so a fixed GPU lease always leaves a scored, resumable run.
    max_seconds = float(train_config.get("max_train_seconds", 0) or 0)
    loop_start, stopped_early = time.perf_counter(), False

    def save(step: int, validation_loss: float | None = None) -> None:
        meta = {**meta_base, "step": step, "train": last_train, "validation": last_eval}
        data_state = train_iterator.get_state()
        checkpoints.save(step, state, data_state, meta)
        if validation_loss is not None:
            checkpoints.save_best(step, state, data_state, meta, validation_loss)

    try:
        for step in range(start_step, train_config.num_steps):
            batch = model_inputs(next(train_iterator))
            shape = tuple(sorted((k, v.shape) for k, v in batch.items()))
            if shape not in shapes_seen:
                shapes_seen.add(shape)
                logging.info("batch shape %d of run (a new jit compile): %s", len(shapes_seen),
                             {k: v for k, v in shape if k.startswith(("target_type", "context_slot",
                                                                       "bar_known", "tokens_type"))})
            window_tokens += int(np.count_nonzero(batch[task.tokens_key]))
            state, metrics = train_fn(graphdef, state, sharding.shard_batch(batch, mesh),
                                      jax.random.fold_in(base_key, step), jnp.asarray(step, jnp.int32))
            pending.append(metrics)
            done = step + 1
            out_of_time = bool(max_seconds) and time.perf_counter() - loop_start >= max_seconds
            last = done == train_config.num_steps or out_of_time
            is_log = done % train_config.log_every == 0 or last
            is_eval = done % train_config.eval_every == 0 or last
            is_save = done % train_config.checkpoint_every == 0 or done == train_config.num_steps or is_eval
            if is_log or is_save:
                # Checked before a save or validation too (not only at log steps), so a
                # non-finite state is never checkpointed when checkpoint_every < log_every.
                sums = jax.device_get(jax.tree.map(lambda *xs: jnp.sum(jnp.stack(xs)), *pending))
                if not all(np.isfinite(float(sums[k])) for k in ("loss", "grad_norm")):
                    raise NonFiniteLossError(f"non-finite loss or gradient at step {done}; the last good "
                                             f"checkpoint in {workdir} is kept")
            if is_log:
                elapsed = time.perf_counter() - window_start
                last_train = steps.summarize(sums, len(pending))
                last_train.update(learning_rate=float(schedule(done)), tokens_per_second=window_tokens / elapsed,
                                  step_seconds=elapsed / len(pending))
                writer.write("train", done, last_train)
                say(f"[{task.name}] step {done}/{train_config.num_steps} " + " ".join(
                    f"{k}={v:.4g}" for k, v in last_train.items()))
                pending, window_start, window_tokens = [], time.perf_counter(), 0
            eval_iterator = task.make_eval_iterator() if is_eval else None
            if eval_iterator is not None:
                last_eval = evaluate(eval_fn, graphdef, state, eval_iterator, mesh, jax.random.key(0))
                writer.write("validation", done, last_eval)
                say(f"[{task.name}] validation step {done} " + " ".join(
                    f"{k}={v:.4g}" for k, v in last_eval.items()))
            if is_save:
                save(done, last_eval.get("loss") if is_eval and last_eval else None)
            if out_of_time and done < train_config.num_steps:
                logging.warning("stopping at step %d: max_train_seconds=%g reached", done, max_seconds)
                stopped_early = True
                break
    finally:
        writer.close()
        checkpoints.close()
    logging.info("compiled %d batch shapes", len(shapes_seen))
    result = {"train": last_train, "validation": last_eval, "batch_shapes": len(shapes_seen)}
    if stopped_early:
        # No final_metrics.json: the run is unfinished and a relaunch resumes it.
        return {**result, "stopped_early_at_step": done}
    if jax.process_index() == 0:  # one process writes what every process computed alike
        (workdir / "final_metrics.json").write_text(json.dumps(result, indent=2))
    return result
