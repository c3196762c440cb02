"""What experiments need before training: a built dataset and the bar embeddings for G.

The runtime (``sfs_jax``) never imports the offline pipeline; this module is the
one place where experiments reach for ``data_pipeline`` to build a dataset on
demand, so every command works on a fresh machine from the embedded synthetic
default.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from data_pipeline import build as build_lib
from sfs_jax.data import bars as bars_lib
from sfs_jax.model import bar_vae
from sfs_jax.training import tasks
from sfs_jax.training.restore import load_trained
from sfs_jax.training.train import train_and_evaluate

EMBEDDING_BATCH = 64
T = TypeVar("T")


def ensure_dataset(data: ml_collections.ConfigDict, workers: int = 1) -> Path:
    """The dataset folder: ``data.dataset_dir`` if set, else built (or reused) from the builder config."""
    if data.dataset_dir:
        return Path(data.dataset_dir).expanduser()
    folder, _ = build_lib.build(data.builder, data.data_dir, manual_dir=data.manual_dir or None,
                                workers=workers, seed=data.build_seed, num_songs=data.num_songs)
    return folder


def embeddings_path(vae_workdir: str | Path, dataset_dir: Path) -> Path:
    key = hashlib.sha256(str(dataset_dir.resolve()).encode()).hexdigest()[:12]
    return Path(vae_workdir) / "bar_embeddings" / f"{dataset_dir.parent.parent.name}-{key}.npz"


def ensure_bar_embeddings(vae_workdir: str | Path, dataset_dir: Path) -> tuple[dict[str, np.ndarray], str]:
    """(song id -> [n_bars, latent] embeddings, VAE fingerprint), computed once per VAE and dataset."""
    if not vae_workdir or not Path(vae_workdir).exists():
        raise FileNotFoundError(
            f"the global view needs a trained bar VAE, but vae_workdir={vae_workdir!r} has none: train one "
            "with python -m experiments.train --config=experiments/configs/bar_vae.py --workdir=DIR and pass "
            "--config.vae_workdir=DIR (or --config.model.use_global_view=False)")
    # Every process restores the VAE: orbax's restore is collective (it synchronizes all processes).
    model, _, _ = load_trained(vae_workdir)
    fingerprint = bar_vae.vae_fingerprint(model)
    path = embeddings_path(vae_workdir, dataset_dir)

    def read_or_compute() -> dict[str, np.ndarray]:
        if path.exists():
            try:
                return bars_lib.load_bar_embeddings(path, fingerprint)
            except ValueError as err:
                logging.warning("recomputing bar embeddings: %s", err)
        embeddings = bars_lib.compute_bar_embeddings(bar_vae.make_embed_fn(model), tasks.load_songs(dataset_dir),
                                                     model.config.max_bar_tokens, EMBEDDING_BATCH)
        bars_lib.save_bar_embeddings(path, embeddings, fingerprint)
        logging.info("wrote bar embeddings of %d songs to %s", len(embeddings), path)
        return embeddings

    # Process 0 writes the file; the others read it after the barrier.
    return first_process_then_all(read_or_compute, "bar embeddings"), fingerprint


def first_process_then_all(make: Callable[[], T], what: str) -> T:
    """``make()`` on process 0 first, then on the others (which then reuse what it wrote).

    The dataset build and the bar embeddings write files: with several processes only
    one may write them, and the others read them once they exist. ``make`` must not run
    collectives (an orbax restore does): process 0 would wait in them alone.
    """
    if jax.process_count() == 1:
        return make()
    result = make() if jax.process_index() == 0 else None
    multihost_utils.sync_global_devices(what)
    return result if jax.process_index() == 0 else make()


def run(config, workdir: str, workers: int = 2) -> dict:
    """Dataset -> (embeddings) -> task -> training; returns the final summaries."""
    # A wrong task, model name, model or example field fails here, before a dataset build or a VAE run.
    model_cfg = tasks.model_config_from(config)
    if config.task != "bar_vae":
        tasks.check_window_scope(model_cfg, tasks.example_config_from(config))
    dataset_dir = first_process_then_all(lambda: ensure_dataset(config.data, workers), "dataset")
    if config.task == "bar_vae":
        task = tasks.vae_task(config, dataset_dir)
    else:
        embeddings = None
        if model_cfg.use_global_view:
            embeddings, fingerprint = ensure_bar_embeddings(config.vae_workdir, dataset_dir)
            config.vae_fingerprint = fingerprint
        config.data.dataset_dir = str(dataset_dir)
        task = tasks.sfs_task(config, dataset_dir, embeddings)
    return train_and_evaluate(task, config, workdir)
