"""Paired differences between models scored by the evaluation protocol (SFS.md section 5).

Place in the data flow: after ``sfs_jax.evaluation.protocol`` has scored every song
(``per_song.csv``). Every model composes the same (structure, seed song, sample) slot
with the same key (common random numbers), so the difference of a metric between two
models on one slot is free of most of the song-to-song variance that makes the
unpaired intervals of ``results.md`` overlap. The unit of independence is the seed
song (its structures and samples share material), so each seed song's differences
are averaged first and the interval is a Student t-interval over seed songs:

    d_s = mean over the slots of seed song s of (metric(model) - metric(baseline)),
    mean(d) ± t_{0.975, S - 1} · sd(d) / sqrt(S),   S seed songs with a value.

Slots where either model lacks a value (SI 16+ of a short song, seed adherence where
the seed's label occurs once) are left out. Several evaluation folders can be
combined (``read_per_song``) as long as they ran the same protocol settings, which
``experiments.evaluate`` guarantees for the same ``--seed``, split and structures; a
model evaluated in several of them (the baseline, typically) must have the same rows
in each, which checks exactly that.

Bold marks an interval that excludes 0, "different", not "better": for the entropy
and grooving columns closeness to real songs is what counts, and with nine metrics
and several models some interval will exclude 0 by chance (no multiplicity
correction is applied).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sfs_jax.evaluation.protocol import COLUMNS, REAL, SPEED, Interval, t_interval

SLOT_KEYS = ("structure", "seed_song_id", "sample")
PAIRED_METRICS = tuple((key, title) for key, title in COLUMNS if key != SPEED)


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def _same_values(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two rows of one slot hold the same metric values (NaN equals NaN).

    Equal to 1e-5 relative: files written before per_song.csv kept every digit hold 6.
    """
    return all(math.isclose(a[key], b[key], rel_tol=1e-5, abs_tol=1e-12)
               or (math.isnan(a[key]) and math.isnan(b[key])) for key, _ in PAIRED_METRICS)


