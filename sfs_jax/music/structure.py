"""Song structures: ``"A8 B8 A8 C4"`` <-> segments, and the default compose order.

Place in the data flow: [2] the segmentation stages write structures, the TFDS
builder stores them, the example builder and the sampler read them to pick
contexts (SFS.md section 1). One parser and one validator serve all of them so a
structure that trains is exactly a structure that generates.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import numpy as np

MAX_SONG_BARS = 200
# ASCII digits only ("A\u0668" is not 8 bars), at most 6 (no song has a million bars; int() of
# thousands of digits is refused by Python itself).
_TOKEN_RE = re.compile(r"([A-Za-z])([0-9]{1,6})", re.ASCII)


class StructureError(ValueError):
    """An impossible song structure (unparsable, empty, zero-length, too long)."""


@dataclasses.dataclass(frozen=True)
class Segment:
    """Bars [start_bar, end_bar) of a song sharing material with same-label segments."""

    start_bar: int
    end_bar: int
    label: str

    @property
    def n_bars(self) -> int:
        return self.end_bar - self.start_bar


def parse_structure(text: str, max_bars: int = MAX_SONG_BARS) -> tuple[Segment, ...]:
    """Parses ``"A8 B8 A8 C4"`` or ``"A8B8A8C4"`` into consecutive segments from bar 0.

    Labels are single letters (case kept: POP909 uses lower case for non-melodic
    phrases). Raises StructureError naming the offending part.
    """
    compact = re.sub(r"[\s,]+", "", text or "")
    if not compact:
        raise StructureError("empty structure: expected something like 'A8 B8 A8 C4'")
    pos, lengths = 0, []
    for match in _TOKEN_RE.finditer(compact):
        if match.start() != pos:
            raise StructureError(f"cannot parse {compact[pos:match.start()]!r} in structure {text!r}")
        lengths.append((match.group(1), int(match.group(2))))
        pos = match.end()
    if pos != len(compact):
        raise StructureError(f"cannot parse {compact[pos:]!r} in structure {text!r}: "
                             "each segment is a letter followed by its length in bars")
    return segments_from_lengths(lengths, max_bars=max_bars)


def segments_from_lengths(label_lengths: Sequence[tuple[str, int]],
                          max_bars: int = MAX_SONG_BARS) -> tuple[Segment, ...]:
    """Lays (label, n_bars) pairs end to end from bar 0, validating each."""
    segments, bar = [], 0
    for index, (label, n_bars) in enumerate(label_lengths):
        if n_bars <= 0:
            raise StructureError(f"segment {index} ({label}{n_bars}) has zero length")
        segments.append(Segment(bar, bar + int(n_bars), str(label)))
        bar += int(n_bars)
    if not segments:
        raise StructureError("a structure needs at least one segment")
    if bar > max_bars:
        raise StructureError(f"structure has {bar} bars, more than the limit of {max_bars}")
    return tuple(segments)


def format_structure(segments: Sequence[Segment]) -> str:
    """Inverse of parse_structure for contiguous segments from bar 0: ``"A8 B8"``."""
    return " ".join(f"{s.label}{s.n_bars}" for s in segments)


def validate_segments(segments: Sequence[Segment], n_bars: int) -> None:
    """Checks segments tile bars [0, n_bars) exactly, in order, without gaps."""
    bar = 0
    for index, seg in enumerate(segments):
        if seg.start_bar != bar or seg.end_bar <= seg.start_bar:
            raise StructureError(f"segment {index} {seg} does not continue from bar {bar}")
        bar = seg.end_bar
    if bar != n_bars:
        raise StructureError(f"segments cover {bar} bars but the song has {n_bars}")


def _most_central_of_label(segments: Sequence[Segment], label: str, center_bar: float) -> int:
    """Index of the segment with this label whose start is closest to the song's middle."""
    candidates = [i for i, s in enumerate(segments) if s.label == label]
    return min(candidates, key=lambda i: (abs(segments[i].start_bar - center_bar), i))


def default_compose_order(segments: Sequence[Segment], rng: np.random.Generator) -> list[int]:
    """SFS.md section 1: seed of the top label, then of the second label, then random.

    Labels are ranked by bars covered (ties: first appearance). The original skipped
    the second step when there were exactly two labels; here it applies whenever
    there are at least two labels.
    """
    if not segments:
        return []
    center = sum(s.n_bars for s in segments) / 2.0
    bars_by_label: dict[str, int] = {}
    for seg in segments:
        bars_by_label[seg.label] = bars_by_label.get(seg.label, 0) + seg.n_bars
    first_seen = {label: i for i, label in reversed(list(enumerate(s.label for s in segments)))}
    ranked = sorted(bars_by_label, key=lambda lab: (-bars_by_label[lab], first_seen[lab]))
    order = [_most_central_of_label(segments, ranked[0], center)]
    if len(ranked) >= 2:
        order.append(_most_central_of_label(segments, ranked[1], center))
    rest = [i for i in range(len(segments)) if i not in order]
    order.extend(int(rest[i]) for i in rng.permutation(len(rest)))
    return order


def validate_compose_order(order: Sequence[int], n_segments: int) -> list[int]:
    """A compose order must be a permutation of the segment indices."""
    order = [int(i) for i in order]
    bad = [i for i in order if not 0 <= i < n_segments]
    if bad:
        raise StructureError(f"compose order names segment index {bad[0]}, "
                             f"but the structure has segments 0..{n_segments - 1}")
    if sorted(order) != list(range(n_segments)):
        raise StructureError(f"compose order {order} is not a permutation of 0..{n_segments - 1}")
    return order
