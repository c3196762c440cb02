"""Config -> ``Task``: the model, loss and loaders of SFS/Flat and of the bar VAE.

Place in the data flow: [3]->[4]->[5]. Reads a built ``sfs_songs`` folder (the
experiments' main builds it on demand) and turns an ml_collections config into the
pieces ``train_and_evaluate`` needs, so the loop itself knows nothing of music.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from sfs_jax.data import bars as bars_lib
from sfs_jax.data import loader
from sfs_jax.data.examples import ExampleConfig
from sfs_jax.model import bar_vae
from sfs_jax.model.config import ModelConfig, model_config
from sfs_jax.model.flat import flat_config
from sfs_jax.model.sfs import SFSModel
from sfs_jax.music.song import Song
from sfs_jax.training import steps
from sfs_jax.training.train import Task

EVAL_SEED = 1234


def open_splits(dataset_dir: str | Path) -> dict[str, Any]:
    """Random-access sources of a built dataset folder, by split name."""
    path = Path(dataset_dir).expanduser()
    if not (path / "dataset_info.json").exists():
        raise FileNotFoundError(f"{path} is not a built sfs_songs dataset (no dataset_info.json); "
                                "build one with python -m data_pipeline.build")
    return dict(tfds.builder_from_directory(str(path)).as_data_source())


def load_songs(dataset_dir: str | Path, split: str | None = None) -> list[Song]:
    """Every song of one split (``None``: of all splits) of a built dataset, decoded.

    Bar embeddings need every song, the evaluation protocol one split; an unknown split
    is an error naming the splits the dataset has.
    """
    splits = open_splits(dataset_dir)
    if split is not None and split not in splits:
        raise ValueError(f"{dataset_dir} has no {split!r} split; it has {sorted(splits)}")
    chosen = [splits[split]] if split is not None else list(splits.values())
    return [Song.from_features(source[i]) for source in chosen for i in range(len(source))]


def eval_source(splits: Mapping[str, Any]) -> Any:
    """The validation split, or train when a tiny build has none (logged)."""
    if "validation" in splits:
        return splits["validation"]
    logging.warning("dataset has no validation split; validating on train")
    return splits["train"]


def to_dict(value: Any) -> dict:
    return value.to_dict() if isinstance(value, ml_collections.ConfigDict) else dict(value)


MODEL_NAMES = {"sfs": ("sfs", "flat"), "bar_vae": ("bar_vae",)}  # by config.task


def model_name_of(config: ml_collections.ConfigDict) -> str:
    """Which model a config trains: ``sfs`` or ``flat`` (task ``sfs``), ``bar_vae``.

    ``model_name`` chooses the architecture, so it is checked rather than read as a
    label: ``--config.model_name=flat_4k`` would otherwise train SFS without a word.
    A run is named by its workdir.
    """
    task = config.get("task", "sfs")
    names = MODEL_NAMES.get(task)
    if names is None:
        raise ValueError(f"config.task must be one of {tuple(MODEL_NAMES)}, got {task!r}")
    name = config.get("model_name", names[0])
    if name not in names:
        raise ValueError(f"config.model_name must be one of {names} for task {task!r} (it picks the model, "
                         f"it is not a label: name a run by its --workdir), got {name!r}")
    return name


def upgrade_saved_config(config: ml_collections.ConfigDict, workdir: str | Path = "") -> ml_collections.ConfigDict:
    """A saved config as today's code reads it.

    Before ``model_name`` was checked, any name but ``flat`` trained SFS, so a
    checkpoint saved with a label there (``sfs_segment_4k``) holds an SFS model: it is
    read as ``sfs`` (logged) rather than refused, so no trained run becomes unloadable.
    """
    if config.get("task", "sfs") == "sfs" and config.get("model_name", "sfs") not in MODEL_NAMES["sfs"]:
        logging.warning("%s: saved model_name %r is a label from before model names were checked; "
                        "it trained SFS, so it is read as 'sfs'", workdir, config.model_name)
        config.model_name = "sfs"
    if "model_arch" not in config:
        # Saved before reference parity: this project's first design, and its recipe (the train
        # block's defaults, which make_optimizer and the loss read for absent fields).
        config.model_arch = "v1"
    return config


def model_config_from(config: ml_collections.ConfigDict) -> ModelConfig:
    """The frozen ModelConfig of an experiment config (Flat applies its switches last)."""
    overrides = to_dict(config.model)
    model = model_config(config.model_size, config.get("model_arch", "reference"), **overrides)
    return flat_config(model) if model_name_of(config) == "flat" else model


def example_config_from(config: ml_collections.ConfigDict) -> ExampleConfig:
    """The frozen ExampleConfig of an experiment config (fields a saved config lacks take their defaults).

    ``window_scope="auto"`` (the config files' default) follows the model: song windows
    for Flat, segment windows for SFS, so ``--config.model_name=flat`` gets the GPT-like
    Flat as ``model=flat`` does. Configs saved before the field existed trained on
    segment windows, and the dataclass default says so.
    """
    fields = {k: tuple(v) if isinstance(v, list | tuple) else v for k, v in to_dict(config.examples).items()}
    if fields.get("window_scope") == "auto":
        fields["window_scope"] = "song" if model_name_of(config) == "flat" else "segment"
    return ExampleConfig(**fields)


# ModelConfig fields a resumed run may change: how it computes, not what it learns.
RESUMABLE_MODEL_FIELDS = ("compute_dtype", "attention_implementation")


def run_identity(config_json: Mapping[str, Any]) -> dict[str, Any]:
    """What a resumed (or reused) run must share with its checkpoint: the model and the examples it learns from.

    Batch size, schedule and step count may change between sessions (a longer run
    resumes a shorter one); a different model or example recipe would silently train
    one run on two definitions, so ``train_and_evaluate`` refuses it.
    """
    config = upgrade_saved_config(ml_collections.ConfigDict(dict(config_json)))
    model = dataclasses.asdict(model_config_from(config))
    for name in RESUMABLE_MODEL_FIELDS:
        model.pop(name, None)
    if config.get("task", "sfs") == "bar_vae":
        return {"task": "bar_vae", "vae": model["vae"]}
    return {"task": "sfs", "model_name": model_name_of(config), "model": model,
            "examples": dataclasses.asdict(example_config_from(config))}


def check_window_scope(model: ModelConfig, examples: ExampleConfig) -> None:
    """Refuses a model with contexts on song-scope windows, which have none.

    A song-scope window crosses segment boundaries, so it has no target segment to
    select contexts for: cross-attention would attend to nothing and train nothing.
    """
    if examples.window_scope == "song" and model.use_cross_attention and model.context_slots:
        raise ValueError("examples.window_scope='song' (the GPT-like Flat baseline) builds no contexts, but the "
                         f"model cross-attends to {model.context_slots}: use model=flat, or "
                         "--config.examples.window_scope=segment")


def loss_reduction(config: ml_collections.ConfigDict) -> str:
    """How the heads' token losses make the loss (``steps.LOSS_REDUCTIONS``; v1's if a config predates it)."""
    return config.train.get("loss_reduction", "mean_per_head")


def _eval_iterator(source: Any, make: Any, batch_size: int, n_batches: int):
    """A fixed, seeded validation stream of ``n_batches`` batches (several passes if small)."""
    epochs = max(1, math.ceil(n_batches * batch_size / max(len(source), 1)))
    return itertools.islice(make(source, epochs), n_batches)


def sfs_task(config: ml_collections.ConfigDict, dataset_dir: str | Path,
             bar_embeddings: Mapping[str, np.ndarray] | None) -> Task:
    """SFS or Flat on a built dataset; G needs the bar embeddings of every song."""
    model_cfg = model_config_from(config)
    if model_cfg.use_global_view and bar_embeddings is None:
        raise ValueError("the global view G needs bar embeddings: train the bar VAE and write them "
                         "(experiments/train.py does both), or set --config.model.use_global_view=False")
    embeddings = bar_embeddings if model_cfg.use_global_view else None
    examples = example_config_from(config)
    check_window_scope(model_cfg, examples)
    splits = open_splits(dataset_dir)
    batch = config.train.batch_size

    def make(source, epochs, seed=EVAL_SEED, shuffle=False):
        return loader.make_loader(source, batch_size=batch, seed=seed, example_config=examples,
                                  num_epochs=epochs, shuffle=shuffle, bar_embeddings=embeddings,
                                  process_index=jax.process_index(), process_count=jax.process_count())

    return Task(
        name=model_name_of(config),
        make_model=lambda rngs: SFSModel(model_cfg, rngs=rngs),
        loss_fn=functools.partial(steps.sfs_loss, reduction=loss_reduction(config)),
        normalizer_fn=functools.partial(steps.sfs_normalizers, layout=model_cfg.token_layout),
        make_train_iterator=lambda seed: make(splits["train"], None, seed=seed, shuffle=True),
        make_eval_iterator=lambda: _eval_iterator(eval_source(splits), make, batch, config.train.eval_batches),
        config_json=config.to_dict(),
        resume_identity=run_identity)


def vae_task(config: ml_collections.ConfigDict, dataset_dir: str | Path) -> Task:
    """The bar VAE on single bars, with the cyclic KL weight of SFS.md section 3."""
    model_cfg = model_config_from(config)
    vae_cfg = model_cfg.vae
    splits = open_splits(dataset_dir)
    batch, max_tokens = config.train.batch_size, vae_cfg.max_bar_tokens
    cycle = config.vae_beta_cycle_steps

    def loss_fn(model, batch_arrays, key, step, normalizers=None):
        # Cyclic KL weight while training; the full weight in evaluation (step -1).
        cyclic = bar_vae.cyclic_beta(jnp.maximum(step, 0), max_beta=config.vae_max_beta, cycle_steps=cycle,
                                     start_step=config.get("vae_beta_start_step", 0))
        beta = jnp.where(step < 0, config.vae_max_beta, cyclic)
        return bar_vae.vae_loss(model, batch_arrays, key, beta, normalizers)

    def make(source, epochs, seed=EVAL_SEED):
        return bars_lib.make_bar_loader(source, batch_size=batch, seed=seed, max_bar_tokens=max_tokens,
                                        num_epochs=epochs, process_index=jax.process_index(),
                                        process_count=jax.process_count())

    return Task(
        name="bar_vae",
        make_model=lambda rngs: bar_vae.make_bar_vae(model_cfg, rngs),
        loss_fn=loss_fn,
        normalizer_fn=functools.partial(bar_vae.vae_normalizers, layout=model_cfg.token_layout),
        make_train_iterator=lambda seed: make(splits["train"], None, seed=seed),
        make_eval_iterator=lambda: _eval_iterator(eval_source(splits), make, batch, config.train.eval_batches),
        tokens_key="type",
        config_json=config.to_dict(),
        resume_identity=run_identity)

