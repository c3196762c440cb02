"""experiments/curves.py: learning curves of several runs from the metrics the trainer writes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from experiments import curves
from sfs_jax.training.metrics_writer import MetricsWriter


def _write_run(workdir: Path, bits: list[float]) -> Path:
    workdir.mkdir(parents=True)
    writer = MetricsWriter(workdir)
    for index, value in enumerate(bits):
        step = 100 * (index + 1)
        writer.write("train", step, {"loss": 10.0 - index})
        writer.write("validation", step, {"loss": 9.0 - index, "bits_per_beat": value})
    # A resumed run rewrites its last step: the last write wins.
    writer.write("validation", 100 * len(bits), {"loss": 1.5, "bits_per_beat": bits[-1] - 1})
    writer.close()
    return workdir


def test_workdirs_and_renamed_files_give_one_table_and_figure(tmp_path: Path) -> None:
    sfs = _write_run(tmp_path / "sfs", [80.0, 70.0])
    flat = _write_run(tmp_path / "flat", [82.0, 75.0])
    copied = tmp_path / "flat_metrics.jsonl"  # how the GPU script brings a run back
    shutil.copy(flat / "metrics.jsonl", copied)
    runs = curves.parse_runs([f"sfs={sfs}", f"flat={copied}"])
    loaded = curves.load_curves(runs)
    assert [r["bits_per_beat"] for r in loaded["sfs"]["validation"]] == [80.0, 69.0]
    assert [r["step"] for r in loaded["flat"]["train"]] == [100, 200]
    table = curves.validation_table(loaded)
    assert "| sfs | 200 | 1.500 | 69.000 |" in table and "| flat | 100 | 9.000 | 82.000 |" in table
    figure = curves.plot_curves(loaded, tmp_path / "out" / "curves.png", title="t")
    assert figure.stat().st_size > 10_000


@pytest.mark.parametrize("items, error", [([], "empty"), (["sfs"], "name=path"), (["sfs=/nonexistent"], "no metrics")])
def test_bad_run_lists_are_named(items: list[str], error: str) -> None:
    with pytest.raises((ValueError, FileNotFoundError), match=error):
        curves.parse_runs(items)
