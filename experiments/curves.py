r"""Learning curves of several training runs side by side, from their ``metrics.jsonl``.

    python -m experiments.curves --runs=sfs=runs/pop909/sfs,flat=runs/pop909/flat \
        --out=docs/pop909_curves.png

A run is a training workdir or a ``metrics.jsonl`` file (the GPU script brings the
files back alone). The figure has two panels, training loss and validation bits per
beat against the step; the printed markdown table gives each run's validation rows,
so the README's numbers and its figure come from the same file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from absl import app, flags

from experiments import cli
from sfs_jax.training.metrics_writer import read_metrics

Curves = dict[str, dict[str, list[dict]]]


def parse_runs(items: Sequence[str]) -> dict[str, Path]:
    """``["name=path", ...]`` -> {name: path}; each path must hold a metrics.jsonl."""
    runs: dict[str, Path] = {}
    for item in items:
        name, sep, path_text = item.partition("=")
        if not sep or not name or not path_text:
            raise ValueError(f"--runs entries are name=path, got {item!r}")
        path = Path(path_text).expanduser()
        if not (path.is_file() or (path / "metrics.jsonl").is_file()):
            raise FileNotFoundError(f"run {name!r}: no metrics.jsonl at {path}")
        runs[name] = path
    if not runs:
        raise ValueError("--runs is empty: give name=workdir pairs")
    return runs


def load_curves(runs: Mapping[str, Path]) -> Curves:
    """{run: {"train": rows, "validation": rows}}."""
    return {name: {split: read_metrics(path, split) for split in ("train", "validation")}
            for name, path in runs.items()}


def validation_table(curves: Curves, metrics: Sequence[str] = ("loss", "bits_per_beat")) -> str:
    """Markdown: one row per (run, validation step)."""
    lines = ["| run | step | " + " | ".join(metrics) + " |", "|---|---:|" + "---:|" * len(metrics)]
    for name, splits in curves.items():
        for row in splits["validation"]:
            cells = " | ".join(f"{row[m]:.3f}" if m in row else "" for m in metrics)
            lines.append(f"| {name} | {row['step']} | {cells} |")
    return "\n".join(lines)


def plot_curves(curves: Curves, path: str | Path, title: str = "") -> Path:
    """Training loss and validation bits per beat against the step, one colour per run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, splits in curves.items():
        train = splits["train"]
        left.plot([r["step"] for r in train], [r["loss"] for r in train], label=name)
        valid = [r for r in splits["validation"] if "bits_per_beat" in r]
        right.plot([r["step"] for r in valid], [r["bits_per_beat"] for r in valid], marker="o", label=name)
    left.set(xlabel="step", ylabel="training loss (sum of head NLLs, nats)", title="training loss")
    right.set(xlabel="step", ylabel="bits per beat", title="validation bits per beat")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def define_flags() -> None:
    flags.DEFINE_list("runs", [], "name=workdir (or name=metrics.jsonl) pairs.")
    flags.DEFINE_string("out", "runs/curves.png", "Where the figure goes.")
    flags.DEFINE_string("title", "", "Figure title.")


def main(argv: list[str]) -> None:
    del argv
    cli.prepare()
    try:
        runs = parse_runs(flags.FLAGS.runs)
    except (ValueError, FileNotFoundError) as err:
        raise app.UsageError(str(err)) from err
    curves = load_curves(runs)
    print(validation_table(curves))
    print(f"figure: {plot_curves(curves, flags.FLAGS.out, flags.FLAGS.title)}")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
