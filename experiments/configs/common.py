"""``--config=path.py:key=value,flag`` argument parsing and the shared training block.

big_vision style: a config file's ``get_config(arg)`` receives the text after the
colon; ``parse_arg`` turns it into typed values with defaults, so presets are
chosen on the command line (``sfs.py:size=tiny,model=flat``) and any single field
can still be overridden with ``--config.train.num_steps=10``.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from sfs_jax.training import sharding


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """``"size=tiny,runlocal"`` -> ConfigDict(size="tiny", runlocal=True) over the defaults.

    Values take the type of their default; a bare word sets a boolean default to True
    (or, when it is not a known key, chooses the ``size`` preset: ``sfs.py:paper``).
    """
    result = ml_collections.ConfigDict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            if isinstance(defaults.get(key), bool):
                result[key] = True
                continue
            if "size" in defaults:
                result["size"] = key
                continue
            raise ValueError(f"config argument {item!r} is not key=value and not a boolean flag")
        if key not in defaults:
            raise ValueError(f"unknown config argument {key!r}; known: {sorted(defaults)}")
        default = defaults[key]
        if isinstance(default, bool):
            result[key] = value.lower() in ("1", "true", "yes", "on")
        elif default is None:
            result[key] = value
        else:
            result[key] = type(default)(value)
    return result


# Training recipes: the authors' (SFS.md section 3) and this project's first one. A recipe sets the
# optimizer, schedule and loss reduction; ``reference`` also the batch (6) and learning rate (1e-4).
RECIPES: dict[str, dict[str, Any]] = {
    "reference": dict(batch_size=6, learning_rate=1e-4, warmup_steps=0, schedule="exponential",
                      decay_rate=0.999998502, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, clip_norm=0.0,
                      loss_reduction="sum_per_example"),
    "v1": dict(schedule="cosine", b1=0.9, b2=0.98, eps=1e-8, weight_decay=0.0, clip_norm=1.0,
               loss_reduction="mean_per_head"),
}


def recipe(name: str) -> dict[str, Any]:
    """The ``train`` fields of a named recipe (``RECIPES``); the result records the name."""
    if name not in RECIPES:
        raise ValueError(f"recipe must be one of {sorted(RECIPES)}, got {name!r}")
    return {**RECIPES[name], "recipe": name}


def train_block(**overrides: Any) -> ml_collections.ConfigDict:
    """Optimizer, schedule, loop and checkpoint settings shared by every training config.

    The defaults are this project's v1 recipe; configs pass ``recipe(name)`` over them.
    """
    train = ml_collections.ConfigDict(dict(
        seed=0, batch_size=8, grad_accum_steps=1, num_steps=1000, recipe="v1",
        learning_rate=1e-4, warmup_steps=100, schedule="cosine", final_lr_fraction=0.05, decay_rate=1.0,
        b1=0.9, b2=0.98, eps=1e-8, weight_decay=0.0, clip_norm=1.0, loss_reduction="mean_per_head",
        log_every=50, eval_every=500, eval_batches=8, checkpoint_every=500, keep_checkpoints=3,
        # Wall-clock budget of the training loop (0: none): stops early with a validation and a checkpoint.
        max_train_seconds=0.0))
    train.update(overrides)
    return train


def mesh_block(**overrides: Any) -> ml_collections.ConfigDict:
    """The device mesh (``sfs_jax/training/sharding.py``): ``fsdp`` devices split each weight, the rest replicate.

    ``fsdp`` = 1 is plain data parallelism. ``rules`` map logical axis names to mesh axes
    (MaxText style): a Linear kernel's dims are ``fan_in``/``fan_out``, an embedding
    table's ``vocab``/``embed``.
    """
    mesh = ml_collections.ConfigDict(dict(fsdp=1, rules=sharding.DEFAULT_RULES))
    mesh.update(overrides)
    return mesh


def data_block(**overrides: Any) -> ml_collections.ConfigDict:
    """Which ``sfs_songs`` build to read (built on demand by experiments/train.py)."""
    data = ml_collections.ConfigDict(dict(
        builder="synthetic", data_dir="~/tensorflow_datasets", manual_dir="", dataset_dir="",
        num_songs=512, build_seed=0))
    data.update(overrides)
    return data
