r"""Write a trained SFS run (and its bar VAE) as a shipped model: parameters, configs and a model card.

    python -m experiments.export_model --workdir=runs/i12/sfs_8bar_s0 --out=sfs_jax/pretrained/pop909_small \
        --trained_on="the 825 training songs of POP909" --data_builder=pop909 --manual_dir=../shared/data/pop909 \
        --licenses=../shared/data/pop909/LICENSE.POP909,../shared/data/pop909/LICENSE.structure-annotations

The folder holds parameters only (float32, compressed), no optimizer state; see
``sfs_jax/training/shipped.py``. ``generate``, ``serve`` and ``evaluate`` use the
repository's shipped model when no checkpoint is given.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from absl import flags

from experiments import cli
from sfs_jax.training import shipped

_WORKDIR = flags.DEFINE_string("workdir", None, "The SFS training run to ship (its best checkpoint).", required=True)
_OUT = flags.DEFINE_string("out", None, "A new (or empty) folder for the shipped model.", required=True)
_TRAINED_ON = flags.DEFINE_string("trained_on", "", "What the model was trained on, for the model card.")
_NOTES = flags.DEFINE_string("notes", "", "How good it is and is not, for the model card.")
_BUILDER = flags.DEFINE_string("data_builder", "", "The dataset builder another machine uses for the training "
                               "songs (e.g. pop909; empty: the run's).")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", "", "That builder's source folder (e.g. ../shared/data/pop909).")
_LICENSES = flags.DEFINE_list("licenses", [], "License files of the training data, copied beside the model.")


def main(argv: list[str]) -> None:
    del argv
    cli.prepare()
    missing = [path for path in _LICENSES.value if not Path(path).is_file()]
    if missing:
        print(f"error: license file {missing[0]} does not exist", file=sys.stderr)
        sys.exit(2)
    card = {"trained_on": _TRAINED_ON.value, "notes": _NOTES.value, "source_run": _WORKDIR.value,
            "licenses": [Path(path).name for path in _LICENSES.value]}
    try:
        data = {key: value for key, value in (("builder", _BUILDER.value), ("manual_dir", _MANUAL_DIR.value)) if value}
        card = shipped.export(_WORKDIR.value, _OUT.value, card, data)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    for path in _LICENSES.value:
        shutil.copyfile(path, Path(_OUT.value) / Path(path).name)
    size = sum(f.stat().st_size for f in Path(_OUT.value).iterdir())
    print(f"wrote {_OUT.value}: SFS {card['parameters']['sfs']:,} and bar VAE {card['parameters']['bar_vae']:,} "
          f"parameters (step {card['sfs_step']} / {card['bar_vae_step']}), {size / 1e6:.1f} MB")


if __name__ == "__main__":
    cli.run(main)
