"""Which composed segments condition a target segment, and which of their bars (SFS.md section 1).

Place in the data flow: [4] the training example builder (``sfs_jax.data.examples``)
and [6] the composer both call ``select_contexts`` and ``context_bars``. Keeping the
one copy here means the contexts the model sees in training are, rule for rule, the
ones it is given when it generates; a drift between the two would be a silent
train/test mismatch.

Only segments composed before the target are candidates: the factorization
p(song) = prod_i p(Seg_i | Left_i, Right_i, Seed_i, Ref_i, ...) conditions each
segment on earlier ones in compose order, never on later ones.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from sfs_jax.music.structure import Segment

DEFAULT_CONTEXT_BARS = 8


class ContextSlot(enum.IntEnum):
    """Role of a context; the model adds one learned slot-type embedding per value.

    PAD is 0 so zero-filled batch padding reads as "no context". PREVIOUS marks any
    other composed segment in the ``all_previous`` ablation.
    """

    PAD = 0
    LEFT = 1
    RIGHT = 2
    SEED = 3
    REF = 4
    PREVIOUS = 5


# The four SFS slots in the order their tokens are concatenated.
SFS_SLOTS = (ContextSlot.LEFT, ContextSlot.RIGHT, ContextSlot.SEED, ContextSlot.REF)


def _candidates(segments: Sequence[Segment], composed: Sequence[int], target: int) -> list[int]:
    """Composed segment indices, earliest composed first, without the target itself.

    The target is left out so that regenerating an already composed segment (SFS.md
    section 1: "regenerate any segment later") never conditions on its old version.
    """
    if not 0 <= target < len(segments):
        raise ValueError(f"target segment {target} outside 0..{len(segments) - 1}")
    bad = [i for i in composed if not 0 <= i < len(segments)]
    if bad:
        raise ValueError(f"composed segment index {bad[0]} outside 0..{len(segments) - 1}")
    if len(set(composed)) != len(composed):
        raise ValueError(f"composed segments {list(composed)} repeat an index")
    return [int(i) for i in composed if i != target]


def _left(segments: Sequence[Segment], candidates: list[int], target: Segment) -> int | None:
    """Smallest gap between a candidate's end and the target's start; ties: latest composed."""
    before = [(target.start_bar - segments[i].end_bar, -rank, i)
              for rank, i in enumerate(candidates) if segments[i].end_bar <= target.start_bar]
    return min(before)[2] if before else None


def _right(segments: Sequence[Segment], candidates: list[int], target: Segment) -> int | None:
    """Smallest gap between the target's end and a candidate's start; ties: earliest composed."""
    after = [(segments[i].start_bar - target.end_bar, rank, i)
             for rank, i in enumerate(candidates) if segments[i].start_bar >= target.end_bar]
    return min(after)[2] if after else None


def select_contexts(segments: Sequence[Segment], composed: Sequence[int],
                    target: int) -> dict[ContextSlot, int | None]:
    """The segment index filling each SFS slot for ``target``, or None when the slot is empty.

    ``composed`` lists the already composed segment indices in compose order, earliest
    first (the order matters for Seed, Ref and both tie-breaks). Rules, SFS.md section 1:

    - LEFT: composed segment ending at or before the target's start with the smallest
      gap (it need not touch the target); ties go to the most recently composed.
    - RIGHT: composed segment starting at or after the target's end with the smallest
      gap; ties go to the earliest composed.
    - SEED: the first composed segment (the theme).
    - REF: the first composed segment with the target's label.

    One segment may fill several slots (e.g. the seed is also the left neighbour):
    the paper encodes each slot on its own, so the duplicate is kept.
    """
    candidates = _candidates(segments, composed, target)
    target_segment = segments[target]
    same_label = [i for i in candidates if segments[i].label == target_segment.label]
    return {
        ContextSlot.LEFT: _left(segments, candidates, target_segment),
        ContextSlot.RIGHT: _right(segments, candidates, target_segment),
        ContextSlot.SEED: candidates[0] if candidates else None,
        ContextSlot.REF: same_label[0] if same_label else None,
    }


def context_bars(segment: Segment, slot: ContextSlot, max_bars: int = DEFAULT_CONTEXT_BARS,
                 offset_bars: int = 0) -> tuple[int, int]:
    """Song bars [start_bar, end_bar) of ``segment`` that a context in ``slot`` shows.

    SFS.md section 1 crops every context to 8 bars: LEFT keeps its last bars, the
    ones nearest the target that follows it; every other slot (RIGHT, SEED, REF,
    PREVIOUS) keeps its first bars, where a section states its material.

    ``offset_bars`` (not LEFT) starts the crop that many bars into the segment, as far
    as the segment allows a full crop: the aligned REF crop (``ExampleConfig.ref_crop``)
    shows the bars of the same material that a window starting ``offset_bars`` into
    its own segment is writing, instead of the first bars only.
    """
    if max_bars < 1:
        raise ValueError(f"max_bars must be >= 1, got {max_bars}")
    if offset_bars < 0:
        raise ValueError(f"offset_bars must be >= 0, got {offset_bars}")
    if slot == ContextSlot.PAD:
        raise ValueError("a PAD slot has no bars")
    if slot == ContextSlot.LEFT:
        return max(segment.start_bar, segment.end_bar - max_bars), segment.end_bar
    start = segment.start_bar + min(offset_bars, max(segment.n_bars - max_bars, 0))
    return start, min(segment.end_bar, start + max_bars)
