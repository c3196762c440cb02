"""Training examples (SFS.md section 3): what the model may see, and that it is the song."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from data_pipeline.synthetic import generate_song
from sfs_jax.data import examples as E
from sfs_jax.music import tokenizer
from sfs_jax.music.contexts import ContextSlot
from sfs_jax.music.notes import DURATION, FRAMES_PER_BAR, MAX_DURATION_FRAMES, notes_in_bars
from sfs_jax.music.song import Song
from sfs_jax.music.structure import parse_structure

CONFIG = E.ExampleConfig()
ALL_PREVIOUS = E.ExampleConfig(context_mode="all_previous")


def synthetic(index: int) -> Song:
    s = generate_song(0, index)
    return Song(s.song_id, np.asarray(s.notes_Nx4), s.n_bars, s.tempo_bpm, s.segments, "synthetic")


def grid_song(structure: str, notes_per_bar: int = 8, pitches: int = 1, song_id: str = "grid") -> Song:
    """Every segment filled with evenly spaced chords of ``pitches`` notes."""
    segments = parse_structure(structure)
    n_bars = segments[-1].end_bar
    step = FRAMES_PER_BAR // notes_per_bar
    onsets = np.arange(n_bars * notes_per_bar) * step
    rows = [np.stack([onsets, np.full_like(onsets, 60 + p), np.full_like(onsets, 70),
                      np.full_like(onsets, step)], 1) for p in range(pitches)]
    notes = np.concatenate(rows)
    notes = notes[np.lexsort((notes[:, 1], notes[:, 0]))].astype(np.int32)
    return Song(song_id, notes, n_bars, 120.0, segments, "synthetic")


SONGS = [synthetic(i) for i in range(6)]
CASES = [(song, seed) for song in SONGS for seed in range(12)]


def segment_of_bar(song: Song, bar: int) -> int:
    return next(i for i, s in enumerate(song.segments) if s.start_bar <= bar < s.end_bar)


def window_of(example: dict) -> tuple[int, int]:
    start = int(example["window_start_bar"])
    return start, start + int(example["n_beats"]) // 4


@pytest.mark.parametrize("config", [CONFIG, ALL_PREVIOUS], ids=["sfs", "all_previous"])
def test_contexts_come_only_from_segments_composed_before_the_target(config: E.ExampleConfig) -> None:
    for song, seed in CASES:
        plan = E.sample_plan(song, np.random.default_rng(seed), config)
        example = E.build_example(song, plan, config)
        bars = example["context_song_frame"] // FRAMES_PER_BAR
        sources = {segment_of_bar(song, int(b)) for b in bars}
        assert sources <= set(plan.composed), (song.song_id, seed)
        order = list(plan.compose_order)
        assert all(order.index(i) < plan.target_position for i in sources)
        starts = example["context_segment_start_frame"] // FRAMES_PER_BAR
        ends = example["context_segment_end_frame"] // FRAMES_PER_BAR
        assert np.all((starts <= bars) & (bars < ends))
        expected_slots = {ContextSlot.PREVIOUS} if config.context_mode == "all_previous" else {
            ContextSlot.LEFT, ContextSlot.RIGHT, ContextSlot.SEED, ContextSlot.REF}
        assert set(example["context_slot"].tolist()) <= expected_slots
        if plan.target_position == 0:
            assert len(example["context_pitch"]) == 0


def test_each_sfs_context_lies_in_its_crop() -> None:
    for song, seed in CASES:
        plan = E.sample_plan(song, np.random.default_rng(seed), CONFIG)
        example = E.build_example(song, plan, CONFIG)
        for slot, index in E.context_sources(song.segments, plan, "sfs"):
            segment = song.segments[index]
            bars = example["context_song_frame"][example["context_slot"] == slot] // FRAMES_PER_BAR
            if slot == ContextSlot.LEFT:
                assert np.all(bars >= segment.end_bar - 8)
            else:
                assert np.all(bars < segment.start_bar + 8)
            assert np.all((bars >= segment.start_bar) & (bars < segment.end_bar))
        # Slots appear in the order LEFT, RIGHT, SEED, REF.
        slots = example["context_slot"]
        assert np.all(np.diff(slots) >= 0)


@pytest.mark.parametrize("ref_crop", ["first", "aligned"])
def test_aligned_ref_crop_shows_the_bars_the_window_repeats(ref_crop: str) -> None:
    """``ref_crop="aligned"``: a window 3 bars into A(16-24) sees bars 3..7 of its Ref A(0-8), at the same
    frames within their segments as its own bars; "first" shows bars 0..4 (SFS.md section 1)."""
    song = grid_song("A8 B8 A8")
    config = dataclasses.replace(CONFIG, window_bars=4, context_bars=4, ref_crop=ref_crop)
    plan = E.ExamplePlan(compose_order=(0, 1, 2), target_position=2, window_start_bar=19, window_bars=4)
    example = E.build_example(song, plan, config)
    is_ref = example["context_slot"] == int(ContextSlot.REF)
    ref_bars = np.unique(example["context_song_frame"][is_ref] // FRAMES_PER_BAR)
    expected = (3, 4, 5, 6) if ref_crop == "aligned" else (0, 1, 2, 3)
    np.testing.assert_array_equal(ref_bars, expected)
    seed_bars = np.unique(example["context_song_frame"][example["context_slot"] == int(ContextSlot.SEED)]
                          // FRAMES_PER_BAR)
    np.testing.assert_array_equal(seed_bars, (0, 1, 2, 3))  # only REF moves
    if ref_crop == "aligned":
        within_ref = example["context_song_frame"][is_ref] - example["context_segment_start_frame"][is_ref]
        real = example["target_type"] != int(tokenizer.TokenType.PAD)
        within_target = example["target_song_frame"][real] - int(example["segment_start_frame"])
        assert within_ref.min() // FRAMES_PER_BAR == within_target.min() // FRAMES_PER_BAR == 3


def test_target_window_is_inside_the_target_segment() -> None:
    windows_seen = set()
    for song, seed in CASES:
        plan = E.sample_plan(song, np.random.default_rng(seed), CONFIG)
        example = E.build_example(song, plan, CONFIG)
        segment = song.segments[plan.target]
        start, end = window_of(example)
        assert segment.start_bar <= start < end <= segment.end_bar
        assert end - start == min(segment.n_bars, CONFIG.window_bars)
        assert example["segment_start_frame"] == segment.start_bar * FRAMES_PER_BAR
        assert example["segment_end_frame"] == segment.end_bar * FRAMES_PER_BAR
        assert np.all((example["target_bar"] >= start) & (example["target_bar"] < end))
        windows_seen.add(start - segment.start_bar)
    assert len(windows_seen) > 1  # windows of long segments do move


def test_known_bars_are_composed_bars_and_the_targets_earlier_bars() -> None:
    for song, seed in CASES:
        plan = E.sample_plan(song, np.random.default_rng(seed), CONFIG)
        example = E.build_example(song, plan, CONFIG)
        known = example["bar_known"]
        assert known.shape == (song.n_bars,)
        start, end = window_of(example)
        assert not known[start:end].any()
        target = song.segments[plan.target]
        for index, segment in enumerate(song.segments):
            bars = known[segment.start_bar:segment.end_bar]
            if index in plan.composed:
                assert bars.all()
            elif index == plan.target:
                earlier_bars = np.arange(target.start_bar, start)
                assert np.array_equal(np.flatnonzero(bars) + target.start_bar, earlier_bars)
            else:
                assert not bars.any()


def test_target_tokens_decode_to_the_songs_notes_in_the_window() -> None:
    for song, seed in CASES:
        example = E.make_example(song, np.random.default_rng(seed), CONFIG)
        tokens_Tx5 = np.stack([example[f"target_{k}"] for k in ("type", "pitch", "velocity",
                                                                 "duration", "frame")], 1)
        start, end = window_of(example)
        expected = notes_in_bars(song.notes_Nx4, start, end)
        expected[:, DURATION] = np.minimum(expected[:, DURATION], MAX_DURATION_FRAMES)
        np.testing.assert_array_equal(tokenizer.decode_target(tokens_Tx5), expected)
        assert example["target_type"][-1] == tokenizer.TokenType.END
        np.testing.assert_array_equal(example["target_song_frame"],
                                      start * FRAMES_PER_BAR + example["target_frame"])
        assert not any(int(example[k]) for k in E.FLAG_KEYS)


def test_examples_are_seeded_and_plans_vary() -> None:
    song = SONGS[0]
    a = E.make_example(song, np.random.default_rng(3), CONFIG)
    b = E.build_example(song, E.sample_plan(song, np.random.default_rng(3), CONFIG), CONFIG)
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    plans = {E.sample_plan(song, np.random.default_rng(s), CONFIG) for s in range(60)}
    assert {p.target_position for p in plans} == set(range(len(song.segments)))


def test_song_scope_windows_cross_segments_see_the_past_and_no_contexts() -> None:
    """The GPT-like Flat's windows: anywhere in the song, every earlier bar known, nothing after."""
    config = dataclasses.replace(CONFIG, window_scope="song")
    starts, crossing = set(), 0
    for song, seed in CASES:
        plan = E.sample_plan(song, np.random.default_rng(seed), config)
        example = E.build_example(song, plan, config)
        start, end = window_of(example)
        assert 0 <= start < end <= song.n_bars and end - start == min(song.n_bars, config.window_bars)
        assert song.segments[plan.target].start_bar <= start < song.segments[plan.target].end_bar
        crossing += end > song.segments[plan.target].end_bar
        starts.add(start)
        assert example["segment_start_frame"] == 0
        assert example["segment_end_frame"] == song.n_bars * FRAMES_PER_BAR
        assert example["context_pitch"].shape == (0,)
        np.testing.assert_array_equal(np.flatnonzero(example["bar_known"]), np.arange(start))
        expected = notes_in_bars(song.notes_Nx4, start, end)
        expected[:, DURATION] = np.minimum(expected[:, DURATION], MAX_DURATION_FRAMES)
        tokens_Tx5 = np.stack([example[f"target_{k}"] for k in ("type", "pitch", "velocity",
                                                                 "duration", "frame")], 1)
        np.testing.assert_array_equal(tokenizer.decode_target(tokens_Tx5), expected)
        again = E.make_example(song, np.random.default_rng(seed), config)
        assert all(np.array_equal(example[k], again[k]) for k in example)
    assert crossing > len(CASES) // 4 and len(starts) > 10


