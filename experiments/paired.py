r"""Paired differences to a baseline across one or more evaluation folders (sfs_jax/evaluation/paired.py).

    python -m experiments.paired --per_song=runs/eval_a/per_song.csv,runs/eval_b/per_song.csv \
        --baseline=flat --out=runs/paired

Evaluations run separately with the same ``--seed``, split, seed count and structures
compose the same songs with the same keys, so their models can be paired afterwards.
A model in several folders (Flat evaluated beside each SFS variant) is read once, and
only if its songs score the same in each: a check that the settings matched.
Writes ``paired.md`` and ``paired.csv`` under ``--out`` and prints the table.
"""

from __future__ import annotations

from pathlib import Path

from absl import app, flags

from sfs_jax.evaluation import paired


def define_flags() -> None:
    flags.DEFINE_list("per_song", [], "per_song.csv files written by experiments.evaluate.")
    flags.DEFINE_string("baseline", "flat", "The model every other model is paired with.")
    flags.DEFINE_string("out", "runs/paired", "Output folder.")


def main(argv: list[str]) -> None:
    del argv
    args = flags.FLAGS
    if not args.per_song:
        raise app.UsageError("--per_song needs at least one per_song.csv")
    try:
        rows = paired.read_per_song(args.per_song)
        print(paired.write_paired(Path(args.out), rows, args.baseline))
    except (FileNotFoundError, ValueError) as err:
        raise app.UsageError(str(err)) from err
    print(f"written under {args.out}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
