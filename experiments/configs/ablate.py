"""Context-selection ablations as config overrides (big_vision ``sweep(add)`` style).

Every variant trains the same base config (``experiments/configs/sfs.py``) for the
same budget on the same examples; only what the target may see changes, through
``model.context_slots`` (the attention mask), ``model.use_global_view``, or, for
``all_previous``, the example builder's ``context_mode``. ``flat`` is the paper's
GPT-like baseline (windows anywhere in the song); ``flat_segment`` is the same
decoder on SFS's own windows, the reference whose validation examples are the same
as every SFS variant's. The ``init`` sweep compares initialisations of the structure paths;
``departures`` trains the authors' model (the base config) beside each of this project's
departures from it, one at a time, and this project's first design (v1) whole.

    python -m experiments.ablate --sweep=context --config=experiments/configs/sfs.py:size=small \
        --workdir=runs/ablate
    python -m experiments.ablate --sweep=departures --config=experiments/configs/sfs.py:size=small \
        --workdir=runs/departures
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections.abc import Callable
from typing import Any

import ml_collections

from experiments.configs import common
from sfs_jax.model.config import STRUCTURE_PATHS, model_config

SFS_SLOTS = ("left", "right", "seed", "ref")
AddFn = Callable[..., None]


def _slots_name(slots: tuple[str, ...]) -> str:
    return "+".join(slots) if slots else "none"


def flat_baselines(add: AddFn) -> None:
    """Flat on song windows (the paper's GPT-like baseline) and on SFS's segment windows."""
    add("flat", **{"model_name": "flat", "examples.window_scope": "song"})
    add("flat_segment", **{"model_name": "flat", "examples.window_scope": "segment"})


def context(add: AddFn) -> None:
    """The compact sweep: full SFS, each context left out, none, no G, segment-relative cross-attention
    positions (with the first or the window-aligned bars of the Ref), all_previous, both Flats."""
    add("sfs", **{"model.context_slots": SFS_SLOTS})
    for dropped in SFS_SLOTS:
        kept = tuple(s for s in SFS_SLOTS if s != dropped)
        add(f"no_{dropped}", **{"model.context_slots": kept})
    add("no_contexts", **{"model.context_slots": ()})
    add("sfs_no_G", **{"model.context_slots": SFS_SLOTS, "model.use_global_view": False})
    add("sfs_segment_positions", **{"model.context_slots": SFS_SLOTS, "model.cross_attention_positions": "segment"})
    add("sfs_segment_aligned_ref", **{"model.context_slots": SFS_SLOTS, "model.cross_attention_positions": "segment",
                                      "examples.ref_crop": "aligned"})
    add("all_previous", **{"model.context_slots": ("previous",), "examples.context_mode": "all_previous"})
    flat_baselines(add)


def context_full(add: AddFn) -> None:
    """Every subset of {Left, Right, Seed, Ref}, with G on and off (32 runs), plus all_previous and both Flats."""
    for size in range(len(SFS_SLOTS) + 1):
        for slots in itertools.combinations(SFS_SLOTS, size):
            for use_g in (True, False):
                add(f"{_slots_name(slots)}{'' if use_g else '_noG'}",
                    **{"model.context_slots": slots, "model.use_global_view": use_g})
    add("all_previous", **{"model.context_slots": ("previous",), "examples.context_mode": "all_previous"})
    flat_baselines(add)


def init(add: AddFn) -> None:
    """Which structure paths start at zero (``model.zero_init_paths``), with song and segment cross-attention
    positions: both paths (the default), G's condition only, cross-attention only, neither (random init);
    Flat is the reference every SFS variant should beat."""
    for name, paths in (("zero_both", STRUCTURE_PATHS), ("zero_G", ("global_view",)),
                        ("zero_cross", ("cross_attention",)), ("random", ())):
        for positions in ("song", "segment"):
            add(f"{name}_{positions}", **{"model.zero_init_paths": paths,
                                         "model.cross_attention_positions": positions})
    flat_baselines(add)


def departures(add: AddFn, base: ml_collections.ConfigDict) -> None:
    """The authors' model (``base``, the reference defaults) and each departure of this project alone.

    Full rotary (every head dim rotated); this project's input scale (learned position
    code, flax init) with the structure paths at zero; segment-relative cross-attention
    positions; the window-aligned Ref crop; the per-head mean loss; v1's recipe; all of
    v1's architecture fields (``model_config(size, "v1")``) with its recipe; both Flats.
    """
    add("reference")
    add("full_rotary", **{"model.rotary_dims": base.model.head_dim})
    add("v1_input_scale_zero_init", **{"model.position_code": "learned", "model.init": "flax",
                                       "model.zero_init_paths": STRUCTURE_PATHS})
    add("segment_positions", **{"model.cross_attention_positions": "segment"})
    add("aligned_ref", **{"examples.ref_crop": "aligned"})
    add("mean_per_head_loss", **{"train.loss_reduction": "mean_per_head"})
    add("v1_recipe", **{f"train.{k}": v for k, v in {**common.RECIPES["v1"], "recipe": "v1"}.items()})
    v1_model = dataclasses.asdict(model_config(base.model_size, "v1"))
    v1_model.pop("vae")
    keep = ("compute_dtype", "attention_implementation")
    add("v1", model_arch="v1", **{f"model.{k}": v for k, v in v1_model.items() if k not in keep},
        **{f"train.{k}": v for k, v in {**common.RECIPES["v1"], "recipe": "v1"}.items()})
    flat_baselines(add)


SWEEPS: dict[str, Callable[..., None]] = {"context": context, "context_full": context_full, "init": init,
                                          "departures": departures}
# Sweeps whose variants depend on the base config (e.g. its head width) get it as a second argument.
_NEEDS_BASE = ("departures",)


def variants(base: ml_collections.ConfigDict, sweep: str) -> list[tuple[str, ml_collections.ConfigDict]]:
    """(name, config) of each variant of ``SWEEPS[sweep]``: the base with the dotted overrides applied."""
    out = []

    def add(name: str, **overrides: Any) -> None:
        config = copy.deepcopy(base)
        for dotted, value in overrides.items():
            node = config
            *parents, leaf = dotted.split(".")
            for parent in parents:
                node = node[parent]
            if leaf not in node:  # a typo would otherwise train the base config under a new name
                raise KeyError(f"sweep {sweep!r}, variant {name!r}: {dotted} is not a config field")
            node[leaf] = value
        out.append((name, config))

    if sweep not in SWEEPS:
        raise KeyError(f"unknown sweep {sweep!r}; choose from {sorted(SWEEPS)}")
    SWEEPS[sweep](add, base) if sweep in _NEEDS_BASE else SWEEPS[sweep](add)
    return out
