"""sfs_jax/evaluation/paired.py: paired differences to a baseline on songs built so the answer is known."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from sfs_jax.evaluation import paired, protocol
from tests.conftest import REPO_ROOT

SI = "SI_8-16"


def rows_for(model: str, si_by_slot: dict[tuple[str, str, int], float]) -> list[dict]:
    """Per-song rows as the protocol writes them, every other metric missing."""
    rows = []
    for (structure, seed_song, sample), si in si_by_slot.items():
        row = {"model": model, "structure": structure, "seed_song_id": seed_song, "sample": sample}
        row.update({key: math.nan for key, _ in paired.PAIRED_METRICS})
        row[SI] = si
        rows.append(row)
    return rows


def slots(n_seed_songs: int, n_samples: int = 2) -> list[tuple[str, str, int]]:
    return [("A8B8", f"song-{s}", k) for s in range(n_seed_songs) for k in range(n_samples)]


def test_a_constant_shift_is_found_exactly_and_every_song_is_higher() -> None:
    rng = np.random.default_rng(0)
    base = {slot: float(rng.uniform()) for slot in slots(5)}
    rows = rows_for("flat", base) + rows_for("sfs", {s: v + 0.1 for s, v in base.items()})
    rows += rows_for(protocol.REAL, {("A8B8", "song-0", 0): 0.9})  # real songs are never paired
    (record,) = paired.paired_differences(rows, "flat")
    iv = record[SI]
    assert record["model"] == "sfs" and record["slots"] == 10
    assert iv.n == 5 and iv.mean == pytest.approx(0.1) and iv.half_width == pytest.approx(0.0, abs=1e-12)
    assert record[f"{SI}_higher"] == 1.0
    assert record["seed_adherence"].n == 0  # no values: no interval
    assert "**+0.1000" in paired.paired_markdown([record], "flat")  # excludes 0: bold


def test_interval_is_over_seed_songs_and_skips_missing_values() -> None:
    """Each seed song's slots are averaged first; a slot missing on either side is left out."""
    diffs = {"song-0": (0.3, 0.1), "song-1": (-0.2, 0.0), "song-2": (0.05, math.nan)}
    base, other = {}, {}
    for seed_song, values in diffs.items():
        for sample, d in enumerate(values):
            base[("A8B8", seed_song, sample)] = 0.5
            other[("A8B8", seed_song, sample)] = 0.5 + d
    other[("A8B8", "song-9", 0)] = 0.7  # composed by one model only: unpaired
    (record,) = paired.paired_differences(rows_for("flat", base) + rows_for("sfs", other), "flat")
    per_seed = np.array([0.2, -0.1, 0.05])
    half = stats.t.ppf(0.975, 2) * per_seed.std(ddof=1) / math.sqrt(3)
    iv = record[SI]
    assert record["slots"] == 6 and iv.n == 3
    assert iv.mean == pytest.approx(per_seed.mean()) and iv.half_width == pytest.approx(half)
    assert record[f"{SI}_higher"] == pytest.approx(3 / 5)
    assert "**" not in paired.paired_markdown([record], "flat")  # the interval holds 0


def test_per_song_files_round_trip_and_combine(tmp_path: Path) -> None:
    base = {slot: 0.25 for slot in slots(3)}
    for name, shift in (("flat", 0.0), ("sfs", 0.05)):
        folder = tmp_path / name
        folder.mkdir()
        protocol.write_rows_csv(folder / "per_song.csv", rows_for(name, {s: v + shift for s, v in base.items()})
                                + rows_for(protocol.REAL, {("A8B8", "song-0", 0): 0.9}))
    rows = paired.read_per_song([tmp_path / "flat" / "per_song.csv", tmp_path / "sfs" / "per_song.csv"])
    assert {r["model"] for r in rows} == {"flat", "sfs"} and len(rows) == 12
    markdown = paired.write_paired(tmp_path / "out", rows, "flat")
    assert "| sfs | 6 |" in markdown and (tmp_path / "out" / "paired.md").read_text().startswith("## Paired")
    with open(tmp_path / "out" / "paired.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert float(row[f"{SI}_diff"]) == pytest.approx(0.05) and row["seed_adherence_n"] == "0"
    assert row["seed_adherence_diff"] == "NA"


def test_bad_inputs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"per_song\.csv"):
        paired.read_per_song([tmp_path / "missing.csv"])
    not_per_song = tmp_path / "results.csv"
    not_per_song.write_text("model,songs\nsfs,2\n")
    with pytest.raises(ValueError, match=r"not a per_song\.csv"):
        paired.read_per_song([not_per_song])
    one = tmp_path / "a.csv"
    protocol.write_rows_csv(one, rows_for("sfs", {slot: 0.1 for slot in slots(1)}))
    with pytest.raises(ValueError, match="baseline 'flat'"):
        paired.paired_differences(paired.read_per_song([one]), "flat")


