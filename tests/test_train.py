"""The training step and loop (sfs_jax/training) on the real tiny TFDS build.

Properties proved here:
- the pure train step can overfit one fixed batch (the model, loss and optimizer are
  wired so that gradients reduce the loss);
- gradient accumulation applies the full batch's gradient (token-weighted: each head's
  mean runs over the whole batch's tokens), also when micro-batches differ in counts;
- a run killed after a checkpoint and resumed is identical to an uninterrupted run:
  every logged training and validation metric and the final checkpoint (parameters,
  optimizer state, data-iterator state) are bit-equal (maxtext's determinism test);
- the NaN guard stops training and never checkpoints a non-finite state;
- data parallelism over 2 (forced host) devices gives the 1-device losses;
- the bar VAE task trains through the same loop and ``restore.load_trained`` loads
  exactly the parameters that were saved.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from experiments.configs import bar_vae as bar_vae_configs
from experiments.configs import sfs as sfs_configs
from sfs_jax.model.bar_vae import BarVAE
from sfs_jax.model.config import model_config
from sfs_jax.music.song import Song
from sfs_jax.music.tokenizer import TokenType
from sfs_jax.training import sharding, steps, tasks
from sfs_jax.training import train as train_lib
from sfs_jax.training.checkpoint import Checkpoints, read_meta
from sfs_jax.training.metrics_writer import read_metrics
from sfs_jax.training.restore import load_trained
from sfs_jax.training.train import NonFiniteLossError, Task, train_and_evaluate

REPO_ROOT = Path(__file__).resolve().parents[1]
LATENT = model_config("tiny").vae.latent_dim
# Logged metrics that are a function of the model and data (not of wall-clock time).
COMPARED_METRICS = ("loss", "grad_norm", "bits_per_beat", "type_nll", "pitch_nll", "velocity_nll",
                    "duration_nll", "type_accuracy", "pitch_accuracy", "velocity_accuracy",
                    "duration_accuracy", "learning_rate")
Batch = dict[str, np.ndarray]


def tiny_sfs_config(**train: Any) -> ml_collections.ConfigDict:
    """``sfs.py:size=tiny`` (G on, fed random bar embeddings), one target and context bucket (one jit shape).

    Every loop test uses it with ``num_steps=6`` so they share one compiled train step.
    Shared with the data-parallel subprocess, which imports it from this module.
    """
    config = sfs_configs.get_config("size=tiny")
    config.examples.target_buckets = (256,)
    config.examples.context_buckets = (256,)
    # The default (authors') recipe at a rate a tiny model learns at in a few steps, batch 4; a
    # constant rate: the compiled step does not depend on num_steps.
    config.train.update({**dict(num_steps=6, log_every=1, checkpoint_every=3, eval_every=3, batch_size=4,
                                learning_rate=3e-3, schedule="constant"), **train})
    return config


def random_bar_embeddings(dataset_dir: str | Path) -> dict[str, np.ndarray]:
    """Seeded random [n_bars, latent] vectors for every song: G's inputs without training a VAE."""
    import tensorflow_datasets as tfds

    rng = np.random.default_rng(0)
    embeddings = {}
    for _, source in sorted(tfds.builder_from_directory(str(dataset_dir)).as_data_source().items()):
        for i in range(len(source)):
            song = Song.from_features(source[i])
            embeddings[song.song_id] = rng.normal(size=(song.n_bars, LATENT)).astype(np.float32)
    return embeddings


def sfs_task(config: ml_collections.ConfigDict, dataset_dir: str | Path) -> Task:
    return tasks.sfs_task(config, dataset_dir, random_bar_embeddings(dataset_dir))


