"""Tests of the SFS music language (SFS.md section 2): numpy codecs, miditok class, REMI."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import symusic
from hypothesis import given, settings
from hypothesis import strategies as st

from sfs_jax.music import notes as notes_lib
from sfs_jax.music import tokenizer as tk
from sfs_jax.music.tokenizer import TokenType

HYPOTHESIS = settings(max_examples=150, deadline=None)


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def notes(*rows: tuple[int, int, int, int]) -> np.ndarray:
    """(onset, pitch, velocity, duration) rows as a normalized note array."""
    normalized, _ = notes_lib.normalize_notes(np.array(rows, np.int64).reshape(-1, 4))
    return normalized


def clipped(notes_Nx4: np.ndarray) -> np.ndarray:
    """What an exact round trip must give back: durations clipped at 64 frames."""
    out = notes_Nx4.copy()
    out[:, notes_lib.DURATION] = np.minimum(out[:, notes_lib.DURATION], notes_lib.MAX_DURATION_FRAMES)
    return out


def note_tokens(tokens_Tx5: np.ndarray) -> np.ndarray:
    return tokens_Tx5[tokens_Tx5[:, tk.TYPE] == TokenType.NOTE]


def reference_duration_code(note: np.ndarray, all_notes: np.ndarray) -> int:
    """SFS.md section 2 read literally, one note at a time (an independent oracle)."""
    onset, pitch, _, length = (int(x) for x in note)
    offset = onset + length
    bar_end = (onset // 32 + 1) * 32
    onsets_of_pitch = {int(o) for o, p, _, _ in all_notes if p == pitch}
    if offset < bar_end and offset in onsets_of_pitch:
        return 0
    if offset == bar_end and length <= 32:
        return 0
    return min(length, 64)


@st.composite
def segments(draw: st.DrawFn) -> tuple[np.ndarray, int]:
    """Random normalized notes of a segment; a narrow pitch set makes same-pitch runs common."""
    n_frames = draw(st.sampled_from([1, 31, 32, 40, 64, 256]))
    narrow = draw(st.booleans())
    pitch = st.integers(60, 62) if narrow else st.integers(notes_lib.MIN_PITCH, notes_lib.MAX_PITCH)
    rows = draw(st.lists(st.tuples(st.integers(0, n_frames - 1), pitch, st.integers(1, 127),
                                   st.integers(1, 100)), max_size=80))
    return notes(*rows), n_frames


@functools.cache
def sfs_tokenizer() -> tk.SFSFrameTokenizer:
    return tk.SFSFrameTokenizer()


# ---------------------------------------------------------------------------
# properties
# ---------------------------------------------------------------------------


@HYPOTHESIS
@given(segments())
def test_target_round_trip_is_exact_up_to_the_clip(segment: tuple[np.ndarray, int]) -> None:
    notes_Nx4, n_frames = segment
    tokens, stats = tk.encode_target(notes_Nx4, n_frames)
    np.testing.assert_array_equal(tk.decode_target(tokens), clipped(notes_Nx4))
    assert stats.durations_clipped == int(np.sum(notes_Nx4[:, notes_lib.DURATION] > 64))


@HYPOTHESIS
@given(segments())
def test_context_round_trip_is_exact_up_to_the_clip(segment: tuple[np.ndarray, int]) -> None:
    notes_Nx4, _ = segment
    tokens = tk.encode_context(notes_Nx4)
    np.testing.assert_array_equal(tk.decode_context(tokens), clipped(notes_Nx4))


@HYPOTHESIS
@given(segments())
def test_target_layout_and_durations_follow_sfs_md(segment: tuple[np.ndarray, int]) -> None:
    notes_Nx4, n_frames = segment
    tokens, _ = tk.encode_target(notes_Nx4, n_frames)
    types = tokens[:, tk.TYPE]
    assert tokens.dtype == np.int32 and tokens.shape == (n_frames + len(notes_Nx4) + 1, 5)
    assert np.sum(types == TokenType.FRAME) == n_frames
    assert types[-1] == TokenType.END and np.sum(types == TokenType.END) == 1
    np.testing.assert_array_equal(tokens[types == TokenType.FRAME, tk.FRAME], np.arange(n_frames))
    np.testing.assert_array_equal(tokens[:, tk.FRAME], tk.frames_from_types(types))
    assert np.all(tokens[types != TokenType.NOTE][:, tk.PITCH:tk.FRAME] == 0)
    assert tk.count_token_errors(tokens) == 0
    # notes come in their frames, in (onset, pitch) order, hence strictly ascending pitch per frame
    note_rows = note_tokens(tokens)
    np.testing.assert_array_equal(note_rows[:, [tk.FRAME, tk.PITCH, tk.VEL]], notes_Nx4[:, :3])
    expected_codes = [reference_duration_code(note, notes_Nx4) for note in notes_Nx4]
    np.testing.assert_array_equal(note_rows[:, tk.DUR], expected_codes)
    np.testing.assert_array_equal(note_tokens(tokens), tk.encode_context(notes_Nx4))


@HYPOTHESIS
@given(segments())
def test_ids_round_trip_through_the_miditok_vocabulary(segment: tuple[np.ndarray, int]) -> None:
    notes_Nx4, n_frames = segment
    tokens, _ = tk.encode_target(notes_Nx4, n_frames)
    padded = np.concatenate([tokens, np.zeros((3, 5), np.int32)])
    ids = sfs_tokenizer().array_to_ids(padded)
    assert np.all(ids[-3:] == sfs_tokenizer().pad_token_id)
    np.testing.assert_array_equal(sfs_tokenizer().ids_to_array(ids), padded)


# ---------------------------------------------------------------------------
# the duration-0 rule, case by case
# ---------------------------------------------------------------------------


def durations_of(notes_Nx4: np.ndarray, n_frames: int = 64) -> list[int]:
    tokens, _ = tk.encode_target(notes_Nx4, n_frames)
    return note_tokens(tokens)[:, tk.DUR].tolist()


def test_same_pitch_at_exact_offset_within_bar_is_duration_zero() -> None:
    # 60 at 0 (4 frames) is followed by 60 at 4; 60 at 4 ends at 8 with nothing there.
    assert durations_of(notes((0, 60, 80, 4), (4, 60, 80, 4))) == [0, 4]


def test_other_pitch_at_offset_is_explicit() -> None:
    assert durations_of(notes((0, 60, 80, 4), (4, 61, 80, 4))) == [4, 4]


def test_ending_on_the_bar_line_within_one_bar_is_duration_zero() -> None:
    assert durations_of(notes((24, 60, 80, 8), (32, 62, 80, 32))) == [0, 0]


def test_ending_on_a_later_bar_line_is_explicit() -> None:
    # Both end on the line at 64, but they last more than their own bar.
    assert durations_of(notes((0, 60, 80, 64), (16, 62, 80, 48)), n_frames=32) == [64, 48]


def test_same_pitch_at_offset_in_the_next_bar_is_explicit() -> None:
    assert durations_of(notes((28, 60, 80, 8), (36, 60, 80, 4))) == [8, 4]


def test_duration_zero_decodes_to_the_next_same_pitch_onset_or_the_bar_line() -> None:
    # Hand-written: FRAME 0 with 60/dur 0, FRAME 1..5, FRAME 6 with 60/dur 0, then 7..63 and END.
    manual = [[1, 0, 0, 0, 0], [2, 60, 80, 0, 0]]
    manual += [[1, 0, 0, 0, f] for f in range(1, 7)] + [[2, 60, 70, 0, 6]]
    manual += [[1, 0, 0, 0, f] for f in range(7, 64)] + [[3, 0, 0, 0, 64]]
    decoded = tk.decode_target(np.array(manual, np.int32))
    np.testing.assert_array_equal(decoded, [[0, 60, 80, 6], [6, 60, 70, 26]])


def test_long_durations_are_clipped_and_counted() -> None:
    tokens, stats = tk.encode_target(notes((0, 60, 80, 100), (1, 61, 80, 64), (2, 62, 80, 65)), 32)
    assert note_tokens(tokens)[:, tk.DUR].tolist() == [64, 64, 64]
    assert stats.durations_clipped == 2
    total = tk.TokenizeStats()
    total.add(stats)
    total.add(stats)
    assert total.durations_clipped == 4


# ---------------------------------------------------------------------------
# layout, validation, decoding robustness
# ---------------------------------------------------------------------------


def test_pitches_within_a_frame_are_strictly_ascending_whatever_the_input_order() -> None:
    shuffled = notes((0, 72, 80, 4), (0, 60, 80, 4), (0, 64, 80, 4))[[2, 0, 1]]
    tokens, _ = tk.encode_target(shuffled, 32)
    assert tokens[:5, tk.TYPE].tolist() == [1, 2, 2, 2, 1]
    assert tokens[1:4, tk.PITCH].tolist() == [60, 64, 72]


def test_empty_segment_is_frames_then_end() -> None:
    tokens, _ = tk.encode_target(notes_lib.empty_notes(), 3)
    frames_then_end = [[1, 0, 0, 0, 0], [1, 0, 0, 0, 1], [1, 0, 0, 0, 2], [3, 0, 0, 0, 3]]
    np.testing.assert_array_equal(tokens, frames_then_end)
    assert tk.decode_target(tokens).shape == (0, 4)
    assert tk.encode_context(notes_lib.empty_notes()).shape == (0, 5)


@pytest.mark.parametrize("onset", [-1, 32, 40])
def test_onset_outside_the_segment_raises(onset: int) -> None:
    bad = np.array([[0, 60, 80, 4], [onset, 62, 80, 4]], np.int32)
    with pytest.raises(ValueError, match=r"outside the segment's frames \[0, 32\)"):
        tk.encode_target(bad, 32)


@pytest.mark.parametrize(("row", "message"), [
    ((0, 20, 80, 4), "pitch outside"),
    ((0, 60, 128, 4), "velocity outside"),
    ((0, 60, 80, 0), "duration below"),
])
def test_notes_the_language_cannot_say_raise(row: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tk.encode_context(np.array([row], np.int32))


def test_duplicate_onset_and_pitch_raises() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        tk.encode_target(np.array([[0, 60, 80, 4], [0, 60, 90, 2]], np.int32), 32)


def test_decode_ignores_the_frame_column_and_stops_at_end_or_pad() -> None:
    original = notes((0, 60, 80, 4), (5, 64, 80, 3), (33, 67, 90, 31))
    tokens, _ = tk.encode_target(original, 64)
    scrambled = tokens.copy()
    scrambled[:, tk.FRAME] = 999
    np.testing.assert_array_equal(tk.decode_target(scrambled), original)
    trailing_garbage = np.concatenate([tokens, [[2, 70, 80, 4, 0]]]).astype(np.int32)
    np.testing.assert_array_equal(tk.decode_target(trailing_garbage), original)
    padded_without_end = np.concatenate([tokens[:-1], np.zeros((4, 5), np.int32)])
    np.testing.assert_array_equal(tk.decode_target(padded_without_end), original)
    context = np.concatenate([tk.encode_context(original), np.zeros((4, 5), np.int32)])
    np.testing.assert_array_equal(tk.decode_context(context), original)


def test_decode_refuses_malformed_sequences() -> None:
    with pytest.raises(ValueError, match="before the first FRAME"):
        tk.decode_target(np.array([[2, 60, 80, 4, 0], [1, 0, 0, 0, 0]], np.int32))
    with pytest.raises(ValueError, match="pitch outside"):
        tk.decode_target(np.array([[1, 0, 0, 0, 0], [2, 10, 80, 4, 0]], np.int32))
    with pytest.raises(ValueError, match="NOTE tokens only"):
        tk.decode_context(np.array([[1, 0, 0, 0, 0]], np.int32))


def test_count_token_errors_flags_grammar_breaks() -> None:
    tokens, _ = tk.encode_target(notes((0, 60, 80, 4), (0, 64, 80, 4)), 2)
    assert tk.count_token_errors(tokens) == 0
    descending = tokens.copy()
    descending[[1, 2]] = descending[[2, 1]]
    assert tk.count_token_errors(descending) == 1
    note_first = np.concatenate([tokens[1:2], tokens])
    assert tk.count_token_errors(note_first) == 1
    after_end = np.concatenate([tokens, tokens[:1]])
    assert tk.count_token_errors(after_end) == 1


# ---------------------------------------------------------------------------
# miditok class
# ---------------------------------------------------------------------------


def test_miditok_tokenizer_saves_and_loads(tmp_path: Path) -> None:
    tokenizer = sfs_tokenizer()
    tokenizer.save(tmp_path)
    loaded = tk.SFSFrameTokenizer(params=tmp_path / "tokenizer.json")
    assert loaded == tokenizer
    assert loaded.vocab == tokenizer.vocab
    assert loaded.config == tokenizer.config
    assert loaded.config.additional_params == {"frames_per_beat": 8, "frames_per_bar": 32,
                                               "max_duration_frames": 64}
    assert loaded.is_multi_voc and loaded.io_format == ("T", "C")
    assert loaded.len == [4 + 3, 4 + 1 + 88, 4 + 1 + 128, 4 + 1 + 65]


def test_miditok_tokenizer_refuses_another_grid() -> None:
    with pytest.raises(ValueError, match="max_duration_frames"):
        tk.SFSFrameTokenizer(tk.sfs_tokenizer_config(max_duration_frames=32))


def write_and_read_score(path: Path, tracks: dict[tuple[str, bool], list[tuple[int, int, int, int]]],
                         ticks_per_quarter: int = 480) -> symusic.Score:
    """A score from (onset, pitch, velocity, duration) rows in frames, through a .mid file."""
    ticks_per_frame = ticks_per_quarter // notes_lib.FRAMES_PER_BEAT
    score = symusic.Score(ticks_per_quarter)
    score.time_signatures.append(symusic.TimeSignature(0, 4, 4))
    for (name, is_drum), rows in tracks.items():
        track = symusic.Track(name, 0, is_drum)
        for onset, pitch, velocity, duration in rows:
            track.notes.append(
                symusic.Note(onset * ticks_per_frame, duration * ticks_per_frame, pitch, velocity))
        score.tracks.append(track)
    score.dump_midi(path)
    return symusic.Score(path)


def test_miditok_encode_decode_matches_the_numpy_target(tmp_path: Path) -> None:
    right = [(0, 60, 80, 4), (4, 60, 81, 28), (40, 72, 90, 64)]
    left = [(0, 48, 70, 32), (33, 43, 60, 7)]
    drums = [(0, 36, 100, 1)]
    score = write_and_read_score(tmp_path / "song.mid", {("right", False): right, ("left", False): left,
                                                         ("drums", True): drums})
    expected = notes(*right, *left)
    tokenizer = sfs_tokenizer()
    sequence = tokenizer.encode(score)
    target, _ = tk.encode_target(expected, 64)
    np.testing.assert_array_equal(sequence.ids, tokenizer.array_to_ids(target))
    assert sequence.tokens[1] == ["Type_Note", "Pitch_48", "Velocity_70", "Duration_0"]
    for decoded in (tokenizer.decode(sequence), tokenizer.decode(np.array(sequence.ids))):
        np.testing.assert_array_equal(tk.score_to_notes(decoded), expected)
    assert tokenizer.tokens_errors(sequence) == 0


def test_miditok_decode_refuses_ids_without_meaning() -> None:
    tokenizer = sfs_tokenizer()
    bos = tokenizer.vocab[0]["BOS_None"]
    assert tokenizer.ids_to_array([[bos, 4, 4, 4]])[0, tk.TYPE] == -1
    with pytest.raises(ValueError, match="token types"):
        tokenizer.decode(np.array([[bos, 4, 4, 4]]))


# ---------------------------------------------------------------------------
# stock REMI on the same grid
# ---------------------------------------------------------------------------


def test_remi_on_the_grid_round_trips_onsets(tmp_path: Path) -> None:
    rows = [(0, 60, 80, 4), (1, 72, 80, 1), (5, 64, 80, 64), (31, 67, 80, 2), (70, 55, 80, 8)]
    score = write_and_read_score(tmp_path / "remi.mid", {("piano", False): rows})
    remi = tk.remi_tokenizer()
    decoded = remi.decode(remi.encode(score))
    frames_per_tick = notes_lib.FRAMES_PER_BEAT / decoded.ticks_per_quarter
    got = sorted((round(n.time * frames_per_tick), n.pitch, round(n.duration * frames_per_tick))
                 for n in decoded.tracks[0].notes)
    assert got == sorted((onset, pitch, duration) for onset, pitch, _, duration in rows)