def test_over_long_target_is_rewindowed_and_flagged() -> None:
    # 128 notes per bar: 8 bars = 256 + 1024 + 1 tokens > 1024; 4 bars = 641 fits.
    song = grid_song("A16", notes_per_bar=32, pitches=4)
    plan = E.ExamplePlan((0,), 0, window_start_bar=2, window_bars=8)
    example = E.build_example(song, plan, CONFIG)
    assert int(example["truncated_target"]) == 1
    assert window_of(example) == (2, 6) and float(example["n_beats"]) == 16.0
    assert len(example["target_type"]) == 4 * 32 + 4 * 128 + 1
    tokens_Tx5 = np.stack([example[f"target_{k}"] for k in ("type", "pitch", "velocity", "duration",
                                                             "frame")], 1)
    np.testing.assert_array_equal(tokenizer.decode_target(tokens_Tx5), notes_in_bars(song.notes_Nx4, 2, 6))
    assert not example["bar_known"][2:].any() and example["bar_known"][:2].all()


def test_contexts_over_budget_keep_notes_nearest_the_target() -> None:
    config = E.ExampleConfig(context_buckets=(16, 64), previous_token_budget=64)
    song = grid_song("A4 B4 A4")  # 32 notes per segment
    plan = E.ExamplePlan((0, 2, 1), 2, window_start_bar=4, window_bars=4)  # LEFT 0, RIGHT 2, SEED 0
    example = E.build_example(song, plan, config)
    assert int(example["truncated_context"]) == 1
    assert len(example["context_pitch"]) == 64
    slot, frame = example["context_slot"], example["context_song_frame"]
    left = frame[slot == ContextSlot.LEFT]
    right = frame[slot == ContextSlot.RIGHT]
    seed = frame[slot == ContextSlot.SEED]
    assert len(left) + len(right) + len(seed) == 64 and min(len(left), len(right), len(seed)) == 21
    assert left.max() == 4 * FRAMES_PER_BAR - 4 and np.all(np.diff(left) > 0)  # the end of segment 0
    assert right.min() == 8 * FRAMES_PER_BAR  # the start of segment 2
    assert np.array_equal(left, seed[-len(left):])  # SEED is segment 0 too, cut the same way


