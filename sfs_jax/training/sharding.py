"""The device mesh, and where every array of a training run lives on it.

Place in the data flow: [4]->[5], between the loader and the jitted step. The mesh has
two axes, MaxText's pair: ``data`` (replicas that each see other rows) and ``fsdp``
(devices that also see other rows but split the parameters and Adam moments between
them, gathering each weight when a layer uses it). A batch splits over both axes; with
``fsdp`` = 1 (the default) every device holds the whole state, plain data parallelism.

Which parameter dimension is split follows logical axis rules, as in MaxText: each
dimension of a variable gets a logical name from what the variable is (a Linear
``kernel`` is (``fan_in``, ``fan_out``), an ``embedding`` table is (``vocab``,
``embed``); vectors and scalars (biases, norm gains, fixed tables, step counters) have
none), and ``rules`` map logical names to mesh axes. A dimension the mesh axis does
not divide stays whole (replicated), so any model runs under any fsdp size; the
start-up line says what share of the parameter bytes was split. Adam's moments have
their parameter's path, so they split the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from sfs_jax.data.process_rows import pad_to_shapes

MESH_AXES = ("data", "fsdp")
# A batch's rows split over every device.
BATCH_SPEC = P(MESH_AXES)
# Logical axis name -> mesh axis (None: kept whole). The config's ``mesh.rules`` replaces these.
DEFAULT_RULES: tuple[tuple[str, str | None], ...] = (
    ("fan_in", "fsdp"), ("fan_out", None), ("vocab", None), ("embed", "fsdp"))
# Variable name (the last key of its path) -> logical names of its dimensions.
LOGICAL_AXES: dict[str, tuple[str, ...]] = {"kernel": ("fan_in", "fan_out"), "embedding": ("vocab", "embed")}


def make_mesh(fsdp: int = 1) -> jax.sharding.Mesh:
    """A (data, fsdp) mesh over every device of every process: data = devices / fsdp.

    Auto axis types: XLA's partitioner propagates the batch and parameter shardings
    through the model, so model code needs no sharding annotations.
    """
    devices = jax.device_count()
    if fsdp < 1 or devices % fsdp:
        raise ValueError(f"mesh.fsdp must be a divisor of the {devices} devices, got {fsdp}")
    auto = jax.sharding.AxisType.Auto
    return jax.make_mesh((devices // fsdp, fsdp), MESH_AXES, axis_types=(auto, auto))


def variable_name(path: Sequence[Any]) -> str:
    """The variable's own name in an ``nnx.State`` path (``...['out']['kernel'].value`` -> ``kernel``)."""
    for key in reversed(path):
        name = getattr(key, "key", None)
        if isinstance(name, str):
            return name
    return ""


def partition_spec(path: Sequence[Any], shape: Sequence[int], axis_sizes: Mapping[str, int],
                   rules: Sequence[tuple[str, str | None]] = DEFAULT_RULES) -> P:
    """Where one variable's dimensions go: its logical names (``LOGICAL_AXES``) through ``rules``.

    A dimension whose mesh axis does not divide it, or whose mesh axis an earlier
    dimension already took, is kept whole.
    """
    logical = LOGICAL_AXES.get(variable_name(path))
    if logical is None or len(logical) != len(shape):
        return P()
    to_mesh = dict(rules)
    spec, used = [], set()
    for name, size in zip(logical, shape, strict=True):
        axis = to_mesh.get(name)
        if axis is not None and axis not in used and axis_sizes.get(axis, 1) > 1 and size % axis_sizes[axis] == 0:
            spec.append(axis)
            used.add(axis)
        else:
            spec.append(None)
    return P(*spec)


def state_shardings(state: Any, mesh: jax.sharding.Mesh,
                    rules: Sequence[tuple[str, str | None]] = DEFAULT_RULES) -> Any:
    """A ``NamedSharding`` for every array of ``state`` (a pytree of arrays or ``ShapeDtypeStruct``s)."""
    for name, axis in rules:
        if axis is not None and axis not in MESH_AXES:
            raise ValueError(f"rule ({name!r}, {axis!r}): mesh axes are {', '.join(MESH_AXES)} (or None)")
    sizes = dict(mesh.shape)
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: NamedSharding(mesh, partition_spec(path, np.shape(leaf), sizes, rules)), state)


def sharded_fraction(arrays: Any) -> float:
    """The share of the bytes of ``arrays`` (placed ``jax.Array``s) that is split over some mesh axis."""
    sizes = [(leaf.size * leaf.dtype.itemsize, any(leaf.sharding.spec)) for leaf in jax.tree.leaves(arrays)]
    total = sum(size for size, _ in sizes)
    return sum(size for size, split in sizes if split) / total if total else 0.0


def init_sharded(make: Callable[[], Any], mesh: jax.sharding.Mesh,
                 rules: Sequence[tuple[str, str | None]] = DEFAULT_RULES) -> tuple[nnx.GraphDef, Any]:
    """(graphdef, state) of the modules ``make()`` builds, the state made under ``jit`` straight into its shardings.

    The constructor is traced once abstractly (graphdef and shapes, from which the
    shardings follow), then run under ``jit``: each device computes only its own slices,
    so a model whose state exceeds one device's memory is never whole anywhere.
    """
    graphdef, abstract = nnx.split(nnx.eval_shape(make))
    shardings = state_shardings(abstract, mesh, rules)
    return graphdef, jax.jit(lambda: nnx.state(make()), out_shardings=shardings)()


def shard_batch(batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    """Process-local batch -> global arrays whose rows split over every device (single- and multi-host).

    With several processes the local batches (each padded to its own buckets) are first
    padded to the largest shape among them, so they form one global array.
    """
    if jax.process_count() > 1:
        batch = pad_to_shapes(batch, largest_shapes(batch))
    sharding = NamedSharding(mesh, BATCH_SPEC)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def largest_shapes(batch: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Per key, the elementwise largest shape of the processes' local batches (one allgather of the shapes)."""
    keys = sorted(batch)
    ranks = [np.ndim(batch[key]) for key in keys]
    local = np.asarray([d for key in keys for d in np.shape(batch[key])], np.int64)
    largest = np.max(multihost_utils.process_allgather(local), axis=0)
    offsets = np.cumsum([0, *ranks])
    return {key: tuple(int(d) for d in largest[offsets[i]:offsets[i + 1]]) for i, key in enumerate(keys)}