def read_per_song(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """The generated songs' rows of one or more ``per_song.csv`` files (real songs left out).

    A model may appear in several files (Flat evaluated beside each SFS variant) only
    if its rows are the same slot for slot: the protocol is deterministic, so equal
    rows say both evaluations ran the same settings on the same checkpoint, and
    differing ones that pairing across them would compare under different settings.
    """
    rows: list[dict[str, Any]] = []
    seen: dict[str, tuple[Path, dict[tuple, dict[str, Any]]]] = {}  # model -> (first file, its rows by slot)
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is not a file (expected an evaluation's per_song.csv)")
        here: dict[str, dict[tuple, dict[str, Any]]] = {}
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = {"model", *SLOT_KEYS} - set(reader.fieldnames or ())
            if missing:
                raise ValueError(f"{path} has no column(s) {sorted(missing)}: not a per_song.csv")
            for row in reader:
                if row["model"] == REAL:
                    continue
                parsed = {**row, "sample": int(row["sample"]),
                          **{key: _number(row.get(key, "")) for key, _ in PAIRED_METRICS}}
                here.setdefault(row["model"], {})[tuple(parsed[k] for k in SLOT_KEYS)] = parsed
        for model, slots in here.items():
            if model not in seen:
                seen[model] = (path, slots)
                rows.extend(slots.values())
                continue
            first, before = seen[model]
            if set(slots) != set(before) or not all(_same_values(slots[k], before[k]) for k in slots):
                raise ValueError(f"model {model!r} differs between {first} and {path}: evaluated with other "
                                 "settings (--seed, --num_seeds, structures, split) or another checkpoint, so "
                                 "their songs cannot be paired; rename one of them")
    return rows


def read_replicates(files: Sequence[tuple[str, str | Path]], rename: Mapping[str, str] | None = None
                    ) -> list[dict[str, Any]]:
    """Rows of training replicates (the same comparison retrained with other seeds), pooled.

    ``files`` pairs a replicate tag with a ``per_song.csv`` (a tag may name several
    files, read together by ``read_per_song``); ``rename`` maps each replicate's model
    names onto shared ones (``sfs_4k`` -> ``sfs``). Every slot's structure is prefixed
    with its tag, so models pair only within their replicate, while each seed song's
    differences, the interval's unit, are averaged over the replicates too: the mean
    is over training seeds and songs, the interval still over seed songs (training-seed
    spread enters only through those means; report each replicate alone as well).
    """
    rename = dict(rename or {})
    by_tag: dict[str, list[Path]] = {}
    for tag, path in files:
        if not tag or "/" in tag:
            raise ValueError(f"replicate tag {tag!r} must be a non-empty name without '/'")
        by_tag.setdefault(tag, []).append(Path(path))
    if len(by_tag) < 2:
        raise ValueError(f"replicates need at least two tags, got {sorted(by_tag)}")
    pooled: list[dict[str, Any]] = []
    for tag, paths in by_tag.items():
        rows = read_per_song(paths)
        names = {row["model"] for row in rows}
        renamed = [rename.get(name, name) for name in names]
        if len(set(renamed)) != len(renamed):
            raise ValueError(f"replicate {tag!r}: --rename gives two of its models {sorted(names)} one name")
        pooled += [{**row, "model": rename.get(row["model"], row["model"]),
                    "structure": f"{tag}/{row['structure']}"} for row in rows]
    return pooled


def _value(row: Mapping[str, Any], key: str) -> float:
    value = row.get(key)
    return math.nan if value is None else float(value)


def paired_differences(rows: Sequence[Mapping[str, Any]], baseline: str) -> list[dict[str, Any]]:
    """Per model other than ``baseline`` (and real songs): an ``Interval`` of the paired difference per metric.

    Each record holds ``model``, ``slots`` (slots both models composed) and, per metric,
    the interval over seed songs (its n counts seed songs) and ``<metric>_higher``, the
    share of paired slots where the model scores above the baseline.
    """
    by_model: dict[str, dict[tuple, Mapping[str, Any]]] = {}
    for row in rows:
        if row["model"] != REAL:
            by_model.setdefault(row["model"], {})[tuple(row[k] for k in SLOT_KEYS)] = row
    if baseline not in by_model:
        raise ValueError(f"baseline {baseline!r} is not among the evaluated models {sorted(by_model)}")
    reference = by_model[baseline]
    out = []
    for model, slots in by_model.items():
        if model == baseline:
            continue
        shared = [slot for slot in slots if slot in reference]
        record: dict[str, Any] = {"model": model, "slots": len(shared)}
        for key, _ in PAIRED_METRICS:
            per_seed: dict[str, list[float]] = {}
            for slot in shared:
                diff = _value(slots[slot], key) - _value(reference[slot], key)
                if math.isfinite(diff):
                    per_seed.setdefault(slot[1], []).append(diff)
            diffs = [d for values in per_seed.values() for d in values]
            record[key] = t_interval(float(np.mean(values)) for values in per_seed.values())
            record[f"{key}_higher"] = float(np.mean([d > 0 for d in diffs])) if diffs else math.nan
        out.append(record)
    return out


def _cell(iv: Interval, higher: float) -> str:
    if iv.n == 0:
        return "n/a"
    if iv.n == 1:
        return f"{iv.mean:+.4f} (1 seed song)"
    mark = "**" if iv.low > 0 or iv.high < 0 else ""  # the interval excludes 0
    return f"{mark}{iv.mean:+.4f} [{iv.low:+.4f}, {iv.high:+.4f}]{mark} ({higher:.0%} higher, n={iv.n})"


def paired_markdown(differences: Sequence[Mapping[str, Any]], baseline: str) -> str:
    """A table of model - baseline per metric, bold where the 95% interval excludes zero."""
    titles = ["model", "paired songs", *(title for _, title in PAIRED_METRICS)]
    lines = [f"## Paired differences to `{baseline}`", "",
             "| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    for record in differences:
        cells = [str(record["model"]), str(record["slots"])]
        cells += [_cell(record[key], record[f"{key}_higher"]) for key, _ in PAIRED_METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Cells: mean of (model - {baseline}) over the songs both composed from the same structure, "
              "seed song, sample and key; 95% Student t-interval over seed songs (each seed song's differences "
              "averaged first, n = seed songs), bold where it excludes 0 (different, not necessarily better; "
              "no correction for the many cells); then the share of paired songs where the model scores higher."]
    return "\n".join(lines)


def write_paired(out: Path, rows: Sequence[Mapping[str, Any]], baseline: str) -> str:
    """``paired.md`` and ``paired.csv`` under ``out``; returns the markdown."""
    differences = paired_differences(rows, baseline)
    markdown = paired_markdown(differences, baseline)
    out.mkdir(parents=True, exist_ok=True)
    (out / "paired.md").write_text(markdown + "\n")
    write_paired_csv(out / "paired.csv", differences, baseline)
    return markdown


def write_paired_csv(path: Path, differences: Sequence[Mapping[str, Any]], baseline: str) -> None:
    """Columns: model, baseline, slots, then ``<metric>_diff/_ci_low/_ci_high/_n/_higher``."""
    fields = ["model", "baseline", "slots"] + [f"{key}_{part}" for key, _ in PAIRED_METRICS
                                               for part in ("diff", "ci_low", "ci_high", "n", "higher")]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(fields)
        for record in differences:
            cells: list[Any] = [record["model"], baseline, record["slots"]]
            for key, _ in PAIRED_METRICS:
                iv = record[key]
                values = (iv.mean, iv.low, iv.high, iv.n, record[f"{key}_higher"])
                cells += [f"{v:.6g}" if math.isfinite(v) else "NA" for v in values]
            writer.writerow(cells)