def test_all_previous_takes_most_recent_segments_within_budget() -> None:
    config = E.ExampleConfig(context_mode="all_previous", previous_token_budget=80)
    song = grid_song("A4 B4 C4 D4")  # 32 notes per segment
    plan = E.ExamplePlan((3, 0, 1, 2), 3, window_start_bar=8, window_bars=4)
    example = E.build_example(song, plan, config)
    assert len(example["context_pitch"]) == 80 and int(example["truncated_context"]) == 1
    starts = example["context_segment_start_frame"] // FRAMES_PER_BAR
    # Most recently composed first: 1 (bars 4..8), then 0 (bars 0..4), then 3 (cut to 16 notes).
    assert starts[:32].tolist() == [4] * 32 and starts[32:64].tolist() == [0] * 32
    assert starts[64:].tolist() == [12] * 16
    assert set(example["context_slot"].tolist()) == {ContextSlot.PREVIOUS}


def test_fair_shares() -> None:
    assert E.fair_shares([10, 20], 100) == [10, 20]
    shares = E.fair_shares([100, 500, 500, 500], 1536)
    assert shares[0] == 100 and sorted(shares[1:]) == [478, 479, 479]
    assert E.fair_shares([], 10) == []
    shares = E.fair_shares([7, 3, 50, 50], 40)
    assert sum(shares) == 40 and shares[:2] == [7, 3]


