r"""Convert a checkpoint of the authors' SFS (and its bar VAE) into a run directory of ours.

    python -m experiments.import_reference --checkpoint=sfs.safetensors --workdir=runs/authors
    python -m experiments.generate --checkpoint=runs/authors --structure="A8 B8 A8 C4" --out=runs/songs

The checkpoint is the authors' ``SegmentFullSongModel.state_dict()`` saved as
safetensors (names as ``../shared/reference/paper_state_dict.tsv``: the SFS model and
``bar_embedder.*`` in one file). Sizes are read from the tensor shapes (heads: 8,
x-transformers' default, unless ``--heads``). A file that does not fit is refused
before anything is written, with the missing, unexpected and mis-shaped names.

The result is an SFS run in ``--workdir`` (the reference architecture and recipe, the
paper's 8-bar windows) with the bar VAE as a run of its own in ``--workdir/bar_vae``;
``generate``, ``serve``, ``evaluate`` and ``context_use`` load it like a trained run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from pathlib import Path

import ml_collections
from absl import flags

from experiments import cli
from experiments.configs import bar_vae as bar_vae_configs
from experiments.configs import sfs as sfs_configs
from sfs_jax.model import bar_vae
from sfs_jax.model.config import ModelConfig
from sfs_jax.reference import weights as weights_lib
from sfs_jax.training.restore import VAE_SUBDIR, write_run


def define_flags() -> None:
    """Flags are defined by the command only, so tests can import ``import_checkpoint`` beside other commands."""
    flags.DEFINE_string("checkpoint", None, "The authors' checkpoint (.safetensors).", required=True)
    flags.DEFINE_string("workdir", None, "A new (or empty) folder for the run.", required=True)
    flags.DEFINE_integer("heads", weights_lib.DEFAULT_HEADS, "Attention heads (not in the shapes).")


def run_configs(model: ModelConfig) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict]:
    """(SFS config, bar VAE config) of the runs holding ``model``: the paper's configs with its sizes."""
    fields = dataclasses.asdict(model)
    vae = fields.pop("vae")
    sfs_config = sfs_configs.get_config("size=paper")
    vae_config = bar_vae_configs.get_config("size=paper")
    for config in (sfs_config, vae_config):
        config.model = ml_collections.ConfigDict({**fields, "vae": vae})
    sfs_config.vae_workdir = VAE_SUBDIR  # read relative to the run (restore.saved_config)
    return sfs_config, vae_config


def import_checkpoint(checkpoint: str | Path, workdir: str | Path, heads: int = weights_lib.DEFAULT_HEADS) -> dict:
    """Checks, converts and writes; returns a summary. Nothing is written unless the checkpoint fits."""
    checkpoint, workdir = Path(checkpoint), Path(workdir)
    if workdir.exists() and any(workdir.iterdir()):
        raise FileExistsError(f"--workdir {workdir} is not empty; importing would mix two runs")
    weights = weights_lib.read_checkpoint(checkpoint)
    shapes = {name: array.shape for name, array in weights.items()}
    case = {"constructor_args": {"AttentionLayers": {"heads": heads}}}
    model_config = weights_lib.diagnose(shapes, case)
    sfs_model, vae_model = weights_lib.load_models(weights, model_config)
    sfs_config, vae_config = run_configs(model_config)
    fingerprint = bar_vae.vae_fingerprint(vae_model)
    sfs_config.vae_fingerprint = fingerprint
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    source = {"imported_from": str(checkpoint.resolve()), "checkpoint_sha256": digest}
    write_run(workdir / VAE_SUBDIR, vae_model, vae_config, source)
    write_run(workdir, sfs_model, sfs_config, source)
    return {"workdir": str(workdir), "config": model_config, "vae_fingerprint": fingerprint,
            "checkpoint_sha256": digest}


def main(argv: list[str]) -> None:
    del argv
    cli.prepare()
    args = flags.FLAGS
    try:
        summary = import_checkpoint(args.checkpoint, args.workdir, args.heads)
    except (FileNotFoundError, FileExistsError, weights_lib.CheckpointMismatch) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    config = summary["config"]
    print(f"imported {args.checkpoint} into {summary['workdir']}: d_model {config.d_model}, "
          f"{config.n_encoder_layers} encoder / {config.n_decoder_layers} decoder / {config.n_global_layers} G "
          f"layers, {config.n_heads} heads x {config.head_dim}; bar VAE latent {config.vae.latent_dim} "
          f"(fingerprint {summary['vae_fingerprint'][:12]})")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
