"""The build report: what was kept, what was skipped and why, and what the data looks like.

Every build prints it and writes ``build_report.json`` and ``build_report.md`` next
to the dataset, so a researcher can see at a glance how many songs aligned, how
long bars are in tokens (which sizes the model's buckets) and which files failed.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from data_pipeline.sources import Outcome
from sfs_jax.music import notes as notes_lib

REPORT_JSON = "build_report.json"
REPORT_MARKDOWN = "build_report.md"


def _quantiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    arr = np.asarray(values, np.float64)
    return {"mean": float(arr.mean()), "p5": float(np.percentile(arr, 5)),
            "p50": float(np.percentile(arr, 50)), "p99": float(np.percentile(arr, 99))}


def build_report(config_name: str, outcomes: Iterable[Outcome], seconds: float) -> dict[str, Any]:
    """Summarizes every outcome of a build into one JSON-able dict."""
    outcomes = list(outcomes)
    kept = [o for o in outcomes if o.song is not None]
    skipped = [o for o in outcomes if o.song is None]
    norm = notes_lib.NormalizationStats()
    tokens_per_bar, segment_bars, labels_per_song = [], [], []
    label_sources, splits = collections.Counter(), collections.Counter()
    warnings = []
    for outcome in kept:
        song = outcome.song
        norm.add(outcome.stats)
        # Target form: one FRAME token per frame plus one compound token per note.
        notes_per_bar = np.bincount(song.notes_Nx4[:, notes_lib.ONSET] // notes_lib.FRAMES_PER_BAR,
                                    minlength=song.n_bars)
        tokens_per_bar.extend((notes_per_bar + notes_lib.FRAMES_PER_BAR).tolist())
        segment_bars.extend(s.n_bars for s in song.segments)
        labels_per_song.append(len({s.label for s in song.segments}))
        label_sources[song.label_source] += 1
        splits[outcome.split] += 1
        changed = {k: v for k, v in dataclasses.asdict(outcome.stats).items() if v}
        if changed:
            warnings.append({"file": outcome.source_file or outcome.song_id, **changed})
    report: dict[str, Any] = {
        "config": config_name,
        "seconds": round(seconds, 2),
        "songs_seen": len(outcomes),
        "songs_kept": len(kept),
        "songs_per_second": round(len(outcomes) / max(seconds, 1e-9), 1),
        "splits": dict(sorted(splits.items())),
        "skipped_by_reason": dict(collections.Counter(o.skip_reason for o in skipped).most_common()),
        "skipped": [{"file": o.source_file or o.song_id, "reason": o.skip_reason, "detail": o.skip_detail}
                    for o in skipped],
        "bars": int(sum(o.song.n_bars for o in kept)),
        "notes": int(sum(len(o.song.notes_Nx4) for o in kept)),
        "tokens_per_bar": _quantiles(tokens_per_bar),
        "label_sources": dict(label_sources),
        "segments": len(segment_bars),
        "segment_bars": _quantiles(segment_bars),
        "segment_bars_histogram": dict(sorted(collections.Counter(segment_bars).items())),
        "distinct_labels_per_song": _quantiles(labels_per_song),
        "normalization": dataclasses.asdict(norm),
        "kept_with_changes": warnings,
    }
    matches = [o.extras["melody_match"] for o in kept if "melody_match" in o.extras]
    if matches:
        report["alignment"] = {
            "songs_aligned": int(sum(o.song.label_source == "human" for o in kept)),
            "songs_auto_fallback": int(sum(o.song.label_source == "auto" for o in kept)),
            "min_match": 0.9,
            "melody_match": _quantiles(matches),
            "notes_outside_labels": int(sum(o.extras.get("notes_outside_labels", 0) for o in kept)),
        }
    varying = [{"file": o.source_file or o.song_id, "tempo_bpm": round(o.song.tempo_bpm, 3),
                "tempo_span_bpm": o.extras["tempo_span_bpm"]} for o in kept if "tempo_span_bpm" in o.extras]
    if varying:
        report["tempo_varies"] = varying
    scores = [o.extras["auto_vs_human"] for o in kept if "auto_vs_human" in o.extras]
    if scores:
        report["auto_segmentation_vs_human"] = {
            key: round(float(np.mean([s[key] for s in scores])), 4) for key in scores[0]}
        report["auto_segmentation_vs_human"]["songs"] = len(scores)
    return report


def to_markdown(report: dict[str, Any]) -> str:
    """A short human-readable version of the report (the README quotes it)."""
    lines = [f"# sfs_songs/{report['config']} build report", "",
             f"- songs: {report['songs_kept']} kept of {report['songs_seen']} "
             f"({report['seconds']} s, {report['songs_per_second']} songs/s)",
             f"- splits: {report['splits']}",
             f"- skipped by reason: {report['skipped_by_reason'] or 'none'}",
             f"- bars: {report['bars']}, notes: {report['notes']}",
             f"- tokens per bar: mean {report['tokens_per_bar'].get('mean', 0):.1f}, "
             f"p99 {report['tokens_per_bar'].get('p99', 0):.0f}",
             f"- label sources: {report['label_sources']}",
             f"- segments: {report['segments']}, bars per segment: "
             f"{ {k: round(v, 1) for k, v in report['segment_bars'].items()} }",
             f"- normalization: {report['normalization']}"]
    if "alignment" in report:
        a = report["alignment"]
        lines.append(f"- alignment: {a['songs_aligned']} songs aligned with >= {a['min_match']:.0%} "
                     f"matching melody onsets, {a['songs_auto_fallback']} fell back to automatic "
                     f"labels; match rate {({k: round(v, 3) for k, v in a['melody_match'].items()})}")
    if "auto_segmentation_vs_human" in report:
        lines.append(f"- automatic vs human labels: {report['auto_segmentation_vs_human']}")
    if report.get("tempo_varies"):
        lines.append(f"- tempo changes by more than 10% in {len(report['tempo_varies'])} songs (kept at their tempo "
                     f"at the first note): " + ", ".join(v["file"] for v in report["tempo_varies"][:10]))
    if report["skipped"]:
        lines += ["", "| skipped file | reason | detail |", "|---|---|---|"]
        lines += [f"| {s['file']} | {s['reason']} | {s['detail'][:80]} |" for s in report["skipped"]]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], folder: str | Path) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / REPORT_JSON).write_text(json.dumps(report, indent=2))
    (folder / REPORT_MARKDOWN).write_text(to_markdown(report))
