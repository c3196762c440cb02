r"""Bar VAE training config (SFS.md section 3: 5+5 layers, latent 256, beta 0.1, cyclic schedule).

    python -m experiments.train --config=experiments/configs/bar_vae.py:size=small --workdir=runs/vae_small

``:arch=v1`` gives this project's first VAE (mean-pooled encoder, END-terminated bars),
``:recipe=v1`` its first training recipe (the default is the authors').
Its frozen encoder's mean vectors are the bar embeddings the global view G reads;
experiments/train.py writes them next to the VAE checkpoint for a given dataset.
"""

from __future__ import annotations

import ml_collections

from experiments.configs import common
from sfs_jax.model.config import ARCHITECTURES

TRAIN_BY_SIZE = {
    "paper": dict(batch_size=256, num_steps=50_000, learning_rate=3e-4, warmup_steps=1000,
                  log_every=100, eval_every=2000, eval_batches=8, checkpoint_every=2000),
    "small": dict(batch_size=64, num_steps=300, learning_rate=1e-3, warmup_steps=30,
                  log_every=25, eval_every=100, eval_batches=2, checkpoint_every=100),
    "tiny": dict(batch_size=8, num_steps=10, learning_rate=3e-3, warmup_steps=2,
                 log_every=5, eval_every=10, eval_batches=1, checkpoint_every=10),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = common.parse_arg(arg, size="small", compute_dtype="", data="synthetic", arch="reference",
                            recipe="reference")
    if args.size not in TRAIN_BY_SIZE:
        raise ValueError(f"size must be one of {sorted(TRAIN_BY_SIZE)}, got {args.size!r}")
    if args.arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {ARCHITECTURES}, got {args.arch!r}")
    config = ml_collections.ConfigDict()
    config.task = "bar_vae"
    config.model_name = "bar_vae"
    config.model_size = args.size
    # The VAE's architecture: the authors' (summary token, residual latent condition, no END) or v1.
    config.model_arch = args.arch
    config.model = ml_collections.ConfigDict(dict(
        compute_dtype=args.compute_dtype or ("bfloat16" if args.size == "paper" else "float32")))
    config.vae_max_beta = 0.1
    # KL weight: 0.1 times a cycle that ramps up over its first half (the reference: 0 for 1,000
    # steps, then cycles of 50,000). Runs far shorter than the authors' 1M steps scale the cycle
    # to a quarter of the run and start at once.
    num_steps = TRAIN_BY_SIZE[args.size]["num_steps"]
    reference_beta = args.recipe == "reference" and args.size == "paper"
    config.vae_beta_cycle_steps = 50_000 if reference_beta else max(num_steps // 4, 1)
    config.vae_beta_start_step = 1_000 if reference_beta else 0
    config.data = common.data_block(builder=args.data, num_songs=64 if args.size == "tiny" else 512)
    config.train = common.train_block(**{**TRAIN_BY_SIZE[args.size], **vae_recipe(args.recipe)})
    config.mesh = common.mesh_block()
    return config


def vae_recipe(name: str) -> dict:
    """The bar VAE's training recipe: the authors' (Adam(0.9, 0.999, 1e-8), lr 1e-4 constant, batch 32,
    no warmup or clipping; SFS.md section 3) or this project's first one (v1: the size's batch and rate,
    warmup, cosine decay, clipping)."""
    if name == "v1":
        return common.recipe("v1")
    return {**common.recipe(name), "batch_size": 32, "schedule": "constant", "decay_rate": 1.0,
            "loss_reduction": "sum_per_example"}