def test_long_song_global_view_is_a_range_around_the_window() -> None:
    config = E.ExampleConfig(max_song_bars=16, bar_buckets=(8, 16))
    song = grid_song("A8 B8 A8 B8 A8")
    embeddings_GxE = np.arange(40 * 3, dtype=np.float32).reshape(40, 3) + 1
    plan = E.ExamplePlan((2, 1, 0, 3, 4), 3, window_start_bar=24, window_bars=8)
    example = E.build_example(song, plan, config, embeddings_GxE)
    start = int(example["global_start_bar"])
    assert int(example["truncated_bars"]) == 1 and example["bar_embedding"].shape == (16, 3)
    assert start <= 24 and 32 <= start + 16
    known = E.known_bars(song, plan)
    np.testing.assert_array_equal(example["bar_known"], known[start:start + 16])
    # Known bars carry their embedding; unknown bars are zero, so nothing can leak.
    expected = np.where(known[:, None], embeddings_GxE, 0)[start:start + 16]
    np.testing.assert_array_equal(example["bar_embedding"], expected)


def test_bar_embeddings_of_the_wrong_length_raise() -> None:
    song = SONGS[0]
    with pytest.raises(ValueError, match="bar embeddings"):
        E.make_example(song, np.random.default_rng(0), CONFIG, np.zeros((song.n_bars + 1, 4)))


@pytest.mark.parametrize("change", [
    {"context_mode": "nearest"}, {"ref_crop": "last"}, {"target_buckets": (512, 384)}, {"max_song_bars": 300},
    {"previous_token_budget": 4096}, {"window_bars": 0}, {"target_buckets": (16,)}, {"window_scope": "bars"}])
def test_bad_configs_raise(change: dict) -> None:
    with pytest.raises(ValueError):
        dataclasses.replace(CONFIG, **change)
