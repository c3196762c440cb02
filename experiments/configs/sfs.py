r"""SFS and Flat training configs.

    python -m experiments.train --config=experiments/configs/sfs.py:paper --workdir=runs/sfs_paper
    python -m experiments.train --config=experiments/configs/sfs.py:size=small --workdir=runs/sfs_small
    python -m experiments.train --config=experiments/configs/sfs.py:size=small,model=flat --workdir=...
    python -m experiments.train --config=experiments/configs/sfs.py:size=small,arch=v1,recipe=v1 ...
    ... --config.train.num_steps=2000 --config.model.context_slots="('left','seed')"

Sizes (model/config.py PRESETS): ``paper`` (the authors' model: 512 wide, 4 encoder, 8
decoder, 3 G layers, VAE 5+5, latent 256; SFS.md section 3), ``small`` (a CPU run that
learns in minutes), ``tiny`` (tests). ``model=flat`` is the paper's GPT-like Flat
baseline (song-scope windows, composed left to right).

``arch``: ``reference`` (the authors' architecture, the default) or ``v1`` (this
project's first design, which every result before reference parity used).
``recipe``: ``reference`` (the authors' training: Adam(0.9, 0.999, 1e-8), lr 1e-4
decayed by 0.999998502 per step, no warmup, no clipping, batch 6, each head's loss
summed over an example's tokens and averaged over the batch) or ``v1`` (this
project's: Adam(0.9, 0.98) with warmup and cosine decay, clipping at 1, per-head
mean loss, the size's batch and learning rate).
"""

from __future__ import annotations

import dataclasses

import ml_collections

from experiments.configs import common
from sfs_jax.data.examples import ExampleConfig
from sfs_jax.model.config import ARCHITECTURES, model_config

TRAIN_BY_SIZE = {
    "paper": dict(batch_size=32, num_steps=100_000, learning_rate=3e-4, warmup_steps=2000,
                  log_every=100, eval_every=2000, eval_batches=16, checkpoint_every=2000),
    "small": dict(batch_size=8, num_steps=400, learning_rate=1e-3, warmup_steps=40,
                  log_every=20, eval_every=100, eval_batches=4, checkpoint_every=100),
    "tiny": dict(batch_size=4, num_steps=20, learning_rate=3e-3, warmup_steps=2,
                 log_every=5, eval_every=10, eval_batches=1, checkpoint_every=10),
}
EXAMPLES_BY_SIZE = {
    "paper": dict(),
    # 4-bar windows and contexts keep a CPU step well under a second (paper: 8 bars).
    "small": dict(window_bars=4, context_bars=4, target_buckets=(256, 384, 512),
                  context_buckets=(128, 256, 512), previous_token_budget=512),
    "tiny": dict(window_bars=2, context_bars=2, target_buckets=(96, 128, 192, 256),
                 context_buckets=(32, 64, 128, 256), previous_token_budget=256),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = common.parse_arg(arg, size="small", model="sfs", compute_dtype="", data="synthetic",
                            arch="reference", recipe="reference")
    if args.size not in TRAIN_BY_SIZE:
        raise ValueError(f"size must be one of {sorted(TRAIN_BY_SIZE)}, got {args.size!r}")
    if args.model not in ("sfs", "flat"):
        raise ValueError(f"model must be sfs or flat, got {args.model!r}")
    if args.arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {ARCHITECTURES}, got {args.arch!r}")
    config = ml_collections.ConfigDict()
    config.task = "sfs"
    config.model_name = args.model
    config.model_size = args.size
    config.model_arch = args.arch
    # Every ModelConfig field of the preset (sfs_jax/model/config.py), so any can be overridden
    # from the command line; the bar VAE's sizes come with the preset.
    preset = dataclasses.asdict(model_config(args.size, args.arch))
    preset.pop("vae")
    preset.update(compute_dtype=args.compute_dtype or ("bfloat16" if args.size == "paper" else "float32"))
    config.model = ml_collections.ConfigDict(preset)
    # Every sfs_jax.data.examples.ExampleConfig field, with the size's values, so any can be overridden.
    config.examples = ml_collections.ConfigDict(
        dataclasses.asdict(ExampleConfig(context_mode="sfs", **EXAMPLES_BY_SIZE[args.size])))
    # "auto": song windows for Flat, segment windows for SFS (tasks.example_config_from). Flat is
    # GPT-like (SFS.md section 5): its windows run anywhere in the song, across segment boundaries,
    # and it composes left to right; --config.examples.window_scope=segment gives the decoder
    # trained on SFS's windows instead (it starts every segment from an empty window).
    config.examples.window_scope = "auto"
    config.data = common.data_block(builder=args.data,
                                    num_songs=64 if args.size == "tiny" else 512)
    # Where the bar VAE lives (experiments/train.py trains it first when empty and G is on).
    config.vae_workdir = ""
    config.vae_fingerprint = ""  # set by experiments/train.py: ties the run to one VAE
    config.train = common.train_block(**{**TRAIN_BY_SIZE[args.size], **common.recipe(args.recipe)})
    config.mesh = common.mesh_block()
    return config


def sweep(add) -> None:
    """Default sweep: SFS against Flat (context ablations: experiments/configs/ablate.py)."""
    add(model_name="sfs")
    add(**{"model_name": "flat", "examples.window_scope": "song"})
