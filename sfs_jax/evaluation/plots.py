"""Figures of the evaluation ([7]): what the structureness indicator sees, song by song.

SI is one number per duration range; a reader checking a table wants to see why a
model scores as it does. For each example song this draws the enhanced chroma
self-similarity matrix with the song's segment boundaries (repeated segments show
as off-diagonal stripes that start at those lines) and the fitness scape plot whose
maxima over duration ranges are SI. Both come from the same functions as the
metric (``sfs_jax.evaluation.structureness``), so a picture and a number cannot disagree.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt
import numpy as np

from sfs_jax.evaluation import metrics as metrics_lib
from sfs_jax.evaluation import structureness
from sfs_jax.music import notes as notes_lib
from sfs_jax.music.pianoroll import label_colours
from sfs_jax.music.song import Song

_PANEL_INCHES = 4.6


def similarity_and_scape(song: Song) -> tuple[np.ndarray, structureness.FitnessScape]:
    """(enhanced SSM [T, T], fitness scape) at 2 Hz, computed as ``structureness_indicator`` does.

    The scape covers every length; its refinements are SI's, so the SI in a plot's
    title equals the song's SI in the tables.
    """
    chroma_Tx12 = structureness.note_chroma_10hz(np.asarray(song.notes_Nx4), song.tempo_bpm,
                                                 metrics_lib.song_seconds(song))
    ssm_TxT = structureness.self_similarity(structureness.smooth_downsample(chroma_Tx12))
    scape = structureness.fitness_scape(structureness.threshold_similarity(ssm_TxT),
                                        refine_ranges_frames=structureness.si_frame_ranges())
    return ssm_TxT, scape


def segment_times_s(song: Song) -> list[tuple[float, float, str]]:
    """(start, end, label) of every segment in seconds at the song's tempo."""
    seconds_per_bar = notes_lib.BEATS_PER_BAR * 60.0 / song.tempo_bpm
    return [(s.start_bar * seconds_per_bar, s.end_bar * seconds_per_bar, s.label) for s in song.segments]


def centred_scape(scape: structureness.FitnessScape) -> np.ndarray:
    """``[L, T]`` image of the scape plot in the usual layout: column = segment centre, row = length.

    Row l (length l + 1 frames) is the row of ``filled()`` shifted right by
    floor((l + 1) / 2), so a segment sits above its centre; cells that fit no
    segment stay NaN (the triangle's outside).
    """
    filled_LxT = scape.filled()
    n_lengths, n_frames = filled_LxT.shape
    image_LxT = np.full_like(filled_LxT, np.nan)
    for row in range(n_lengths):
        shift = (row + 1) // 2
        image_LxT[row, shift:] = filled_LxT[row, :n_frames - shift]
    return image_LxT


def _draw_ssm(ax: plt.Axes, ssm_TxT: np.ndarray, song: Song) -> None:
    rate = structureness.FEATURE_RATE_HZ
    extent = (0, len(ssm_TxT) / rate, len(ssm_TxT) / rate, 0)
    image = ax.imshow(ssm_TxT, cmap="magma", vmin=0, vmax=1, extent=extent, interpolation="nearest")
    colours = label_colours(song.segments)
    for start, _, label in segment_times_s(song):
        for line in (ax.axvline, ax.axhline):
            line(start, color="white", linewidth=0.6, alpha=0.8)
        ax.text(start, 0, label, color=colours[label], fontsize=8, fontweight="bold", va="bottom")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("time (s)")
    plt.colorbar(image, ax=ax, fraction=0.046, pad=0.04)


def _draw_scape(ax: plt.Axes, scape: structureness.FitnessScape, song: Song) -> None:
    rate = structureness.FEATURE_RATE_HZ
    image_LxT = centred_scape(scape)
    n_lengths, n_frames = image_LxT.shape
    image = ax.imshow(image_LxT, cmap="viridis", origin="lower", aspect="auto", interpolation="nearest",
                      extent=(0, n_frames / rate, 0.5 / rate, (n_lengths + 0.5) / rate))
    for start, _, _ in segment_times_s(song):
        ax.axvline(start, color="0.5", linewidth=0.5)
    for lower_s, _ in structureness.PAPER_SI_RANGES_S:  # where each SI duration range starts
        ax.axhline(lower_s, color="white", linestyle="--", linewidth=0.6)
    ax.set_title("  ".join(f"{structureness.si_key(lo, hi)}={scape.max_fitness(lo, hi):.3f}"
                           for lo, hi in structureness.PAPER_SI_RANGES_S), fontsize=8)
    ax.set_xlabel("segment centre (s)")
    ax.set_ylabel("segment duration (s)")
    plt.colorbar(image, ax=ax, fraction=0.046, pad=0.04)


def plot_structure_examples(path: str | os.PathLike, examples: Sequence[tuple[str, Song]],
                            suptitle: str = "") -> Path:
    """One row per (title, song): its SSM with segment boundaries and its fitness scape plot; saved atomically.

    The scape titles give the maxima over the SI ranges (dashed lines mark their
    lower bounds); they can differ slightly from the table's SI above 16 s, which
    refines the grid around its best cells.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(len(examples), 2, figsize=(2 * _PANEL_INCHES + 1, _PANEL_INCHES * len(examples)),
                             squeeze=False)
    for (title, song), (ax_ssm, ax_scape) in zip(examples, axes, strict=True):
        ssm_TxT, scape = similarity_and_scape(song)
        _draw_ssm(ax_ssm, ssm_TxT, song)
        ax_ssm.set_title(f"{title}\n" + " ".join(f"{s.label}{s.n_bars}" for s in song.segments), fontsize=9)
        _draw_scape(ax_scape, scape, song)
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)
    return path