class LoopStep:
    """The train step exactly as ``train_and_evaluate`` compiles it for ``tiny_sfs_config()``.

    Same task, optimizer (``make_optimizer``: the reference recipe's Adam(0.9, 0.999, 1e-8),
    no clipping, at a constant lr 3e-3), loss (summed per example), mesh, shardings, donation and batch shape,
    so the XLA program is the one the loop tests run, compiled once per session (the
    conftest compilation cache). ``accumulated`` is the same with ``grad_accum_steps=2``.
    """

    def __init__(self, dataset_dir: Path, **train: Any) -> None:
        self.config = tiny_sfs_config(**train)
        self.task = sfs_task(self.config, dataset_dir)
        self.mesh = sharding.make_mesh()
        self.graphdef, state, _ = train_lib.init_state(self.task, self.config, self.mesh)
        self._initial_host = jax.device_get(state)
        make = lambda accum: jax.jit(functools.partial(
            steps.train_step, loss_fn=self.task.loss_fn, normalizer_fn=self.task.normalizer_fn,
            grad_accum_steps=accum), donate_argnums=1)
        self.full, self.accumulated = make(1), make(2)
        self.batch = train_lib.model_inputs(next(self.task.make_train_iterator(self.config.train.seed)))

    def initial_state(self) -> nnx.State:
        """Fresh buffers of the initial (model, optimizer) state (the step donates its input)."""
        return jax.device_put(self._initial_host, NamedSharding(self.mesh, P()))

    def __call__(self, step_fn: Any, state: nnx.State, batch: Batch, step: int
                 ) -> tuple[nnx.State, dict[str, np.ndarray]]:
        key = jax.random.fold_in(jax.random.key(self.config.train.seed), step)
        state, metrics = step_fn(self.graphdef, state, sharding.shard_batch(batch, self.mesh), key,
                                 jnp.asarray(step, jnp.int32))
        return state, jax.device_get(metrics)


@pytest.fixture(scope="module")
def loop_step(tiny_synthetic_dataset: Path) -> LoopStep:
    return LoopStep(tiny_synthetic_dataset)


@pytest.fixture(scope="module")
def mean_per_head_step(tiny_synthetic_dataset: Path) -> LoopStep:
    """``loop_step`` with v1's loss (each head's mean per scored token), whose denominators differ per micro-batch."""
    return LoopStep(tiny_synthetic_dataset, loss_reduction="mean_per_head")


def test_overfits_one_batch(loop_step: LoopStep) -> None:
    """60 steps on one fixed batch of 4 (the loop's Adam, lr 3e-3) cut the loss by more than 3x.

    Measured: about 6x (see the printed line).
    """
    state, losses = loop_step.initial_state(), []
    for i in range(60):
        state, metrics = loop_step(loop_step.full, state, loop_step.batch, i)
        losses.append(float(metrics["loss"]))
    print(f"overfit: loss {losses[0]:.3f} -> {losses[-1]:.3f} (x{losses[0] / losses[-1]:.2f})")
    assert np.all(np.isfinite(losses))
    assert losses[-1] < losses[0] / 3, losses


def _first_step_gradient(loop_step: LoopStep, step_fn: Any, batch: Batch
                         ) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """The gradient of one step from the initial state, read back from the optimizer state.

    After one step Adam's first moment is mu = (1 - b1) * clip(g); clipping by global norm
    (when the recipe clips) divided g by its norm (``grad_norm``, logged before clipping).
    """
    state, metrics = loop_step(step_fn, loop_step.initial_state(), batch, 0)
    flat = jax.tree_util.tree_flatten_with_path(state[1])[0]
    mu = [np.asarray(leaf, np.float64) for path, leaf in flat if "mu" in jax.tree_util.keystr(path)]
    assert len(mu) == len(jax.tree.leaves(nnx.filter_state(state[0], nnx.Param)))
    clip_norm = loop_step.config.train.clip_norm
    unclip = max(float(metrics["grad_norm"]) / clip_norm, 1.0) if clip_norm > 0 else 1.0
    return [m / 0.1 * unclip for m in mu], metrics


def _rows(batch: Batch, rows: list[int]) -> Batch:
    return {k: v[rows] for k, v in batch.items()}


def _concat(*parts: Batch) -> Batch:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _max_difference(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True))


def _counts(batch: Batch) -> tuple[int, int]:
    """(real target tokens, NOTE tokens): the denominators of the type head and the note heads."""
    return int(np.sum(batch["target_type"] != int(TokenType.PAD))), int(np.sum(batch["target_type"] == int(
        TokenType.NOTE)))


