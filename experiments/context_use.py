r"""How much a trained SFS model uses each context slot and G (sfs_jax/evaluation/reliance.py).

    python -m experiments.context_use --workdir=runs/pop909/sfs
    python -m experiments.context_use --workdir=runs/pop909/sfs --variants=none,seed+ref,G --eval_batches=32

Scores the run's validation batches with each listed set of inputs hidden from the
target (context slots masked out, or every G bar unknown) and prints validation loss,
bits per beat and the change from nothing hidden, plus how often each slot is filled.
The dataset and bar embeddings are the run's own (its config and VAE workdir).
``--window_scope`` scores windows of another scope than the run trained on, so the
GPT-like Flat (song windows) and SFS can be scored on the same validation windows:

    python -m experiments.context_use --workdir=runs/pop909/flat_song --variants=none --window_scope=segment
"""

from __future__ import annotations

from pathlib import Path

from absl import app, flags

from experiments import cli, pipeline
from sfs_jax.data.examples import WINDOW_SCOPES
from sfs_jax.evaluation import reliance
from sfs_jax.training import tasks
from sfs_jax.training.restore import load_trained
from sfs_jax.training.train import model_inputs


def define_flags() -> None:
    flags.DEFINE_string("workdir", None, "An SFS training workdir.", required=True)
    flags.DEFINE_list("variants", ["+".join(v) or "none" for v in reliance.DEFAULT_VARIANTS],
                      "Inputs to hide, one set per entry: slot names and G joined with '+', or none.")
    flags.DEFINE_integer("eval_batches", 0, "Validation batches (0: the run's config.train.eval_batches).")
    flags.DEFINE_enum("window_scope", "", ["", *WINDOW_SCOPES],
                      "Score windows of this scope (examples.window_scope) instead of the run's own.")


def main(argv: list[str]) -> None:
    del argv
    cli.prepare()
    args = flags.FLAGS
    try:
        variants = [reliance.parse_variant(v) for v in args.variants]
    except ValueError as err:
        raise app.UsageError(str(err)) from err
    if not Path(args.workdir).is_dir():
        raise app.UsageError(f"--workdir {args.workdir} is not a folder")
    model, config, meta = load_trained(args.workdir)
    if tasks.model_name_of(config) == "flat" and any(variants):
        raise app.UsageError("a Flat model has no contexts or G to hide; --variants=none scores it")
    if args.eval_batches:
        config.train.eval_batches = args.eval_batches
    if args.window_scope:
        config.examples.window_scope = args.window_scope
    try:
        tasks.check_window_scope(tasks.model_config_from(config), tasks.example_config_from(config))
    except ValueError as err:
        raise app.UsageError(str(err)) from err
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
    cli.run(main)