def test_a_baseline_in_several_files_must_have_the_same_songs_in_each(tmp_path: Path) -> None:
    """Flat evaluated beside each SFS variant pairs with both; a Flat from other settings is refused."""
    base = {slot: 0.2 + 0.01 * i for i, slot in enumerate(slots(3))}
    files = {}
    for name, shift in (("sfs_a", 0.05), ("sfs_b", -0.02)):
        files[name] = tmp_path / f"{name}.csv"
        protocol.write_rows_csv(files[name], rows_for("flat", base)
                                + rows_for(name, {s: v + shift for s, v in base.items()}))
    rows = paired.read_per_song(files.values())
    assert sum(r["model"] == "flat" for r in rows) == 6  # read once, not twice
    by_model = {r["model"]: r[SI] for r in paired.paired_differences(rows, "flat")}
    assert by_model["sfs_a"].mean == pytest.approx(0.05) and by_model["sfs_b"].mean == pytest.approx(-0.02)

    other_seed = tmp_path / "other_seed.csv"  # the same model names, other songs
    protocol.write_rows_csv(other_seed, rows_for("flat", {s: v + 0.001 for s, v in base.items()}))
    with pytest.raises(ValueError, match="differs between"):
        paired.read_per_song([files["sfs_a"], other_seed])
    fewer = tmp_path / "fewer.csv"
    protocol.write_rows_csv(fewer, rows_for("flat", dict(list(base.items())[:4])))
    with pytest.raises(ValueError, match="differs between"):
        paired.read_per_song([files["sfs_a"], fewer])


def test_replicates_pair_within_a_replicate_and_average_over_them_per_seed_song(tmp_path: Path) -> None:
    """Two training seeds, the same 3 seed songs: SFS +0.1 in one, +0.3 in the other, so +0.2 per seed song."""
    base = {slot: 0.2 + 0.01 * i for i, slot in enumerate(slots(3))}
    files = []
    for tag, name, shift, flat_shift in (("s0", "sfs_4k", 0.1, 0.0), ("s1", "sfs_4k_seed1", 0.3, 0.05)):
        path = tmp_path / f"{tag}.csv"  # each replicate's Flat is its own run: other values, same slots
        protocol.write_rows_csv(path, rows_for("flat", {s: v + flat_shift for s, v in base.items()})
                                + rows_for(name, {s: v + flat_shift + shift for s, v in base.items()}))
        files.append((tag, path))
    rows = paired.read_replicates(files, {"sfs_4k": "sfs", "sfs_4k_seed1": "sfs"})
    (record,) = paired.paired_differences(rows, "flat")
    iv = record[SI]
    assert record["model"] == "sfs" and record["slots"] == 12  # 6 slots per replicate, never paired across
    assert iv.n == 3 and iv.mean == pytest.approx(0.2) and iv.half_width == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="one name"):
        paired.read_replicates(files, {"sfs_4k": "flat"})
    with pytest.raises(ValueError, match="at least two tags"):
        paired.read_replicates([("s0", files[0][1])])
    with pytest.raises(ValueError, match="tag"):
        paired.read_replicates([("", files[0][1]), ("s1", files[1][1])])


def test_cli_pools_replicates_and_refuses_mixed_inputs(tmp_path: Path) -> None:
    base = {slot: 0.3 for slot in slots(2)}
    paths = []
    for tag, shift in (("s0", 0.1), ("s1", 0.2)):
        paths.append(tmp_path / f"{tag}.csv")
        protocol.write_rows_csv(paths[-1], rows_for("flat", base)
                                + rows_for(f"sfs_{tag}", {s: v + shift for s, v in base.items()}))
    command = [sys.executable, "-m", "experiments.paired", f"--replicates=s0={paths[0]},s1={paths[1]}",
               "--rename=sfs_s0=sfs,sfs_s1=sfs", f"--out={tmp_path / 'out'}"]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    with open(tmp_path / "out" / "paired.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["model"] == "sfs" and float(row[f"{SI}_diff"]) == pytest.approx(0.15) and row["slots"] == "8"
    mixed = subprocess.run([*command[:3], f"--per_song={paths[0]}", command[3]], cwd=REPO_ROOT,
                           capture_output=True, text=True, timeout=300)
    assert mixed.returncode != 0 and "not both or neither" in mixed.stderr
