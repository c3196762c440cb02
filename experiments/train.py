r"""Train SFS, Flat or the bar VAE from an ml_collections config file.

    python -m experiments.train --config=experiments/configs/sfs.py:paper --workdir=runs/sfs_paper \
        --config.vae_workdir=runs/vae_paper --config.data.builder=pop909 \
        --config.data.manual_dir=../shared/data/pop909

Builds the dataset when it is not built yet, writes the bar embeddings of the
given VAE when G is on, then hands over to ``sfs_jax.training.train``. Any config
field can be overridden with ``--config.a.b=value``. Resumes from ``--workdir``.
"""

from __future__ import annotations

import jax
from absl import app, flags
from ml_collections import config_flags

from experiments import pipeline
from sfs_jax.training import tasks
from sfs_jax.training.train import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/sfs.py", "Training config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard and metrics go here.", required=True)
_WORKERS = flags.DEFINE_integer("workers", 2, "Processes for a dataset build, if one is needed.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() (multi-host runs).")


def run(config, workdir: str, workers: int = 2) -> dict:
    """Dataset -> (embeddings) -> task -> training; returns the final summaries."""
    dataset_dir = pipeline.ensure_dataset(config.data, workers)
    if config.task == "bar_vae":
        task = tasks.vae_task(config, dataset_dir)
    else:
        embeddings = None
        if tasks.model_config_from(config).use_global_view:
            embeddings, fingerprint = pipeline.ensure_bar_embeddings(config.vae_workdir, dataset_dir)
            config.vae_fingerprint = fingerprint
        config.data.dataset_dir = str(dataset_dir)
        task = tasks.sfs_task(config, dataset_dir, embeddings)
    return train_and_evaluate(task, config, workdir)


def main(argv: list[str]) -> None:
    del argv
    if _MULTIHOST.value:
        jax.distributed.initialize()
    run(_CONFIG.value, _WORKDIR.value, _WORKERS.value)


if __name__ == "__main__":
    app.run(main)
