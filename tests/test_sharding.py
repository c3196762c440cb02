"""Where a training run's arrays live: logical axis rules -> partition specs, and the mesh's refusals.

The end-to-end check (fsdp-sharded training equals replicated training, in one process and
across two) is in test_multiprocess.py; these pin the rules themselves.
"""

from __future__ import annotations

import jax
import ml_collections
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from sfs_jax.model.config import model_config
from sfs_jax.model.sfs import SFSModel
from sfs_jax.training import sharding
from sfs_jax.training import train as train_lib

FSDP2 = {"data": 1, "fsdp": 2}


def _path(*names: str) -> tuple:
    return (*(jax.tree_util.DictKey(name) for name in names), jax.tree_util.GetAttrKey("value"))


def test_kernels_split_their_fan_in_and_embeddings_their_width() -> None:
    spec = lambda path, shape, rules=sharding.DEFAULT_RULES: sharding.partition_spec(path, shape, FSDP2, rules)
    assert spec(_path("decoder", "mlp", "up", "kernel"), (96, 384)) == P("fsdp", None)
    assert spec(_path("opt_state", "mu", "up", "kernel"), (96, 384)) == P("fsdp", None)  # Adam's moments too
    assert spec(_path("embed", "embedding"), (7, 96)) == P(None, "fsdp")
    assert spec(_path("up", "bias"), (384,)) == P()  # vectors stay whole
    assert spec(_path("position", "beat"), (6400, 32)) == P()  # fixed tables too
    assert spec(_path("head", "kernel"), (5, 96)) == P(None, None)  # 2 does not divide 5: kept whole
    out_first = (("fan_in", "fsdp"), ("fan_out", "fsdp"))
    assert spec(_path("k", "kernel"), (96, 384), out_first) == P("fsdp", None)  # one mesh axis, one dim
    assert spec(_path("k", "kernel"), (5, 384), out_first) == P(None, "fsdp")
    assert sharding.partition_spec(_path("k", "kernel"), (96, 384), {"data": 2, "fsdp": 1}) == P(None, None)


def test_paper_size_splits_nearly_all_parameter_bytes() -> None:
    """At paper size every matrix divides by 8: 99.9% of the parameter bytes are split (biases and gains stay)."""
    model = nnx.eval_shape(lambda: SFSModel(model_config("paper"), rngs=nnx.Rngs(params=0)))
    params = nnx.state(model, nnx.Param)
    leaves = jax.tree_util.tree_leaves_with_path(params)
    split = sum(leaf.size for path, leaf in leaves
                if any(sharding.partition_spec(path, leaf.shape, {"data": 1, "fsdp": 8})))
    assert split / sum(leaf.size for _, leaf in leaves) > 0.998


def test_sharded_init_equals_the_eager_model() -> None:
    """``init_sharded`` runs the constructor under jit: the same numbers as building it eagerly."""
    config, tx = model_config("tiny"), optax.adam(1e-3)

    def make():
        model = SFSModel(config, rngs=nnx.Rngs(params=0))
        return model, nnx.Optimizer(model, tx, wrt=nnx.Param)

    _, jitted = sharding.init_sharded(make, sharding.make_mesh())
    eager = nnx.state(make())
    assert jax.tree.structure(jitted) == jax.tree.structure(eager)
    assert all(bool((a == b).all()) for a, b in zip(jax.tree.leaves(jitted), jax.tree.leaves(eager), strict=True))
    assert sharding.sharded_fraction(jitted) == 0.0  # one device: nothing to split


def test_mesh_and_rules_refusals_and_defaults() -> None:
    with pytest.raises(ValueError, match=f"mesh.fsdp must be a divisor of the {jax.device_count()} devices, got 3"):
        sharding.make_mesh(3)
    with pytest.raises(ValueError, match="got 0"):
        sharding.make_mesh(0)
    with pytest.raises(ValueError, match=r"rule \('fan_in', 'model'\): mesh axes are data, fsdp"):
        sharding.state_shardings({}, sharding.make_mesh(), (("fan_in", "model"),))
    old = ml_collections.ConfigDict({"train": {"seed": 0}})  # a config saved before the mesh block
    assert train_lib.mesh_fsdp(old) == 1 and train_lib.mesh_rules(old) == sharding.DEFAULT_RULES
    given = ml_collections.ConfigDict({"mesh": {"fsdp": 4, "rules": (("fan_out", "fsdp"), ("embed", "None"))}})
    assert train_lib.mesh_fsdp(given) == 4
    assert train_lib.mesh_rules(given) == (("fan_out", "fsdp"), ("embed", None))
