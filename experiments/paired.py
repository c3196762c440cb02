r"""Paired differences to a baseline across one or more evaluation folders (sfs_jax/evaluation/paired.py).

    python -m experiments.paired --per_song=runs/eval_a/per_song.csv,runs/eval_b/per_song.csv \
        --baseline=flat --out=runs/paired

Evaluations run separately with the same ``--seed``, split, seed count and structures
compose the same songs with the same keys, so their models can be paired afterwards.
A model in several folders (Flat evaluated beside each SFS variant) is read once, and
only if its songs score the same in each: a check that the settings matched.
Writes ``paired.md`` and ``paired.csv`` under ``--out`` and prints the table.

Training replicates (the same models retrained with another ``train.seed``, each
evaluated with the same protocol settings) pool per seed song:

    python -m experiments.paired --replicates=seed0=runs/eval_4k/per_song.csv,seed1=runs/eval_4k_seed1/per_song.csv \
        --rename=sfs_4k=sfs --baseline=flat --out=runs/paired_2seeds
"""

from __future__ import annotations

from pathlib import Path

from absl import app, flags

from experiments import cli
from sfs_jax.evaluation import paired


def define_flags() -> None:
    flags.DEFINE_list("per_song", [], "per_song.csv files written by experiments.evaluate.")
    flags.DEFINE_list("replicates", [], "tag=per_song.csv pairs instead of --per_song: training replicates "
                      "(the same comparison retrained with another seed), pooled per seed song.")
    flags.DEFINE_list("rename", [], "old=new model names, so one model has one name across replicates.")
    flags.DEFINE_string("baseline", "flat", "The model every other model is paired with.")
    flags.DEFINE_string("out", "runs/paired", "Output folder.")


def _pairs(values: list[str], flag: str) -> list[tuple[str, str]]:
    pairs = [value.partition("=") for value in values]
    bad = [value for value, (_, eq, right) in zip(values, pairs, strict=True) if not eq or not right]
    if bad:
        raise app.UsageError(f"--{flag} takes name=value pairs, got {bad}")
    return [(left, right) for left, _, right in pairs]


def main(argv: list[str]) -> None:
    del argv
    cli.prepare()
    args = flags.FLAGS
    if bool(args.per_song) == bool(args.replicates):
        raise app.UsageError("give --per_song (one or more per_song.csv) or --replicates (tag=per_song.csv), "
                             "not both or neither")
    if args.rename and not args.replicates:
        raise app.UsageError("--rename applies to --replicates only")
    try:
        if args.replicates:
            rows = paired.read_replicates(_pairs(args.replicates, "replicates"),
                                          dict(_pairs(args.rename, "rename")))
        else:
            rows = paired.read_per_song(args.per_song)
        print(paired.write_paired(Path(args.out), rows, args.baseline))
    except (FileNotFoundError, ValueError) as err:
        raise app.UsageError(str(err)) from err
    print(f"written under {args.out}")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