@pytest.mark.parametrize("step_fixture", ["loop_step", "mean_per_head_step"])
def test_gradient_accumulation_equals_the_full_batch(step_fixture: str, request: pytest.FixtureRequest) -> None:
    """``grad_accum_steps=2`` applies the full batch's gradient, also when the halves' token counts differ.

    Gradients are read back from the optimizer state after one step (max |difference|
    asserted < 1e-5 on gradients of size up to ~1); the summed metrics (per-head counts,
    NLL sums, the loss) are the full batch's. The halves are chosen with different
    (tokens, notes) counts, where the naive mean of the two halves' own gradients (each
    computed as a full batch of that half, duplicated) is measurably different: that is
    what accumulation without the whole batch's denominators would apply. (With the
    reference's loss, summed per example and averaged over the examples, equal halves
    have equal denominators: the naive mean is then right too, and is checked to be.)
    """
    loop_step: LoopStep = request.getfixturevalue(step_fixture)
    batch = loop_step.batch
    order = next(o for o in ([0, 1, 2, 3], [0, 2, 1, 3], [0, 3, 1, 2])
                 if _counts(_rows(batch, o[:2])) != _counts(_rows(batch, o[2:])))
    reordered = _rows(batch, order)
    full, full_metrics = _first_step_gradient(loop_step, loop_step.full, reordered)
    accumulated, accum_metrics = _first_step_gradient(loop_step, loop_step.accumulated, reordered)
    assert max(float(np.max(np.abs(g))) for g in full) > 1e-2
    assert _max_difference(accumulated, full) < 1e-5, _max_difference(accumulated, full)
    for name in ("type_count", "pitch_count", "tokens"):
        assert accum_metrics[name] == full_metrics[name]
    for name in ("nll_sum", "loss"):
        np.testing.assert_allclose(accum_metrics[name], full_metrics[name], rtol=1e-5)

    halves = [_rows(reordered, [0, 1]), _rows(reordered, [2, 3])]
    half_gradients = [_first_step_gradient(loop_step, loop_step.full, _concat(h, h))[0] for h in halves]
    mean_of_halves = [(a + b) / 2 for a, b in zip(*half_gradients, strict=True)]
    gap = _max_difference(mean_of_halves, full)
    print(f"halves with (tokens, notes) {[_counts(h) for h in halves]}: naive mean of micro-batch gradients "
          f"is off by {gap:.2e}; accumulation by {_max_difference(accumulated, full):.2e}")
    if loop_step.config.train.loss_reduction == "mean_per_head":
        assert gap > 1e-4
    else:
        assert gap < 1e-5


# ---------------------------------------------------------------------------
# The loop: exact resume, NaN guard, data parallelism, the bar VAE task
# ---------------------------------------------------------------------------


class Interrupted(Exception):
    """Stands for the process being killed."""


class StopAfter:
    """A checkpointable iterator that raises ``Interrupted`` after ``n`` batches (a kill)."""

    def __init__(self, iterator: Any, n: int) -> None:
        self.iterator, self.n, self.served = iterator, n, 0

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        if self.served == self.n:
            raise Interrupted(f"killed after {self.n} batches")
        self.served += 1
        return next(self.iterator)

    def get_state(self) -> dict:
        return self.iterator.get_state()

    def set_state(self, state: dict) -> None:
        self.iterator.set_state(state)


def _step_dirs(folder: Path) -> list[int]:
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def _raw_checkpoint(workdir: Path, step: int, folder: str = "checkpoints") -> dict[str, np.ndarray]:
    """A checkpoint's ``state`` item read by orbax alone (no model code): path -> array."""
    tree = ocp.StandardCheckpointer().restore((workdir / folder / str(step) / "state").absolute())
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): np.asarray(leaf)
            for path, leaf in flat}


