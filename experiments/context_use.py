r"""How much a trained SFS model uses each context slot and G (sfs_jax/evaluation/reliance.py).

    python -m experiments.context_use --workdir=runs/pop909/sfs
    python -m experiments.context_use --workdir=runs/pop909/sfs --variants=none,seed+ref,G --eval_batches=32

Scores the run's validation batches with each listed set of inputs hidden from the
target (context slots masked out, or every G bar unknown) and prints validation loss,
bits per beat and the change from nothing hidden, plus how often each slot is filled.
The dataset and bar embeddings are the run's own (its config and VAE workdir).
"""

from __future__ import annotations

from pathlib import Path

from absl import app, flags

from experiments import pipeline
from sfs_jax.evaluation import reliance
from sfs_jax.training import tasks
from sfs_jax.training.restore import load_trained
from sfs_jax.training.train import model_inputs


def define_flags() -> None:
    flags.DEFINE_string("workdir", None, "An SFS training workdir.", required=True)
    flags.DEFINE_list("variants", ["+".join(v) or "none" for v in reliance.DEFAULT_VARIANTS],
                      "Inputs to hide, one set per entry: slot names and G joined with '+', or none.")
    flags.DEFINE_integer("eval_batches", 0, "Validation batches (0: the run's config.train.eval_batches).")


def main(argv: list[str]) -> None:
    del argv
    args = flags.FLAGS
    try:
        variants = [reliance.parse_variant(v) for v in args.variants]
    except ValueError as err:
        raise app.UsageError(str(err)) from err
    if not Path(args.workdir).is_dir():
        raise app.UsageError(f"--workdir {args.workdir} is not a folder")
    model, config, meta = load_trained(args.workdir)
    if tasks.model_name_of(config) == "flat":
        raise app.UsageError("a Flat model has no contexts or G to hide")
    if args.eval_batches:
        config.train.eval_batches = args.eval_batches
    dataset_dir = pipeline.ensure_dataset(config.data)
    embeddings = None
    if tasks.model_config_from(config).use_global_view:
        embeddings, _ = pipeline.ensure_bar_embeddings(config.vae_workdir, dataset_dir)
    task = tasks.sfs_task(config, dataset_dir, embeddings)
    batches = [model_inputs(batch) for batch in task.make_eval_iterator()]
    rows = reliance.reliance(model, batches, variants)
    print(f"{args.workdir} (step {meta.get('step')}), {sum(len(b['context_slot']) for b in batches)} "
          "validation examples")
    print(reliance.reliance_markdown(rows, reliance.slot_presence(batches)))


if __name__ == "__main__":
    define_flags()
    app.run(main)
