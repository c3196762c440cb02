r"""Structureness indicator speed: SI of a 4-minute song vs building its SSM alone.

    python -m benchmarks.structureness [--runs=5] [--minutes=4] [--tempo_bpm=120]

The song: synthetic songs 0, 1, 2, ... of corpus 0 played back to back at one tempo
and cut at exactly ``minutes`` (4 min at 2 Hz: T = 480 chroma frames). Both timings
are the median of ``runs`` runs after one warm-up, wall clock and process CPU time
(the CPU time is the fairer number on a shared machine). "SSM" is chroma +
enhanced self-similarity + thresholding; "SI" is the whole
``structureness_indicator`` (SSM + fitness scape plot + refinement + the three
paper ranges). Goal: SI of a 4-minute song in at most 2 s on the project's CPU.
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
from sfs_jax.evaluation import metrics
from sfs_jax.music.notes import BEATS_PER_BAR, FRAMES_PER_BAR, ONSET

GOAL_SECONDS = 2.0


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--tempo_bpm", type=float, default=120.0)
    args = parser.parse_args()

    duration_s = args.minutes * 60.0
    notes = medley(args.minutes, args.tempo_bpm)
    n_frames = int(np.ceil(duration_s * metrics.FEATURE_RATE_HZ))
    config = metrics.SSMConfig()

    def build_ssm() -> np.ndarray:
        chroma_Tx12 = metrics.chroma_2hz(notes, args.tempo_bpm, n_frames=n_frames)
        return metrics.threshold_similarity(metrics.self_similarity(chroma_Tx12, config), config)

    def indicator() -> dict[str, float]:
        return metrics.structureness_indicator(notes, args.tempo_bpm, duration_s=duration_s, config=config)

    ssm_wall, ssm_cpu, _ = timed(build_ssm, args.runs)
    si_wall, si_cpu, si = timed(indicator, args.runs)

    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}, "
          f"load average {os.getloadavg()[0]:.2f} (1 min)")
    print(f"python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}")
    print(f"song: {len(notes)} notes, {args.minutes:g} min at {args.tempo_bpm:g} bpm -> T = {n_frames} frames at "
          f"{metrics.FEATURE_RATE_HZ:g} Hz; SSM {config}")
    print(f"median of {args.runs} runs after 1 warm-up   wall (s)   CPU (s)")
    print(f"  SSM only (chroma+SSM+threshold)   {ssm_wall:8.3f}  {ssm_cpu:8.3f}")
    print(f"  structureness_indicator (SI)      {si_wall:8.3f}  {si_cpu:8.3f}")
    print(f"  ratio SI / SSM                    {si_wall / ssm_wall:8.2f}  {si_cpu / ssm_cpu:8.2f}")
    print("  " + ", ".join(f"{key} = {value:.4f}" for key, value in si.items()))
    verdict = "met" if si_wall <= GOAL_SECONDS else "NOT met"
    print(f"goal: SI of a {args.minutes:g}-minute song <= {GOAL_SECONDS:g} s wall: {verdict} ({si_wall:.3f} s)")


if __name__ == "__main__":
    main()
