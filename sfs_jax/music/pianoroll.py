"""A piano-roll PNG of a song with one labelled band per segment ([7] outputs).

Musicians check a generated song's form at a glance: same-label segments get the
same colour, the seed segment is hatched, bar lines are drawn every bar and
labelled every four.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.collections import PolyCollection

from sfs_jax.music import notes as notes_lib
from sfs_jax.music.structure import Segment

_COLOURS = plt.get_cmap("tab10").colors


def label_colours(segments: Sequence[Segment]) -> dict[str, tuple]:
    """One colour per label, in order of first appearance."""
    labels = list(dict.fromkeys(s.label for s in segments))
    return {label: _COLOURS[i % len(_COLOURS)] for i, label in enumerate(labels)}


def write_pianoroll(path: str | os.PathLike, notes_Nx4: np.ndarray, n_bars: int,
                    segments: Sequence[Segment] = (), seed_segment: int | None = None,
                    title: str = "") -> Path:
    """Draws notes as bars over the segment bands and saves a PNG (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    colours = label_colours(segments)
    width = min(max(8.0, n_bars * 0.25), 40.0)
    fig, ax = plt.subplots(figsize=(width, 4.5), dpi=100)
    lo, hi = notes_lib.MIN_PITCH, notes_lib.MAX_PITCH
    if len(notes_Nx4):
        lo = max(notes_lib.MIN_PITCH, int(notes_Nx4[:, notes_lib.PITCH].min()) - 3)
        hi = min(notes_lib.MAX_PITCH, int(notes_Nx4[:, notes_lib.PITCH].max()) + 3)
    for index, seg in enumerate(segments):
        ax.axvspan(seg.start_bar, seg.end_bar, color=colours[seg.label], alpha=0.15,
                   hatch="//" if index == seed_segment else None, linewidth=0)
        name = seg.label + (" (seed)" if index == seed_segment else "")
        ax.text((seg.start_bar + seg.end_bar) / 2, hi + 0.5, name, ha="center", va="bottom", fontsize=9,
                color=colours[seg.label], fontweight="bold")
    if len(notes_Nx4):
        onset_bars = notes_Nx4[:, notes_lib.ONSET] / notes_lib.FRAMES_PER_BAR
        length_bars = notes_Nx4[:, notes_lib.DURATION] / notes_lib.FRAMES_PER_BAR
        pitch = notes_Nx4[:, notes_lib.PITCH].astype(float)
        end_bars = onset_bars + length_bars
        low, high = pitch - 0.4, pitch + 0.4
        corners = [(onset_bars, low), (end_bars, low), (end_bars, high), (onset_bars, high)]
        boxes = np.stack([np.stack(corner, 1) for corner in corners], 1)
        shade = notes_Nx4[:, notes_lib.VELOCITY] / 127.0
        ax.add_collection(PolyCollection(boxes, facecolors=plt.get_cmap("Greys")(0.35 + 0.65 * shade),
                                         edgecolors="none"))
    for bar in range(n_bars + 1):
        ax.axvline(bar, color="0.75" if bar % 4 else "0.45", linewidth=0.4 if bar % 4 else 0.8, zorder=0)
    ax.set_xlim(0, max(n_bars, 1))
    ax.set_ylim(lo - 0.5, hi + 3)
    ax.set_xticks(range(0, n_bars + 1, 4))
    ax.set_xlabel("bar")
    ax.set_ylabel("MIDI pitch")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path