@pytest.fixture(scope="module")
def run_a(tiny_synthetic_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 6-step run (checkpoint and validation every 3 steps)."""
    workdir = tmp_path_factory.mktemp("run_a")
    config = tiny_sfs_config()
    train_and_evaluate(sfs_task(config, tiny_synthetic_dataset), config, workdir)
    return workdir


@pytest.fixture(scope="module", autouse=True)
def data_parallel_run(tiny_synthetic_dataset: Path, tmp_path_factory: pytest.TempPathFactory
                      ) -> Iterator[tuple[subprocess.Popen, Path]]:
    """The 2-device run, started when this module starts so its compile overlaps the other tests.

    Its output goes to files (a pipe nobody reads until the end could fill and stall it).
    """
    workdir = tmp_path_factory.mktemp("run_dp")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    with open(workdir / "stdout.txt", "w") as stdout, open(workdir / "stderr.txt", "w") as stderr:
        process = subprocess.Popen([sys.executable, "-c", _DATA_PARALLEL_SCRIPT, str(tiny_synthetic_dataset),
                                    str(workdir / "run")], env=env, cwd=REPO_ROOT, stdout=stdout, stderr=stderr)
    yield process, workdir
    if process.poll() is None:
        process.kill()
        process.wait()


_DATA_PARALLEL_SCRIPT = """
import dataclasses, json, sys
import jax
from sfs_jax.training import tasks
from sfs_jax.training.metrics_writer import read_metrics
from sfs_jax.training.train import train_and_evaluate
from tests.test_train import sfs_task, tiny_sfs_config

dataset, workdir = sys.argv[1:3]
# 3 steps: with the constant schedule the losses of steps 1-3 do not depend on num_steps.
config = tiny_sfs_config(num_steps=3, checkpoint_every=100, eval_every=100)
task = dataclasses.replace(sfs_task(config, dataset), make_eval_iterator=lambda: None)
train_and_evaluate(task, config, workdir)
losses = [row["loss"] for row in read_metrics(workdir, "train")]
print("RESULT " + json.dumps({"device_count": jax.device_count(), "losses": losses}))
"""


def test_resume_is_exact(run_a: Path, tiny_synthetic_dataset: Path, tmp_path: Path) -> None:
    """Killed after step 3 and resumed, a run equals the uninterrupted one bit for bit.

    Run B's iterator raises on its 4th batch (after the step-3 checkpoint); a fresh
    ``train_and_evaluate`` in the same workdir resumes at step 3 and finishes. Its
    per-step training metrics (steps 1..6), validation metrics (3, 6) and the step-6
    checkpoint (parameters, Adam moments, step count, grain iterator state) equal run
    A's exactly. Both workdirs keep checkpoints 3 and 6 and one best checkpoint, the
    step with the lower validation loss.
    """
    config = tiny_sfs_config()
    task = sfs_task(config, tiny_synthetic_dataset)
    killed = dataclasses.replace(task, make_train_iterator=lambda seed: StopAfter(task.make_train_iterator(seed), 3))
    with pytest.raises(Interrupted):
        train_and_evaluate(killed, config, tmp_path)
    assert _step_dirs(tmp_path / "checkpoints") == [3]
    assert [row["step"] for row in read_metrics(tmp_path, "train")] == [1, 2, 3]
    train_and_evaluate(sfs_task(config, tiny_synthetic_dataset), config, tmp_path)

    for split, expected_steps in (("train", [1, 2, 3, 4, 5, 6]), ("validation", [3, 6])):
        rows_a, rows_b = read_metrics(run_a, split), read_metrics(tmp_path, split)
        assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b] == expected_steps
        for row_a, row_b in zip(rows_a, rows_b, strict=True):
            for name in COMPARED_METRICS:
                if name in row_a:
                    assert row_a[name] == row_b[name], (split, row_a["step"], name, row_a[name], row_b[name])
    losses = [r["loss"] for r in read_metrics(run_a, "train")]
    assert len(set(losses)) == len(losses), "steps should differ (different batches and parameters)"

    raw_a, raw_b = _raw_checkpoint(run_a, 6), _raw_checkpoint(tmp_path, 6)
    assert raw_a.keys() == raw_b.keys() and any("opt_state" in k or "mu" in k for k in raw_a)
    for name in raw_a:
        assert np.array_equal(raw_a[name], raw_b[name]), name
    assert read_meta(run_a, best=False)["step"] == read_meta(tmp_path, best=False)["step"] == 6
    data_a = json.loads((run_a / "checkpoints" / "6" / "data" / "metadata").read_text())
    data_b = json.loads((tmp_path / "checkpoints" / "6" / "data" / "metadata").read_text())
    assert data_a == data_b

    validation = {r["step"]: r["loss"] for r in read_metrics(run_a, "validation")}
    for workdir in (run_a, tmp_path):
        assert _step_dirs(workdir / "checkpoints") == [3, 6]
        assert _step_dirs(workdir / "best") == [min(validation, key=validation.get)]
        assert read_meta(workdir)["step"] == min(validation, key=validation.get)


def test_resume_refuses_a_workdir_of_another_model_or_examples(run_a: Path, tiny_synthetic_dataset: Path,
                                                               tmp_path: Path) -> None:
    """Resuming carries on with today's config: a changed example recipe or model is refused, nothing is written."""
    workdir = tmp_path / "copy"
    shutil.copytree(run_a, workdir)
    before = sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*"))
    for field, value in (("examples.ref_crop", "aligned"), ("model.use_segment_positions", False)):
        config = tiny_sfs_config()
        block, name = field.split(".")
        config[block][name] = value
        with pytest.raises(ValueError, match=f"another model or examples.*{field}"):
            train_and_evaluate(sfs_task(config, tiny_synthetic_dataset), config, workdir)
    assert sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*")) == before


def test_time_budget_stops_early_with_a_scored_resumable_checkpoint(run_a: Path, tiny_synthetic_dataset: Path,
                                                                    tmp_path: Path) -> None:
    """``max_train_seconds`` ends the loop at the first step past the budget with validation + checkpoint.

    A budget no step can meet stops after step 1: checkpoint 1, a validation row at step
    1, no ``final_metrics.json`` (unfinished). Relaunched without a budget, the run
    resumes at step 1 and its steps 2..6 equal the uninterrupted run's exactly.
    """
    config = tiny_sfs_config()
    config.train.max_train_seconds = 1e-9
    result = train_and_evaluate(sfs_task(config, tiny_synthetic_dataset), config, tmp_path)
    assert result["stopped_early_at_step"] == 1
    assert _step_dirs(tmp_path / "checkpoints") == [1]
    assert [row["step"] for row in read_metrics(tmp_path, "validation")] == [1]
    assert not (tmp_path / "final_metrics.json").exists()

    config.train.max_train_seconds = 0.0
    train_and_evaluate(sfs_task(config, tiny_synthetic_dataset), config, tmp_path)
    assert (tmp_path / "final_metrics.json").exists()
    losses_a = {row["step"]: row["loss"] for row in read_metrics(run_a, "train")}
    losses_b = {row["step"]: row["loss"] for row in read_metrics(tmp_path, "train")}
    assert sorted(losses_b) == [1, 2, 3, 4, 5, 6]
    assert all(losses_a[step] == losses_b[step] for step in range(1, 7)), (losses_a, losses_b)


class PoisonSecondBatch(StopAfter):
    """Serves the batches unchanged except the second, whose bar embeddings are NaN.

    NaN embeddings of known bars make G, hence the loss, the gradients and (after the
    update) the parameters NaN, the way a corrupt input would; the train step itself is
    the one every other loop test compiles.
    """

    def __init__(self, iterator: Any) -> None:
        super().__init__(iterator, n=-1)

    def __next__(self) -> Batch:
        batch = next(self.iterator)
        self.served += 1
        if self.served == 2:
            assert np.any(batch["bar_known"]), "NaNs in unknown bars only would be (rightly) ignored"
            batch = {**batch, "bar_embedding": np.full_like(batch["bar_embedding"], np.nan)}
        return batch


def test_nan_guard_keeps_the_last_good_checkpoint(tiny_synthetic_dataset: Path, tmp_path: Path) -> None:
    """A NaN loss at step 2 raises NonFiniteLossError at step 2; the latest checkpoint is step 1, finite.

    Checkpoints are due every step but log lines every 3 steps, so the NaN happens
    between two log lines: the guard must still stop the step-2 state from being
    checkpointed (before the fix it was saved, and the error came only at step 3).
    """
    config = tiny_sfs_config(checkpoint_every=1, eval_every=100, log_every=3)
    clean = sfs_task(config, tiny_synthetic_dataset)
    task = dataclasses.replace(clean, make_train_iterator=lambda seed: PoisonSecondBatch(
        clean.make_train_iterator(seed)))
    with pytest.raises(NonFiniteLossError, match="step 2"):
        train_and_evaluate(task, config, tmp_path)
    checkpoints = Checkpoints(tmp_path)
    try:
        assert checkpoints.latest_step() == 1
    finally:
        checkpoints.close()
    assert _step_dirs(tmp_path / "checkpoints") == [1]
    raw = _raw_checkpoint(tmp_path, 1)
    assert all(np.all(np.isfinite(v)) for v in raw.values() if np.issubdtype(v.dtype, np.floating))
    assert all(np.isfinite(r["loss"]) for r in read_metrics(tmp_path, "train"))
    assert read_metrics(tmp_path, "validation") == []


def test_data_parallel_matches_one_device(data_parallel_run: tuple[subprocess.Popen, Path], run_a: Path) -> None:
    """Batch 4 over 2 forced host devices gives the 1-device losses (step 1 within 1e-5).

    The subprocess reports ``jax.device_count() == 2``. Steps 2 and 3 (after the first
    updates) agree within 1e-4: only the order of the cross-device reductions differs.
    """
    process, folder = data_parallel_run
    assert process.wait(timeout=600) == 0, (folder / "stderr.txt").read_text()[-3000:]
    stdout = (folder / "stdout.txt").read_text()
    result = json.loads(next(line for line in stdout.splitlines() if line.startswith("RESULT "))[7:])
    one_device = [r["loss"] for r in read_metrics(run_a, "train")][:3]
    print(f"data parallel: {result}; 1 device: {one_device}")
    assert result["device_count"] == 2
    assert abs(result["losses"][0] - one_device[0]) < 1e-5, (result["losses"], one_device)
    np.testing.assert_allclose(result["losses"], one_device, atol=1e-4, rtol=0)


def _pure_params(model: nnx.Module) -> dict[str, np.ndarray]:
    """Every variable of the model (parameters and fixed tables), by path."""
    flat = jax.tree_util.tree_flatten_with_path(nnx.state(model).to_pure_dict())[0]
    return {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): np.asarray(leaf)
            for path, leaf in flat}


