r"""Per-device bytes of the training state (model and Adam) replicated vs split over an fsdp axis.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \
        python -m benchmarks.fsdp_memory --size=small

Builds the real state (``train.init_state``: jitted straight into its shardings) on a
mesh of forced CPU devices twice, ``mesh.fsdp`` = 1 and = ``--fsdp`` (default: every
device), and reads the bytes each device holds from the arrays' addressable shards.
``--abstract`` gives the same figures from the shardings alone, without building the
state (for ``--size=paper``, whose replicated state is 0.7 GB per device).
"""

from __future__ import annotations

import functools
from collections import Counter
from types import SimpleNamespace

import jax
import numpy as np
from absl import flags
from flax import nnx

from experiments import cli
from experiments.configs import sfs as sfs_configs
from sfs_jax.training import sharding
from sfs_jax.training.restore import make_model
from sfs_jax.training.train import init_state, make_optimizer, mesh_rules

_SIZE = flags.DEFINE_enum("size", "small", ["tiny", "small", "paper"], "Model preset.")
_FSDP = flags.DEFINE_integer("fsdp", 0, "fsdp axis size to compare with 1 (0: every device).")
_ABSTRACT = flags.DEFINE_bool("abstract", False, "Compute from the shardings only (no arrays built).")


def _task(config) -> SimpleNamespace:
    """The part of a training ``Task`` that ``init_state`` reads: the model constructor the config describes."""
    return SimpleNamespace(make_model=functools.partial(make_model, config))


def largest_device_bytes(state) -> int:
    """The most bytes any device holds, from the real arrays' shards."""
    held: Counter = Counter()
    for leaf in jax.tree.leaves(state):
        for shard in leaf.addressable_shards:
            held[shard.device.id] += shard.data.nbytes
    return max(held.values())


def abstract_largest_device_bytes(config, mesh: jax.sharding.Mesh) -> int:
    """Per-device bytes from the shardings of the abstract state (shard shapes; nothing allocated)."""
    tx = make_optimizer(config.train)[0]

    def build():
        model = make_model(config, nnx.Rngs(params=0))
        return model, nnx.Optimizer(model, tx, wrt=nnx.Param)

    _, abstract = nnx.split(nnx.eval_shape(build))
    shardings = sharding.state_shardings(abstract, mesh, mesh_rules(config))
    return sum(int(np.prod(place.shard_shape(leaf.shape))) * leaf.dtype.itemsize
               for leaf, place in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings), strict=True))


def main(argv: list[str]) -> None:
    del argv
    cli.prepare()
    devices = jax.device_count()
    fsdp = _FSDP.value or devices
    config = sfs_configs.get_config(f"size={_SIZE.value}")
    rows = []
    for size in (1, fsdp):
        config.mesh.fsdp = size
        mesh = sharding.make_mesh(size)
        if _ABSTRACT.value:
            rows.append((size, abstract_largest_device_bytes(config, mesh)))
        else:
            _, state, _ = init_state(_task(config), config, mesh)
            rows.append((size, largest_device_bytes(state)))
            del state
    how = "from the shardings" if _ABSTRACT.value else "held by the arrays"
    print(f"sfs {_SIZE.value}, {devices} devices: model + Adam state, largest per-device bytes ({how})")
    for size, held in rows:
        print(f"  fsdp={size}: {held / 1e6:.2f} MB")
    print(f"ratio fsdp={fsdp} / replicated: {rows[1][1] / rows[0][1]:.3f} (ideal {1 / fsdp:.3f})")


if __name__ == "__main__":
    cli.run(main)
