"""Evaluation metrics (sfs_jax/evaluation/metrics.py) on songs built so the answer is known.

Slow loop-based references of the definitions (enhanced SSM, optimal path family with
backtracking) check the vectorized code on small inputs; the approximate scape plot
is checked against the exact one.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from data_pipeline.synthetic import generate_song
from sfs_jax.evaluation import metrics
from sfs_jax.music.notes import FRAMES_PER_BAR, ONSET, PITCH, notes_in_bars
from sfs_jax.music.song import Song
from sfs_jax.music.structure import parse_structure

WHITE_PCS = (0, 2, 4, 5, 7, 9, 11)
BLACK_PCS = (1, 3, 6, 8, 10)
EVEN_ONSETS = (0, 8, 16, 24)
ODD_ONSETS = (4, 12, 20, 28)


# ---------------------------------------------------------------- song builders


def _bar(rng: np.random.Generator, onsets: tuple[int, ...], pcs: tuple[int, ...], n_notes: int = 3) -> np.ndarray:
    """One bar of notes (onsets relative to the bar) drawn from the given positions and pitch classes."""
    onset_K = np.sort(rng.choice(onsets, size=n_notes, replace=False))
    pitch_K = 60 + rng.choice(pcs, size=n_notes)
    return np.stack([onset_K, pitch_K, np.full(n_notes, 80), np.full(n_notes, 4)], axis=1)


def _concat_bars(bars: list[np.ndarray]) -> np.ndarray:
    """Bars laid end to end from bar 0."""
    out = []
    for index, bar in enumerate(bars):
        shifted = np.array(bar, np.int64).reshape(-1, 4).copy()
        shifted[:, ONSET] += index * FRAMES_PER_BAR
        out.append(shifted)
    return np.concatenate(out).astype(np.int32)


def _passage() -> np.ndarray:
    """Eight bars of a realistic synthetic song (melody, chords, accompaniment)."""
    return notes_in_bars(generate_song(0, 1).notes_Nx4, 0, 8).astype(np.int64)


def _tile(passage_Nx4: np.ndarray, copies: int, bars: int = 8) -> np.ndarray:
    return _concat_bars([notes_in_bars(passage_Nx4, b, b + 1) for _ in range(copies) for b in range(bars)])


def _shuffle_bars(notes_Nx4: np.ndarray, n_bars: int, seed: int) -> np.ndarray:
    new_position_B = np.random.default_rng(seed).permutation(n_bars)
    out = np.array(notes_Nx4, np.int64).copy()
    out[:, ONSET] = new_position_B[out[:, ONSET] // FRAMES_PER_BAR] * FRAMES_PER_BAR + out[:, ONSET] % FRAMES_PER_BAR
    return out


# ---------------------------------------------------------------- slow references


def _resample_ref(n_out: int, n_in: int) -> list[int]:
    return [min(max(round((j + 1) * n_in / n_out) - 1, 0), n_in - 1) for j in range(n_out)]


def _reference_ssm(x_Tx12: np.ndarray, length: int, tempi: np.ndarray, shifts: int) -> np.ndarray:
    """The SM Toolbox definition with loops: columns stretched, smoothed forward and backward."""
    n = len(x_Tx12)
    best = np.zeros((n, n))
    for c in range(shifts):
        s = x_Tx12 @ np.roll(x_Tx12, c, axis=1).T
        for tempo in tempi:
            m = math.ceil(n / tempo - 1e-9)
            st = s[:, _resample_ref(m, n)]
            fwd, bwd = np.zeros((n, m)), np.zeros((n, m))
            for i in range(n):
                for j in range(m):
                    fwd[i, j] = sum(st[i + p, j + p] for p in range(length) if i + p < n and j + p < m) / length
                    bwd[i, j] = sum(st[i - p, j - p] for p in range(length) if i >= p and j >= p) / length
            back = _resample_ref(n, m)
            best = np.maximum(best, np.maximum(fwd[:, back], bwd[:, back]))
    return np.maximum(best, best.T)


def _reference_family(s_TxT: np.ndarray, start: int, length: int) -> tuple[float, int, int]:
    """Optimal path family of segment [start, start + length) by DP and explicit backtracking."""
    n_rows = len(s_TxT)
    d = np.full((n_rows, length + 1), -np.inf)
    parent: dict[tuple[int, int], tuple[int, int]] = {}
    d[0, 0], d[0, 1] = 0.0, s_TxT[0, start]
    for n in range(1, n_rows):
        for m in range(2, length + 1):
            options = [(n - 1, m - 1)] + ([(n - 2, m - 1)] if n >= 2 else []) + ([(n - 1, m - 2)] if m >= 3 else [])
            best = max(options, key=lambda cell: d[cell])
            d[n, m], parent[(n, m)] = s_TxT[n, start + m - 1] + d[best], best
        parent[(n, 0)] = (n - 1, length) if d[n - 1, length] > d[n - 1, 0] else (n - 1, 0)
        d[n, 0] = d[parent[(n, 0)]]
        d[n, 1], parent[(n, 1)] = d[n, 0] + s_TxT[n, start], (n, 0)
    cell = (n_rows - 1, length) if d[n_rows - 1, length] > d[n_rows - 1, 0] else (n_rows - 1, 0)
    score, cells, coverage, path_end = float(d[cell]), 0, 0, None
    while cell != (0, 0):
        n, m = cell
        if m >= 1:
            cells += 1
            path_end = n if path_end is None else path_end
            if m == 1:
                coverage += path_end - n + 1
                path_end = None
        if cell == (0, 1):
            break
        cell = parent[cell]
    return score, cells, coverage


def _reference_fitness(s_TxT: np.ndarray, start: int, length: int) -> float:
    score, cells, coverage = _reference_family(s_TxT, start, length)
    score_n, cover_n = (score - length) / cells, (coverage - length) / len(s_TxT)
    return 2 * score_n * cover_n / (score_n + cover_n) if score_n > 0 and cover_n > 0 else 0.0


# ---------------------------------------------------------------- chroma and SSM


def test_chroma_one_second_note_fills_two_frames() -> None:
    # 120 bpm: 1 s = 2 beats = 16 frames; 2 Hz frames cover [0, .5), [.5, 1), [1, 1.5), ...
    note = np.array([[0, 60, 100, 16]])
    raw_Tx12 = metrics.chroma_2hz(note, 120.0, n_frames=4, normalize=False)
    np.testing.assert_allclose(raw_Tx12[:, 0], [0.5, 0.5, 0.0, 0.0])
    assert raw_Tx12[:, 1:].sum() == 0
    unit_Tx12 = metrics.chroma_2hz(note, 120.0, n_frames=4)
    np.testing.assert_allclose(unit_Tx12[:2, 0], [1.0, 1.0])
    np.testing.assert_array_equal(unit_Tx12[2:], 0.0)  # silence is the zero vector
    assert len(metrics.chroma_2hz(note, 120.0)) == 2  # default length: until the note ends


def test_chroma_splits_partial_frames_and_weights_velocity() -> None:
    # starts at 0.25 s (4 frames at 120 bpm), lasts 1 s; E4 (pc 4) at half velocity
    notes = np.array([[4, 64, 127, 16], [0, 52, 127, 8], [0, 40, 127, 8]])
    raw_Tx12 = metrics.chroma_2hz(notes, 120.0, n_frames=3, normalize=False)
    np.testing.assert_allclose(raw_Tx12[:, 4], [0.25 + 1.0, 0.5, 0.25])  # two E's of 0.5 s in frame 0
    half = np.array([[0, 60, 127, 8], [0, 62, 63, 8]])
    weighted_Tx12 = metrics.chroma_2hz(half, 120.0, velocity_weighted=True, normalize=False)
    np.testing.assert_allclose(weighted_Tx12[0, [0, 2]], [0.5, 0.5 * 63 / 127])


def test_self_similarity_matches_loop_reference() -> None:
    rng = np.random.default_rng(3)
    x_Tx12 = rng.random((13, 12)) ** 3
    x_Tx12 /= np.linalg.norm(x_Tx12, axis=1, keepdims=True)
    config = metrics.SSMConfig(filter_length=3, num_tempi=3)
    expected = _reference_ssm(x_Tx12, 3, config.tempi(), 12)
    np.testing.assert_allclose(metrics.self_similarity(x_Tx12, config), expected, atol=1e-6)
    plain = metrics.SSMConfig(filter_length=3, num_tempi=3, transposition_invariant=False)
    np.testing.assert_allclose(metrics.self_similarity(x_Tx12, plain), _reference_ssm(x_Tx12, 3, plain.tempi(), 1),
                               atol=1e-6)


def test_self_similarity_is_symmetric_with_maximal_diagonal() -> None:
    song = generate_song(0, 2)
    ssm_TxT = metrics.self_similarity(metrics.chroma_2hz(song.notes_Nx4, song.tempo_bpm))
    np.testing.assert_array_equal(ssm_TxT, ssm_TxT.T)
    np.testing.assert_allclose(np.diag(ssm_TxT), 1.0, atol=1e-6)  # no silent frame in a synthetic song
    assert np.all(ssm_TxT <= np.diag(ssm_TxT)[:, None] + 1e-6) and ssm_TxT.min() >= 0.0


def test_transposed_repeat_is_detected() -> None:
    passage = _passage()
    up_a_third = passage.copy()
    up_a_third[:, PITCH] += 3
    up_a_third[:, ONSET] += 8 * FRAMES_PER_BAR
    song = np.concatenate([passage, up_a_third])  # 16 bars at 120 bpm: 32 s, the repeat 16 s (32 frames) later
    stripes = {}
    for invariant in (True, False):
        config = metrics.SSMConfig(transposition_invariant=invariant)
        ssm_TxT = metrics.self_similarity(metrics.chroma_2hz(song, 120.0, n_frames=64), config)
        stripes[invariant] = np.mean([ssm_TxT[i, i + 32] for i in range(32)])
    assert stripes[True] > 0.95 > 0.5 > stripes[False]
    si = metrics.structureness_indicator(song, 120.0, duration_s=32.0)
    si_plain = metrics.structureness_indicator(song, 120.0, duration_s=32.0,
                                               config=metrics.SSMConfig(transposition_invariant=False))
    assert si["SI_16+"] > 0.4 and si_plain["SI_16+"] < 0.1


def test_threshold_keeps_top_quarter_scaled_and_penalizes_the_rest() -> None:
    notes = generate_song(0, 2).notes_Nx4
    silent_bars = (notes[:, ONSET] // FRAMES_PER_BAR >= 8) & (notes[:, ONSET] // FRAMES_PER_BAR < 20)  # 24 s
    ssm_TxT = metrics.self_similarity(metrics.chroma_2hz(notes[~silent_bars], 120.0))
    assert np.diag(ssm_TxT).min() == 0.0  # silent frames: zero chroma, zero self-similarity
    out_TxT = metrics.threshold_similarity(ssm_TxT)
    off_diagonal = ~np.eye(len(out_TxT), dtype=bool)
    kept = out_TxT[off_diagonal] >= 0
    assert abs(np.mean(out_TxT >= 0) - 0.25) < 0.01
    assert set(np.unique(out_TxT[off_diagonal][~kept])) == {-2.0}
    assert out_TxT[off_diagonal][kept].min() == 0.0 and out_TxT.max() == 1.0  # kept cells scaled onto [0, 1]
    assert np.all(np.diag(out_TxT) == 1.0)  # every trivial self-path scores its length
    # monotone: a kept cell's order among kept cells is preserved by the linear scaling
    order = np.argsort(ssm_TxT[off_diagonal][kept], kind="stable")
    assert np.all(np.diff(out_TxT[off_diagonal][kept][order]) >= -1e-12)


# ---------------------------------------------------------------- fitness scape plot and SI


def test_exact_scape_matches_backtracking_reference() -> None:
    rng = np.random.default_rng(7)
    n = 16
    s_TxT = rng.normal(0.0, 0.6, (n, n))
    s_TxT = np.clip((s_TxT + s_TxT.T) / 2, -2.0, 1.0)
    np.fill_diagonal(s_TxT, 1.0)
    scape = metrics.fitness_scape(s_TxT, grid=metrics.ScapeGrid.exact(n))
    expected = np.full((n, n), np.nan)
    for length in range(1, n + 1):
        for start in range(n - length + 1):
            expected[length - 1, start] = _reference_fitness(s_TxT, start, length)
    np.testing.assert_allclose(scape.fitness_LxT, expected, atol=1e-5, equal_nan=True)
    assert np.nanmax(expected) > 0.1  # the test is not vacuous


def test_grid_scape_is_exact_where_evaluated_and_close_to_exact_maximum() -> None:
    song = generate_song(0, 4)
    n_frames = math.ceil(metrics.FEATURE_RATE_HZ * song.n_bars * 4 * 60 / song.tempo_bpm)
    ssm_TxT = metrics.threshold_similarity(metrics.self_similarity(
        metrics.chroma_2hz(song.notes_Nx4, song.tempo_bpm, n_frames=n_frames)))
    ranges = [(4, 16), (16, 32), (32, n_frames + 1)]
    approx = metrics.fitness_scape(ssm_TxT, refine_ranges_frames=ranges)
    grid_only = metrics.fitness_scape(ssm_TxT)
    exact = metrics.fitness_scape(ssm_TxT, grid=metrics.ScapeGrid.exact(n_frames))
    evaluated = ~np.isnan(approx.fitness_LxT)
    assert 0 < evaluated[31:].mean() < 0.2  # long segments really are on a sparse grid
    np.testing.assert_array_equal(approx.fitness_LxT[evaluated], exact.fitness_LxT[evaluated])
    np.testing.assert_array_equal(evaluated[:31], ~np.isnan(exact.fitness_LxT[:31]))  # below 16 s: all
    for lo_s, hi_s in metrics.PAPER_SI_RANGES_S:
        got, want = approx.max_fitness(lo_s, hi_s), exact.max_fitness(lo_s, hi_s)
        assert want - 1e-4 <= got <= want
    # on this song the grid alone misses the peak; the refinement finds it
    assert grid_only.max_fitness(16, None) < exact.max_fitness(16, None) - 1e-3
    filled_LxT = approx.filled()
    np.testing.assert_array_equal(np.isnan(filled_LxT), np.isnan(exact.fitness_LxT))
    np.testing.assert_array_equal(filled_LxT[evaluated], approx.fitness_LxT[evaluated])


def test_exact_repeats_score_higher_si_than_shuffled_bars() -> None:
    repeated = _tile(_passage(), 4)  # 32 bars, 64 s at 120 bpm
    shuffled = _shuffle_bars(repeated, 32, seed=0)
    si_repeated = metrics.structureness_indicator(repeated, 120.0, duration_s=64.0)
    si_shuffled = metrics.structureness_indicator(shuffled, 120.0, duration_s=64.0)
    assert list(si_repeated) == ["SI_2-8", "SI_8-16", "SI_16+"]
    for key in si_repeated:
        assert si_repeated[key] > si_shuffled[key] + 0.2, key
    # an 8-bar (32-frame) passage four times: score and coverage both (128 - 32) / 128
    assert si_repeated["SI_16+"] == pytest.approx(0.75, abs=1e-6)


def test_si_is_nan_where_no_segment_fits() -> None:
    si = metrics.structureness_indicator(_passage()[:40], 120.0, duration_s=6.0)
    assert not math.isnan(si["SI_2-8"]) and math.isnan(si["SI_8-16"]) and math.isnan(si["SI_16+"])


# ---------------------------------------------------------------- bar-level metrics


def _seed_song(rng: np.random.Generator, copy_everywhere: bool) -> tuple[np.ndarray, tuple]:
    segments = parse_structure("A4 B4 A4 C4 A4")
    seed_bars = [_bar(rng, EVEN_ONSETS, WHITE_PCS) for _ in range(4)]
    bars = []
    for seg in segments:
        if seg.label == "A" or copy_everywhere:
            bars.extend(seed_bars)
        else:
            bars.extend(_bar(rng, ODD_ONSETS, BLACK_PCS) for _ in range(seg.n_bars))
    return _concat_bars(bars), segments


def test_seed_adherence_is_maximal_for_same_label_copies_and_zero_for_copies_everywhere() -> None:
    rng = np.random.default_rng(0)
    notes, segments = _seed_song(rng, copy_everywhere=False)
    assert metrics.seed_adherence(notes, segments, 0) == pytest.approx(1.0)
    notes_all, _ = _seed_song(rng, copy_everywhere=True)
    assert metrics.seed_adherence(notes_all, segments, 0) == pytest.approx(0.0, abs=1e-12)
    # a copy of the seed in one B bar lowers it
    partial = notes.copy()
    partial = partial[partial[:, ONSET] // FRAMES_PER_BAR != 4]
    partial = np.concatenate([partial, notes_in_bars(notes, 0, 1) + np.array([4 * FRAMES_PER_BAR, 0, 0, 0])])
    assert 0.5 < metrics.seed_adherence(partial, segments, 0) < 1.0
    assert math.isnan(metrics.seed_adherence(notes, parse_structure("A4 B4 C4 D4 E4"), 0))


def test_structure_contrast_separates_copies_from_other_material() -> None:
    rng = np.random.default_rng(1)
    segments = parse_structure("A4 B4 A4 C4 B4 A4")
    material = {label: [_bar(rng, tuple(range(32)), tuple(range(12)), 5) for _ in range(4)] for label in "ABC"}
    notes = _concat_bars([bar for seg in segments for bar in material[seg.label]])
    result = metrics.structure_contrast(notes, segments)
    assert result["auc"] == 1.0 and result["contrast"] > 0.3


def test_structure_contrast_auc_is_chance_for_shuffled_labels() -> None:
    rng = np.random.default_rng(2)
    notes = _concat_bars([_bar(rng, tuple(range(32)), tuple(range(12)), 5) for _ in range(48)])
    aucs, contrasts = [], []
    for _ in range(20):  # labels unrelated to the material
        labels = rng.choice(list("ABCD"), size=24)
        result = metrics.structure_contrast(notes, parse_structure(" ".join(f"{label}2" for label in labels)))
        aucs.append(result["auc"])
        contrasts.append(result["contrast"])
    assert 0.45 < np.mean(aucs) < 0.55 and max(abs(a - 0.5) for a in aucs) < 0.15
    assert abs(np.mean(contrasts)) < 0.02


def test_rank_auc_handles_ties_as_half() -> None:
    positive = np.array([True, True, False, False])
    assert metrics._rank_auc(positive, np.array([0.9, 0.5, 0.5, 0.1])) == pytest.approx(0.875)
    assert metrics._rank_auc(positive, np.array([0.1, 0.2, 0.8, 0.9])) == 0.0


def test_pitch_class_entropy() -> None:
    octaves = _concat_bars([np.array([[0, 60, 80, 8], [8, 72, 80, 8], [16, 48, 80, 8]])] * 8)
    assert metrics.pitch_class_entropy(octaves, 1) == 0.0
    assert metrics.pitch_class_entropy(octaves, 4) == 0.0
    chromatic = _concat_bars([np.array([[2 * p, 60 + p, 80, 2] for p in range(12)])] * 8)
    assert metrics.pitch_class_entropy(chromatic, 1) == pytest.approx(math.log2(12), abs=1e-12)
    assert metrics.pitch_class_entropy(chromatic, 4) == pytest.approx(math.log2(12), abs=1e-12)
    # bars C, C#, (empty), C#: 1-bar windows all 0 (empty skipped); 2-bar windows 1, 0, 0 bits
    two = _concat_bars([np.array([[0, 60, 80, 8]]), np.array([[0, 61, 80, 8]]), np.zeros((0, 4)),
                        np.array([[0, 61, 80, 8]])])
    assert metrics.pitch_class_entropy(two, 1) == 0.0
    assert metrics.pitch_class_entropy(two, 2) == pytest.approx(1 / 3)
    assert math.isnan(metrics.pitch_class_entropy(np.zeros((0, 4), np.int32), 1, n_bars=4))


def test_grooving_similarity() -> None:
    rng = np.random.default_rng(4)
    same_rhythm = _concat_bars([np.array([[o, int(rng.integers(40, 90)), 80, 4] for o in (0, 6, 16, 22)])
                                for _ in range(6)])
    assert metrics.grooving_similarity(same_rhythm, 6) == 1.0
    # onsets {0, 8}, {0, 16}, {0, 8}: XOR 2, 0, 2 -> mean of 1 - 2/32, 1, 1 - 2/32
    bars = _concat_bars([np.array([[0, 60, 80, 4], [8, 62, 80, 4]]), np.array([[0, 60, 80, 4], [16, 64, 80, 4]]),
                         np.array([[0, 65, 80, 4], [8, 67, 80, 4], [8, 71, 80, 4]])])
    assert metrics.grooving_similarity(bars, 3) == pytest.approx((2 * (1 - 2 / 32) + 1) / 3)
    assert math.isnan(metrics.grooving_similarity(bars, 1))


def test_bits_per_beat() -> None:
    assert metrics.bits_per_beat(3 * 10 * math.log(2), 10) == pytest.approx(3.0)
    with pytest.raises(ValueError):
        metrics.bits_per_beat(1.0, 0)


def test_song_metrics_bundles_everything() -> None:
    synthetic = generate_song(0, 1)
    song = Song(song_id=synthetic.song_id, notes_Nx4=synthetic.notes_Nx4, n_bars=synthetic.n_bars,
                tempo_bpm=synthetic.tempo_bpm, segments=synthetic.segments, label_source="synthetic")
    with_seed = metrics.song_metrics(song, seed_segment=0)
    assert set(with_seed) == {"SI_2-8", "SI_8-16", "SI_16+", "structure_contrast", "structure_auc",
                              "pitch_class_entropy_1bar", "pitch_class_entropy_4bar", "grooving_similarity",
                              "seed_adherence"}
    assert all(math.isfinite(value) for value in with_seed.values())
    assert with_seed["structure_auc"] > 0.7 and with_seed["seed_adherence"] > 0.2  # repeats resemble each other
    assert 0 < with_seed["SI_16+"] < 1 and 0 < with_seed["grooving_similarity"] <= 1
    assert "seed_adherence" not in metrics.song_metrics(song, seed_segment=None)