def test_bar_vae_task_trains_and_load_trained_restores_it(tiny_synthetic_dataset: Path, tmp_path: Path) -> None:
    """Two VAE steps through ``train_and_evaluate``; ``load_trained`` returns exactly the saved parameters.

    The saved parameters are read independently (orbax alone) and must equal the loaded
    model's, leaf by leaf; they also differ from a fresh initialization, so the load is
    not silently a new model.
    """
    config = bar_vae_configs.get_config("size=tiny")
    config.train.update(num_steps=2, log_every=1, eval_every=2, checkpoint_every=2)
    summary = train_and_evaluate(tasks.vae_task(config, tiny_synthetic_dataset), config, tmp_path)
    assert np.isfinite(summary["train"]["loss"]) and np.isfinite(summary["validation"]["loss"])
    assert [r["step"] for r in read_metrics(tmp_path, "train")] == [1, 2]

    model, loaded_config, meta = load_trained(tmp_path)
    assert isinstance(model, BarVAE) and loaded_config.task == "bar_vae" and meta["step"] == 2
    assert model.config == model_config("tiny").vae
    loaded = _pure_params(model)
    saved = {k.removeprefix("0/").removesuffix("/value"): v for k, v in _raw_checkpoint(tmp_path, 2, "best").items()
             if k.startswith("0/")}
    assert loaded.keys() == saved.keys()
    for name in loaded:
        assert np.array_equal(loaded[name], saved[name]), name
    fresh = _pure_params(BarVAE(model.config, rngs=nnx.Rngs(params=config.train.seed)))
    assert any(not np.array_equal(loaded[name], fresh[name]) for name in loaded)


