"""``--config=path.py:key=value,flag`` argument parsing and the shared training block.

big_vision style: a config file's ``get_config(arg)`` receives the text after the
colon; ``parse_arg`` turns it into typed values with defaults, so presets are
chosen on the command line (``sfs.py:size=tiny,model=flat``) and any single field
can still be overridden with ``--config.train.num_steps=10``.
"""

from __future__ import annotations

from typing import Any

import ml_collections


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


def train_block(**overrides: Any) -> ml_collections.ConfigDict:
    """Optimizer, schedule, loop and checkpoint settings shared by every training config."""
    train = ml_collections.ConfigDict(dict(
        seed=0, batch_size=8, grad_accum_steps=1, num_steps=1000,
        learning_rate=1e-4, warmup_steps=100, schedule="cosine", final_lr_fraction=0.05,
        weight_decay=0.0, clip_norm=1.0,
        log_every=50, eval_every=500, eval_batches=8, checkpoint_every=500, keep_checkpoints=3,
        # Wall-clock budget of the training loop (0: none): stops early with a validation and a checkpoint.
        max_train_seconds=0.0))
    train.update(overrides)
    return train


def data_block(**overrides: Any) -> ml_collections.ConfigDict:
    """Which ``sfs_songs`` build to read (built on demand by experiments/train.py)."""
    data = ml_collections.ConfigDict(dict(
        builder="synthetic", data_dir="~/tensorflow_datasets", manual_dir="", dataset_dir="",
        num_songs=512, build_seed=0))
    data.update(overrides)
    return data
