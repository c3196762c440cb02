"""Structure strings, validation and the default compose order (SFS.md section 1)."""

import numpy as np
import pytest

from sfs_jax.music import structure as S


def test_parse_spaced_and_compact_forms_agree() -> None:
    spaced = S.parse_structure("A8 B8 A8 C4")
    assert spaced == S.parse_structure("A8B8A8C4")
    assert [(s.start_bar, s.end_bar, s.label) for s in spaced] == [
        (0, 8, "A"), (8, 16, "B"), (16, 24, "A"), (24, 28, "C")]
    assert S.format_structure(spaced) == "A8 B8 A8 C4"


@pytest.mark.parametrize("text, message", [
    ("", "empty"), ("A0 B8", "zero length"), ("A8 B", "cannot parse"), ("8A", "cannot parse"),
    ("A100 B101", "more than the limit"), ("A8 ?4", "cannot parse")])
def test_impossible_structures_raise_clear_errors(text: str, message: str) -> None:
    with pytest.raises(S.StructureError, match=message):
        S.parse_structure(text)


def test_compose_order_seeds_top_label_then_second_label() -> None:
    segments = S.parse_structure("A8 B8 A8 B8 C4 A8")
    for seed in range(5):
        order = S.default_compose_order(segments, np.random.default_rng(seed))
        # A covers 24 bars; middle is bar 22; the A starting at 16 is closest.
        assert order[:2] == [2, 1] or order[:2] == [2, 3]
        assert sorted(order) == list(range(len(segments)))


def test_compose_order_with_exactly_two_labels_keeps_second_step() -> None:
    # The original skipped the second label's seed when there were exactly two labels.
    segments = S.parse_structure("A8 B4 A8 B4 A8")
    order = S.default_compose_order(segments, np.random.default_rng(0))
    assert segments[order[0]].label == "A" and segments[order[1]].label == "B"


def test_compose_order_is_seeded() -> None:
    segments = S.parse_structure("A4 B4 C4 D4 E4 F4 G4")
    orders = [S.default_compose_order(segments, np.random.default_rng(7)) for _ in range(2)]
    assert orders[0] == orders[1]


def test_validate_compose_order() -> None:
    assert S.validate_compose_order([1, 0], 2) == [1, 0]
    with pytest.raises(S.StructureError, match="index 5"):
        S.validate_compose_order([0, 5], 2)
    with pytest.raises(S.StructureError, match="permutation"):
        S.validate_compose_order([0, 0], 2)


def test_validate_segments_finds_gaps() -> None:
    with pytest.raises(S.StructureError, match="does not continue"):
        S.validate_segments([S.Segment(0, 4, "A"), S.Segment(5, 8, "B")], 8)
    with pytest.raises(S.StructureError, match="song has 9"):
        S.validate_segments([S.Segment(0, 8, "A")], 9)