def test_runs_saved_before_reference_parity_still_load(tmp_path: Path) -> None:
    """A v1 run saved before the fixed tables were state (no rotary ``inv_freq``, no ``model_arch``) loads as v1.

    Its config is read as this project's first design and the rotary frequencies are
    computed again, so the trained parameters come back unchanged.
    """
    from sfs_jax.model.initializers import Buffer
    from sfs_jax.training import restore

    config = sfs_configs.get_config("size=tiny,model=flat,arch=v1,recipe=v1")
    model = restore.make_model(config, nnx.Rngs(3))
    optimizer = nnx.Optimizer(model, train_lib.make_optimizer(config.train)[0], wrt=nnx.Param)
    _, without_tables, _ = nnx.split((model, optimizer), nnx.Not(Buffer), ...)
    saved_config = config.to_dict()
    del saved_config["model_arch"]
    meta = {"task": "sfs", "config": saved_config, "step": 0}
    checkpoints = Checkpoints(tmp_path)
    checkpoints.save(0, without_tables, {}, meta)
    checkpoints.save_best(0, without_tables, {}, meta, 1.0)
    checkpoints.close()
    loaded, loaded_config, _ = load_trained(tmp_path)
    assert loaded_config.model_arch == "v1" and loaded.config.token_layout == "v1"
    for path, value in _pure_params(model).items():
        np.testing.assert_array_equal(_pure_params(loaded)[path], value, err_msg=path)
