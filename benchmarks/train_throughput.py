r"""Training throughput: tokens/s of the jitted train step, and model FLOPs utilisation on GPUs.

    python -m benchmarks.train_throughput --size=small            # CPU
    python -m benchmarks.train_throughput --size=paper --batch_size=32 --compute_dtype=bfloat16  # GPU

Batches are real: synthetic songs through the same grain loader as training (with
random bar embeddings, since speed does not depend on their values), fetched
before timing so only the step is timed. FLOPs per step come from XLA's own cost
analysis of the compiled step; MFU = FLOPs / step time / the chip's dense bf16
peak (printed only for chips in PEAK_BF16_FLOPS). Median over the timed steps.
"""

from __future__ import annotations

import functools
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from data_pipeline import build
from experiments.configs import sfs as sfs_configs
from sfs_jax.training import steps, tasks
from sfs_jax.training.sharding import make_mesh, shard_batch
from sfs_jax.training.train import init_state, model_inputs

PEAK_BF16_FLOPS = {"NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100": 312e12}

_SIZE = flags.DEFINE_enum("size", "small", ["tiny", "small", "paper"], "Model preset.")
_BATCH = flags.DEFINE_integer("batch_size", 0, "Batch size (0: the preset's).")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps after 2 warm-up steps.")
_DTYPE = flags.DEFINE_string("compute_dtype", "", "float32 or bfloat16 (default: the preset's).")
_MODEL = flags.DEFINE_enum("model", "sfs", ["sfs", "flat"], "SFS or the Flat baseline.")
_SONGS = flags.DEFINE_integer("num_songs", 96, "Synthetic songs to draw batches from.")


def peak_flops() -> float | None:
    kind = jax.devices()[0].device_kind
    return next((peak for name, peak in PEAK_BF16_FLOPS.items() if kind.startswith(name)), None)


def main(argv: list[str]) -> None:
    del argv
    arg = f"size={_SIZE.value},model={_MODEL.value}" + (f",compute_dtype={_DTYPE.value}" if _DTYPE.value else "")
    config = sfs_configs.get_config(arg)
    if _BATCH.value:
        config.train.batch_size = _BATCH.value
    with tempfile.TemporaryDirectory() as data_dir:
        folder, _ = build.build("synthetic", data_dir, num_songs=_SONGS.value, workers=2)
        model_cfg = tasks.model_config_from(config)
        rng = np.random.default_rng(0)
        songs = tasks.load_songs(folder)
        embeddings = {song.song_id: rng.normal(size=(song.n_bars, model_cfg.vae.latent_dim)).astype(np.float32)
                      for song in songs} if model_cfg.use_global_view else None
        task = tasks.sfs_task(config, folder, embeddings)
        iterator = task.make_train_iterator(0)
        batches = [next(iterator) for _ in range(_STEPS.value + 2)]
    mesh = make_mesh()
    graphdef, state, _ = init_state(task, config, mesh)
    step_fn = jax.jit(functools.partial(steps.train_step, loss_fn=task.loss_fn), donate_argnums=1)
    numeric = [model_inputs(b) for b in batches]
    key = jax.random.key(0)
    start = time.perf_counter()
    compiled = step_fn.lower(graphdef, state, shard_batch(numeric[0], mesh), key, jnp.int32(0)).compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float(cost.get("flops", 0.0)) if cost else 0.0
    times, tokens = [], []
    for index, batch in enumerate(numeric):
        sharded = shard_batch(batch, mesh)
        start = time.perf_counter()
        state, metrics = step_fn(graphdef, state, sharded, jax.random.fold_in(key, index), jnp.int32(index))
        jax.block_until_ready(metrics["loss"])
        if index >= 2:
            times.append(time.perf_counter() - start)
            tokens.append(int(np.count_nonzero(batch["target_type"])))
    median = statistics.median(times)
    per_step_tokens = statistics.median(tokens)
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, jax {jax.__version__}")
    print(f"model: {_MODEL.value}/{_SIZE.value}, compute {model_cfg.compute_dtype}, batch {config.train.batch_size}, "
          f"target shape {batches[0]['target_type'].shape}, context shape {batches[0]['context_slot'].shape}")
    print(f"compile: {compile_s:.1f} s; step: median {median * 1e3:.1f} ms over {len(times)} steps")
    print(f"throughput: {per_step_tokens / median:.0f} real target tokens/s "
          f"({np.prod(batches[0]['target_type'].shape) / median:.0f} padded tokens/s)")
    peak = peak_flops()
    if flops and peak:
        print(f"model FLOPs/step (XLA cost analysis): {flops:.3g}; MFU {flops / median / peak:.1%} of "
              f"{peak / 1e12:.0f} TFLOP/s")
    elif flops:
        print(f"model FLOPs/step (XLA cost analysis): {flops:.3g} ({flops / median / 1e9:.1f} GFLOP/s achieved)")


if __name__ == "__main__":
    app.run(main)
