r"""Structureness indicator: speed on a 4-minute song, and the long-segment grid's error on real songs.

    python -m benchmarks.structureness [--runs=5] [--minutes=4] [--tempo_bpm=120]
        [--dataset_dir=runs/pop909/tfds/sfs_songs/pop909/1.0.0 --split=test --songs=20]

Speed. The song: synthetic songs 0, 1, 2, ... of corpus 0 played back to back at one
tempo and cut at exactly ``minutes`` (4 min: T = 481 frames at 2 Hz). Both timings are
the median of ``runs`` runs after one warm-up, wall clock and process CPU time (the
fairer number on a shared machine). "SSM" is stages 1-4 (chroma, smoothing, enhanced
SSM, threshold); "SI" the whole ``structureness_indicator``. Goal: at most 2 s of CPU.

Error. SI with the default ``ScapeGrid`` (segments of 33 frames or more on a grid,
refined around its best cells) against the exact scape plot (every segment up to 256
frames, tens of seconds per song), on ``songs`` songs of a built dataset's split
(first ones in order), or, without ``--dataset_dir``, on medleys of 2 to 5 minutes.
Goal: every range within 0.001 of exact.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import scipy

from data_pipeline.synthetic import generate_song
from sfs_jax.evaluation import structureness
from sfs_jax.music.notes import BEATS_PER_BAR, FRAMES_PER_BAR, ONSET

GOAL_SECONDS = 2.0
ERROR_GOAL = 0.001


def medley(minutes: float, tempo_bpm: float) -> np.ndarray:
    """Synthetic songs back to back until ``minutes`` at ``tempo_bpm``; notes [N, 4]."""
    bars_needed = int(np.ceil(minutes * tempo_bpm / BEATS_PER_BAR))
    parts, bar, index = [], 0, 0
    while bar < bars_needed:
        song = generate_song(0, index)
        notes = song.notes_Nx4.astype(np.int64)
        notes[:, ONSET] += bar * FRAMES_PER_BAR
        parts.append(notes)
        bar, index = bar + song.n_bars, index + 1
    notes = np.concatenate(parts)
    return notes[notes[:, ONSET] < bars_needed * FRAMES_PER_BAR].astype(np.int32)


def timed(fn: Callable[[], object], runs: int) -> tuple[float, float, object]:
    """(median wall s, median CPU s, last result) over ``runs`` runs after one warm-up."""
    result = fn()
    walls, cpus = [], []
    for _ in range(runs):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus), result


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def error_songs(args: argparse.Namespace) -> list[tuple[str, np.ndarray, float, float]]:
    """(name, notes, tempo, duration) of the songs the grid's error is measured on."""
    if args.dataset_dir:
        from sfs_jax.evaluation.metrics import song_seconds
        from sfs_jax.training import tasks
        songs = tasks.load_songs(args.dataset_dir, args.split)[:args.songs]
        return [(s.song_id, np.asarray(s.notes_Nx4), s.tempo_bpm, song_seconds(s)) for s in songs]
    minutes = np.linspace(2.0, 5.0, args.songs)
    return [(f"medley {m:.2f} min", medley(m, args.tempo_bpm), args.tempo_bpm, m * 60.0) for m in minutes]


def grid_error(args: argparse.Namespace) -> None:
    """Prints, per song and range, exact SI, the default grid's SI, and the gap; then the worst gap."""
    ranges = structureness.PAPER_SI_RANGES_S
    keys = [structureness.si_key(lo, hi) for lo, hi in ranges]
    top = max(hi for _, hi in structureness.si_frame_ranges(ranges))
    worst = dict.fromkeys(keys, 0.0)
    print(f"\ngrid error: {structureness.ScapeGrid()} vs every segment up to {top} frames")
    print(f"  {'song':<22} {'T':>4}  " + "  ".join(f"{k + ' exact':>14} {'gap':>8}" for k in keys) + "  exact s")
    for name, notes, tempo, duration in error_songs(args):
        chroma_Tx12 = structureness.note_chroma_10hz(notes, tempo, duration)
        ssm_TxT = structureness.thresholded_ssm_from_chroma(chroma_Tx12)
        n_frames = len(ssm_TxT)
        approx = structureness.si_from_chroma(chroma_Tx12, ranges)
        start = time.process_time()
        exact_scape = structureness.fitness_scape(ssm_TxT, grid=structureness.ScapeGrid.exact(n_frames),
                                                  max_length=top)
        seconds = time.process_time() - start
        cells = []
        for (lo, hi), key in zip(ranges, keys, strict=True):
            exact = exact_scape.max_fitness(lo, hi)
            gap = exact - approx[key]
            worst[key] = max(worst[key], gap)
            cells.append(f"{exact:14.4f} {gap:8.5f}")
        print(f"  {name:<22} {n_frames:4d}  " + "  ".join(cells) + f"  {seconds:7.1f}", flush=True)
    print("worst gap (exact - grid): " + ", ".join(f"{k} {v:.5f}" for k, v in worst.items()))
    verdict = "met" if max(worst.values()) <= ERROR_GOAL else "NOT met"
    print(f"goal: every range within {ERROR_GOAL:g} of exact: {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--tempo_bpm", type=float, default=120.0)
    parser.add_argument("--dataset_dir", default="", help="built dataset whose songs measure the grid's error")
    parser.add_argument("--split", default="test")
    parser.add_argument("--songs", type=int, default=6, help="songs for the error measurement (0: none)")
    args = parser.parse_args()

    duration_s = args.minutes * 60.0
    notes = medley(args.minutes, args.tempo_bpm)
    config = structureness.SSMConfig()

    def build_ssm() -> np.ndarray:
        return structureness.thresholded_ssm_from_chroma(
            structureness.note_chroma_10hz(notes, args.tempo_bpm, duration_s), config)

    def indicator() -> dict[str, float]:
        return structureness.structureness_indicator(notes, args.tempo_bpm, duration_s, config=config)

    ssm_wall, ssm_cpu, ssm_TxT = timed(build_ssm, args.runs)
    si_wall, si_cpu, si = timed(indicator, args.runs)

    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}, "
          f"load average {os.getloadavg()[0]:.2f} (1 min)")
    print(f"python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}")
    print(f"song: {len(notes)} notes, {args.minutes:g} min at {args.tempo_bpm:g} bpm -> T = {len(ssm_TxT)} frames at "
          f"{structureness.FEATURE_RATE_HZ:g} Hz; {config}")
    print(f"median of {args.runs} runs after 1 warm-up   wall (s)   CPU (s)")
    print(f"  SSM only (stages 1-4)             {ssm_wall:8.3f}  {ssm_cpu:8.3f}")
    print(f"  structureness_indicator (SI)      {si_wall:8.3f}  {si_cpu:8.3f}")
    print(f"  ratio SI / SSM                    {si_wall / ssm_wall:8.2f}  {si_cpu / ssm_cpu:8.2f}")
    print("  " + ", ".join(f"{key} = {value:.4f}" for key, value in si.items()))
    verdict = "met" if si_cpu <= GOAL_SECONDS else "NOT met"
    print(f"goal: SI of a {args.minutes:g}-minute song <= {GOAL_SECONDS:g} s CPU: {verdict} ({si_cpu:.3f} s)")
    if args.songs > 0:
        grid_error(args)


if __name__ == "__main__":
    main()
