"""Context selection and crops (SFS.md section 1), on hand-made structures."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfs_jax.music.contexts import ContextSlot, context_bars, select_contexts
from sfs_jax.music.structure import Segment, parse_structure

L, R, SEED, REF = ContextSlot.LEFT, ContextSlot.RIGHT, ContextSlot.SEED, ContextSlot.REF

# Segments 0..4: A[0,4) B[4,8) A[8,12) C[12,16) B[16,20)
SONG = parse_structure("A4 B4 A4 C4 B4")


def test_each_slot_follows_its_rule() -> None:
    chosen = select_contexts(SONG, composed=[4, 0, 1], target=2)
    # LEFT: 1 ends at 8 = target start (gap 0) beats 0 (gap 4), though 0 came first.
    # RIGHT: 4 starts at 16, gap 4 (3 is not composed). SEED: first composed.
    # REF: first composed A.
    assert chosen == {L: 1, R: 4, SEED: 4, REF: 0}


def test_left_and_right_need_not_touch_the_target() -> None:
    chosen = select_contexts(SONG, composed=[0, 4], target=2)
    assert chosen[L] == 0 and chosen[R] == 4


def test_ref_is_the_first_composed_of_the_label_not_the_nearest() -> None:
    segments = parse_structure("A4 B4 A4 B4 A4")
    chosen = select_contexts(segments, composed=[0, 2, 1], target=4)
    assert chosen == {L: 2, R: None, SEED: 0, REF: 0}
    chosen = select_contexts(parse_structure("A4 A4 A4 A4"), composed=[3, 0, 2], target=1)
    assert chosen == {L: 0, R: 2, SEED: 3, REF: 3}


def test_missing_contexts_are_none() -> None:
    assert select_contexts(SONG, composed=[], target=2) == {L: None, R: None, SEED: None, REF: None}
    # Only segments on the left, none with label C.
    chosen = select_contexts(SONG, composed=[1, 0], target=3)
    assert chosen == {L: 1, R: None, SEED: 1, REF: None}
    # First segment of the song: nothing can be on its left.
    assert select_contexts(SONG, composed=[3], target=0)[L] is None


def test_target_is_never_its_own_context() -> None:
    # Regenerating segment 2 after it was composed: its old version is not a context.
    chosen = select_contexts(SONG, composed=[2, 0, 4], target=2)
    assert chosen == {L: 0, R: 4, SEED: 0, REF: 0}


# Overlapping hand-made segments create equal gaps: 0 and 1 both end at bar 4,
# 3 and 4 both start at bar 8, around the target 2 = [4, 8).
TIES = (Segment(0, 4, "A"), Segment(2, 4, "B"), Segment(4, 8, "C"), Segment(8, 12, "D"), Segment(8, 10, "E"))


@pytest.mark.parametrize("composed, left", [([0, 1], 1), ([1, 0], 0), ([3, 0, 4, 1], 1), ([1, 3, 0], 0)])
def test_left_tie_goes_to_the_most_recently_composed(composed: list[int], left: int) -> None:
    assert select_contexts(TIES, composed, target=2)[L] == left


@pytest.mark.parametrize("composed, right", [([3, 4], 3), ([4, 3], 4), ([0, 4, 1, 3], 4), ([1, 3, 4], 3)])
def test_right_tie_goes_to_the_earliest_composed(composed: list[int], right: int) -> None:
    assert select_contexts(TIES, composed, target=2)[R] == right


def test_bad_indices_raise() -> None:
    with pytest.raises(ValueError, match="target segment 9"):
        select_contexts(SONG, [0], target=9)
    with pytest.raises(ValueError, match="outside"):
        select_contexts(SONG, [0, 7], target=1)
    with pytest.raises(ValueError, match="repeat"):
        select_contexts(SONG, [0, 0], target=1)


def test_crops_keep_last_bars_of_left_first_bars_of_others() -> None:
    long = Segment(4, 16, "A")
    assert context_bars(long, L) == (8, 16)
    for slot in (R, SEED, REF, ContextSlot.PREVIOUS):
        assert context_bars(long, slot) == (4, 12)
    assert context_bars(long, L, max_bars=2) == (14, 16)
    assert context_bars(long, R, max_bars=2) == (4, 6)
    short = Segment(4, 8, "A")
    assert all(context_bars(short, slot) == (4, 8) for slot in (L, R, SEED, REF))
    with pytest.raises(ValueError):
        context_bars(long, ContextSlot.PAD)


def test_offset_crops_start_inside_the_segment_as_far_as_a_full_crop_allows() -> None:
    long = Segment(4, 16, "A")
    assert context_bars(long, REF, offset_bars=3) == (7, 15)
    assert context_bars(long, REF, offset_bars=6) == (8, 16)  # a full 8-bar crop, not (10, 16)
    assert context_bars(long, REF, max_bars=4, offset_bars=5) == (9, 13)
    assert context_bars(Segment(4, 8, "A"), REF, offset_bars=3) == (4, 8)  # shorter than a crop: all of it
    assert context_bars(long, L, offset_bars=3) == (8, 16)  # LEFT always ends at the segment's end
    with pytest.raises(ValueError, match="offset_bars"):
        context_bars(long, REF, offset_bars=-1)


@st.composite
def _structure_and_order(draw: st.DrawFn) -> tuple[list[Segment], list[int], int]:
    lengths = draw(st.lists(st.integers(1, 12), min_size=1, max_size=9))
    labels = draw(st.lists(st.sampled_from("ABC"), min_size=len(lengths), max_size=len(lengths)))
    segments, bar = [], 0
    for label, n in zip(labels, lengths, strict=True):
        segments.append(Segment(bar, bar + n, label))
        bar += n
    order = draw(st.permutations(range(len(segments))))
    t = draw(st.integers(0, len(segments) - 1))
    return segments, list(order[:t]), order[t]


@settings(max_examples=200, deadline=None)
@given(_structure_and_order())
def test_random_structures_satisfy_every_rule(case: tuple[list[Segment], list[int], int]) -> None:
    segments, composed, target = case
    chosen = select_contexts(segments, composed, target)
    tgt = segments[target]
    assert all(i is None or i in composed for i in chosen.values())
    left_gaps = [tgt.start_bar - segments[i].end_bar
                 for i in composed if segments[i].end_bar <= tgt.start_bar]
    right_gaps = [segments[i].start_bar - tgt.end_bar
                  for i in composed if segments[i].start_bar >= tgt.end_bar]
    if left_gaps:
        assert tgt.start_bar - segments[chosen[L]].end_bar == min(left_gaps)
    else:
        assert chosen[L] is None
    if right_gaps:
        assert segments[chosen[R]].start_bar - tgt.end_bar == min(right_gaps)
    else:
        assert chosen[R] is None
    assert chosen[SEED] == (composed[0] if composed else None)
    same = [i for i in composed if segments[i].label == tgt.label]
    assert chosen[REF] == (same[0] if same else None)
