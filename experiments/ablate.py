r"""Train every variant of a sweep for the same budget and write one comparison table.

    python -m experiments.ablate --sweep=context --config=experiments/configs/sfs.py:size=small \
        --workdir=runs/ablate [--only=sfs,flat]

Each variant trains in ``workdir/<name>`` (resumable: finished ones are skipped);
the bar VAE is trained once in ``workdir/vae`` and shared. The table
(``workdir/ablation.md`` and ``.csv``) has validation bits per beat, loss and
per-head NLL of each variant's last validation.
"""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path
from typing import Any

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from experiments import cli, pipeline
from experiments.configs import ablate as ablate_configs
from experiments.configs import bar_vae as vae_configs
from sfs_jax.training import tasks
from sfs_jax.training.checkpoint import read_meta
from sfs_jax.training.train import check_resumable

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/sfs.py", "Base SFS config.")
_SWEEP = flags.DEFINE_enum("sweep", "context", sorted(ablate_configs.SWEEPS), "Which sweep.")
_WORKDIR = flags.DEFINE_string("workdir", None, "One folder per variant goes here.", required=True)
_ONLY = flags.DEFINE_list("only", [], "Run only these variant names.")
_WORKERS = flags.DEFINE_integer("workers", 2, "Processes for a dataset build, if one is needed.")

COLUMNS = ("variant", "bits_per_beat", "loss", "type_nll", "pitch_nll", "velocity_nll", "duration_nll", "steps",
           "windows")


def vae_config_for(base: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    config = vae_configs.get_config(f"size={base.model_size}")
    config.data = copy.deepcopy(base.data)
    return config


def write_table(rows: list[dict[str, Any]], workdir: Path) -> str:
    """Markdown and CSV of the variants' validation metrics; returns the markdown."""
    with open(workdir / "ablation.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: row.get(k, "") for k in COLUMNS} for row in rows)
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(fmt(row.get(k, "")) for k in COLUMNS) + " |" for row in rows]
    if len({row.get("windows") for row in rows}) > 1:
        lines += ["", "Rows with other `windows` (examples.window_scope) are scored on other validation examples: "
                      "compare their bits per beat only with each other (`python -m experiments.context_use "
                      "--variants=none --window_scope=...` rescores a run on the other windows)."]
    markdown = "\n".join(lines) + "\n"
    (workdir / "ablation.md").write_text(markdown)
    return markdown


def main(argv: list[str]) -> None:
    del argv
    cli.prepare()
    workdir = Path(_WORKDIR.value)
    base = _CONFIG.value
    runs = [(n, c) for n, c in ablate_configs.variants(base, _SWEEP.value) if not _ONLY.value or n in _ONLY.value]
    if any(tasks.model_config_from(c).use_global_view for _, c in runs) and not base.vae_workdir:
        vae_dir = workdir / "vae"
        pipeline.run(vae_config_for(base), str(vae_dir), _WORKERS.value)
        for _, config in runs:
            config.vae_workdir = str(vae_dir)
    rows = []
    for name, config in runs:
        run_dir = workdir / name
        final = run_dir / "final_metrics.json"
        if final.exists():  # a finished variant is reused, if it is the variant asked for
            try:
                check_resumable(tasks.run_identity, read_meta(run_dir, best=False)["config"], config.to_dict(), run_dir)
            except ValueError as err:
                raise app.UsageError(f"variant {name!r}: {err}") from err
        result = (json.loads(final.read_text()) if final.exists()
                  else pipeline.run(config, str(run_dir), _WORKERS.value))
        rows.append({"variant": name, "steps": config.train.num_steps,
                     "windows": tasks.example_config_from(config).window_scope, **result["validation"]})
        print(write_table(rows, workdir))


if __name__ == "__main__":
    cli.run(main)
