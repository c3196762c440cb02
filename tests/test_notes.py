"""normalize_notes: the canonical form every later stage relies on."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sfs_jax.music import notes as notes_lib


def test_fold_pitch_moves_by_octaves_into_piano_range() -> None:
    folded = notes_lib.fold_pitch_into_range(np.array([0, 20, 21, 108, 109, 127]))
    np.testing.assert_array_equal(folded, [24, 32, 21, 108, 97, 103])


def test_normalize_merges_duplicates_and_cuts_same_pitch_overlap() -> None:
    notes = np.array([[0, 60, 50, 8], [0, 60, 90, 4], [4, 60, 70, 8], [2, 64, 70, 0], [-3, 60, 70, 4]])
    out, stats = notes_lib.normalize_notes(notes)
    # duplicate at (0, 60): the longest (8 frames) wins, then it is cut at the next onset (4).
    np.testing.assert_array_equal(out, [[0, 60, 50, 4], [2, 64, 70, 1], [4, 60, 70, 8]])
    assert stats.duplicates_removed == 1
    assert stats.zero_length_fixed == 1
    assert stats.overlaps_truncated == 1


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 300), st.integers(0, 127), st.integers(0, 127),
                          st.integers(0, 120)), max_size=60))
def test_normalize_is_idempotent_and_canonical(rows) -> None:
    notes = np.array(rows, np.int64).reshape(-1, 4)
    out, _ = notes_lib.normalize_notes(notes)
    again, stats = notes_lib.normalize_notes(out)
    np.testing.assert_array_equal(out, again)
    assert stats == notes_lib.NormalizationStats()
    if len(out):
        assert out[:, 1].min() >= notes_lib.MIN_PITCH and out[:, 1].max() <= notes_lib.MAX_PITCH
        assert (out[:, 3] >= 1).all() and (out[:, 2] >= 1).all()
        keys = out[:, 0] * 1000 + out[:, 1]
        assert (np.diff(keys) > 0).all()  # sorted, unique (onset, pitch)
