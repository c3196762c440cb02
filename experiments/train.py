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
from absl import flags
from ml_collections import config_flags

from experiments import cli, pipeline

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/sfs.py", "Training config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard and metrics go here.", required=True)
_WORKERS = flags.DEFINE_integer("workers", 2, "Processes for a dataset build, if one is needed.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() (multi-host runs).")


def main(argv: list[str]) -> None:
    del argv
    cli.prepare()
    if _MULTIHOST.value:
        jax.distributed.initialize()
    pipeline.run(_CONFIG.value, _WORKDIR.value, _WORKERS.value)


if __name__ == "__main__":
    cli.run(main)
