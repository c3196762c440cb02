r"""Train SFS, Flat or the bar VAE from an ml_collections config file.

    python -m experiments.train --config=experiments/configs/sfs.py:paper --workdir=runs/sfs_paper \
        --config.vae_workdir=runs/vae_paper --config.data.builder=pop909 \
        --config.data.manual_dir=../shared/data/pop909

Builds the dataset when it is not built yet, writes the bar embeddings of the
given VAE when G is on, then hands over to ``sfs_jax.training.train``. Any config
field can be overridden with ``--config.a.b=value``. Resumes from ``--workdir``.

Several processes (one per host, each with its devices) train one model together:

    python -m experiments.train ... --multihost                       # a cluster JAX detects (SLURM, ...)
    python -m experiments.train ... --coordinator_address=HOST0:1234 --num_processes=2 --process_id=0
    python -m experiments.train ... --coordinator_address=HOST0:1234 --num_processes=2 --process_id=1
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from experiments import cli, pipeline
from sfs_jax.training import distributed

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/sfs.py", "Training config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard and metrics go here.", required=True)
_WORKERS = flags.DEFINE_integer("workers", 2, "Processes for a dataset build, if one is needed.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Join a multi-process run whose cluster JAX detects "
                                "(SLURM, Open MPI, Kubernetes, Cloud TPU).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", "", "host:port of process 0, for a multi-process run "
                                   "started by hand (with --num_processes and --process_id).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "Processes of a multi-process run started by hand.")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "This process's index, 0..num_processes-1.")


def main(argv: list[str]) -> None:
    del argv
    cli.prepare()
    if _MULTIHOST.value or _COORDINATOR.value or _NUM_PROCESSES.value > 0 or _PROCESS_ID.value >= 0:
        distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    pipeline.run(_CONFIG.value, _WORKDIR.value, _WORKERS.value)


if __name__ == "__main__":
    cli.run(main)
