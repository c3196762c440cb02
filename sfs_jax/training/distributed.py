"""Joining a multi-process run: one process per host (or several on one machine), collectives between them.

Place in the data flow: before anything touches a device. JAX's own multi-host runtime
(``jax.distributed``) connects the processes through a coordinator (process 0's
address); afterwards ``jax.devices()`` lists every process's devices, the training mesh
spans them, each process loads its rows of every global batch
(``sfs_jax.data.process_rows``), only process 0 writes metrics and logs, and orbax
writes each checkpoint collectively. On CPUs the collectives run over gloo.
"""

from __future__ import annotations

import jax
from absl import logging


def initialize(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1) -> None:
    """Joins this process to the run.

    With no arguments JAX detects the cluster from its environment (SLURM, Open MPI,
    Kubernetes, Cloud TPU, ...). Otherwise give all three: the coordinator's
    ``host:port`` (the same for every process), the number of processes, and this one's index.
    """
    explicit = bool(coordinator_address) or num_processes > 0 or process_id >= 0
    if explicit and not (coordinator_address and num_processes > 0 and process_id >= 0):
        raise ValueError("give --coordinator_address, --num_processes and --process_id together "
                         "(or none, to let JAX read a cluster's environment)")
    # CPU collectives need an implementation; GPUs and TPUs bring their own and ignore this.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if explicit:
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    else:
        jax.distributed.initialize()
    logging.info("process %d of %d, %d local and %d global devices", jax.process_index(), jax.process_count(),
                 jax.local_device_count(), jax.device_count())
