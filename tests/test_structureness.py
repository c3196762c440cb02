"""MusDr-exact SI (sfs_jax/evaluation/structureness.py): each stage against a loop-by-loop oracle.

The oracle (tests/musdr_reference.py) transcribes MusDr's FMP functions cell by cell;
the fast code must equal it stage by stage, and the whole SI within 0.005 (it is
equal to rounding).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from data_pipeline.synthetic import generate_song
from sfs_jax.evaluation import structureness as st
from sfs_jax.music.notes import FRAMES_PER_BAR, ONSET, notes_in_bars
from tests import musdr_reference as ref


def _tiled(copies: int, bars: int = 8, song_index: int = 1) -> np.ndarray:
    """``bars`` bars of a synthetic song played ``copies`` times (120 bpm: 2 s per bar)."""
    passage = notes_in_bars(generate_song(0, song_index).notes_Nx4, 0, bars).astype(np.int64)
    parts = []
    for copy in range(copies):
        shifted = passage.copy()
        shifted[:, ONSET] += copy * bars * FRAMES_PER_BAR
        parts.append(shifted)
    return np.concatenate(parts).astype(np.int32)


def _random_penalised_ssm(rng: np.random.Generator, n: int) -> np.ndarray:
    s_TxT = np.clip(rng.normal(0.3, 0.5, (n, n)), 0.0, 1.0)
    s_TxT[rng.random((n, n)) < 0.6] = -2.0
    np.fill_diagonal(s_TxT, 1.0)
    return s_TxT


# ---------------------------------------------------------------- stages 1-4


def test_note_chroma_centres_frames_on_multiples_of_a_tenth() -> None:
    # 120 bpm: 1 s = 16 grid frames. Frame k covers [k/10 - 0.05, k/10 + 0.05).
    raw_Tx12 = st.note_chroma(np.array([[0, 60, 100, 16]]), 120.0, 10.0, 12)
    np.testing.assert_allclose(raw_Tx12[:, 0], [0.05] + [0.1] * 9 + [0.05, 0.0])
    assert raw_Tx12[:, 1:].sum() == 0
    chroma_Tx12 = st.note_chroma_10hz(np.array([[0, 60, 100, 16], [8, 64, 100, 8]]), 120.0, 2.0)
    assert chroma_Tx12.shape == (21, 12)  # 1 + floor(10 * 2 s), as a centred STFT of 2 s
    np.testing.assert_allclose(chroma_Tx12[1], np.eye(12)[0])  # unit norm per sounding frame
    np.testing.assert_allclose(chroma_Tx12[7, [0, 4]], [1 / math.sqrt(2)] * 2)
    np.testing.assert_array_equal(chroma_Tx12[15:], 0.0)  # silence stays zero


def test_smooth_downsample_matches_reference_and_uses_uniform_for_silence() -> None:
    rng = np.random.default_rng(0)
    chroma_Tx12 = st.normalize_frames(rng.random((57, 12)) ** 4)
    chroma_Tx12[30:] = 0.0  # 2.7 s of silence: its far end is uniform after smoothing
    x_Tx12 = st.smooth_downsample(chroma_Tx12)
    np.testing.assert_allclose(x_Tx12, ref.smooth_downsample(chroma_Tx12), atol=1e-12)
    assert x_Tx12.shape == (12, 12)  # frames 0, 5, ..., 55
    np.testing.assert_allclose(x_Tx12[-1], np.full(12, 1 / math.sqrt(12)))
    np.testing.assert_allclose(np.linalg.norm(x_Tx12, axis=1), 1.0)


def test_self_similarity_matches_reference_and_is_not_symmetrised() -> None:
    rng = np.random.default_rng(3)
    x_Tx12 = rng.random((13, 12)) ** 3
    x_Tx12 /= np.linalg.norm(x_Tx12, axis=1, keepdims=True)
    small = st.SSMConfig(filter_length=3, num_tempi=3)
    got = st.self_similarity(x_Tx12, small)
    np.testing.assert_allclose(got, ref.ssm(x_Tx12, 3, small.tempi()), atol=1e-12)
    plain = st.SSMConfig(filter_length=3, num_tempi=3, transposition_invariant=False)
    np.testing.assert_allclose(st.self_similarity(x_Tx12, plain), ref.ssm(x_Tx12, 3, plain.tempi(), shifts=1),
                               atol=1e-12)
    x_Tx12 = st.smooth_downsample(st.note_chroma_10hz(generate_song(0, 2).notes_Nx4[:60], 120.0, 12.0))
    default = st.self_similarity(x_Tx12)
    np.testing.assert_allclose(default, ref.ssm(x_Tx12), atol=1e-12)
    assert np.abs(default - default.T).max() > 1e-3  # MusDr stretches one axis only


def test_threshold_matches_reference_including_degenerate_matrices() -> None:
    rng = np.random.default_rng(5)
    s_TxT = np.round(rng.random((17, 17)), 2)  # many ties at the threshold
    np.testing.assert_array_equal(st.threshold_similarity(s_TxT), ref.threshold(s_TxT))
    out_TxT = st.threshold_similarity(s_TxT)
    assert set(np.unique(out_TxT[out_TxT < 0])) == {-2.0} and out_TxT.max() == 1.0
    constant = np.full((6, 6), 0.5)  # max == min: MusDr skips scaling and penalty
    np.testing.assert_array_equal(st.threshold_similarity(constant), ref.threshold(constant))
    with pytest.raises(ValueError, match="negative"):
        st.threshold_similarity(-s_TxT)


# ---------------------------------------------------------------- stage 5: the scape plot


@pytest.mark.parametrize("n", [3, 4, 9, 24])
def test_exact_scape_equals_the_fmp_backtracking(n: int) -> None:
    s_TxT = _random_penalised_ssm(np.random.default_rng(n), n)
    fast = st.fitness_scape(s_TxT, grid=st.ScapeGrid.exact(n)).fitness_LxT
    want = ref.scape(s_TxT)
    fits = ~np.isnan(fast)
    np.testing.assert_array_equal(fits, np.arange(n)[None, :] + np.arange(1, n + 1)[:, None] <= n)
    np.testing.assert_allclose(fast[fits], want[fits], rtol=0, atol=1e-12)
    assert np.nanmax(want) > 0.05  # not vacuous


def test_pair_evaluation_equals_grid_evaluation() -> None:
    s_TxT = _random_penalised_ssm(np.random.default_rng(11), 30)
    evaluator = st._ScapeEvaluator(s_TxT)
    lengths, starts = np.array([5, 17, 30, 1]), np.array([20, 3, 0, 29])
    evaluator.evaluate_pairs(lengths, starts)
    exact = st.fitness_scape(s_TxT, grid=st.ScapeGrid.exact(30)).fitness_LxT
    np.testing.assert_array_equal(evaluator.fitness_LxT[lengths - 1, starts], exact[lengths - 1, starts])


def test_grid_scape_is_exact_where_evaluated_and_within_a_thousandth_at_the_maximum() -> None:
    song = generate_song(0, 4)
    duration = song.n_bars * 4 * 60 / song.tempo_bpm
    ssm_TxT = st.thresholded_ssm_from_chroma(st.note_chroma_10hz(song.notes_Nx4, song.tempo_bpm, duration))
    n_frames = len(ssm_TxT)
    approx = st.fitness_scape(ssm_TxT, refine_ranges_frames=st.si_frame_ranges())
    exact = st.fitness_scape(ssm_TxT, grid=st.ScapeGrid.exact(n_frames))
    evaluated = ~np.isnan(approx.fitness_LxT)
    assert 0 < evaluated[40:].mean() < 0.3  # long segments really are on a sparse grid
    np.testing.assert_array_equal(approx.fitness_LxT[evaluated], exact.fitness_LxT[evaluated])
    np.testing.assert_array_equal(evaluated[:32], ~np.isnan(exact.fitness_LxT[:32]))  # up to 16 s: all
    for lo_s, hi_s in st.PAPER_SI_RANGES_S:
        got, want = approx.max_fitness(lo_s, hi_s), exact.max_fitness(lo_s, hi_s)
        assert want - 1e-3 <= got <= want
    filled_LxT = approx.filled()
    np.testing.assert_array_equal(np.isnan(filled_LxT), np.isnan(exact.fitness_LxT))


# ---------------------------------------------------------------- stage 6 and the whole SI


def test_si_rows_include_both_ends_and_unfit_zeros() -> None:
    fitness_LxT = np.full((40, 40), np.nan)
    fitness_LxT[15, 0] = 0.7  # a 16-frame (8 s) segment: in SI 2-8 and in SI 8-16
    fitness_LxT[3, 0] = -0.1
    scape = st.FitnessScape(fitness_LxT)
    assert scape.max_fitness(2, 8) == 0.7 and scape.max_fitness(8, 16) == 0.7
    assert scape.max_fitness(16, None) == 0.0  # only MusDr's zeros of unfit cells
    assert scape.max_fitness(21, None) == 0.0  # 42 frames do not fit in 40: MusDr's 0
    assert st.length_range_frames(16, None) == (32, 256)
    with pytest.raises(ValueError, match="SI ranges"):
        scape.max_fitness(0.2, 8)


def test_si_equals_the_musdr_oracle_on_a_song() -> None:
    notes = _tiled(3, bars=8, song_index=5)  # 24 bars at 120 bpm: 48 s, T = 97
    chroma_Tx12 = st.note_chroma_10hz(notes, 120.0, 48.0)
    oracle_ssm = ref.threshold(ref.ssm(ref.smooth_downsample(chroma_Tx12)))
    oracle_scape = ref.scape(oracle_ssm)
    got = st.structureness_indicator(notes, 120.0, 48.0)
    assert list(got) == ["SI_2-8", "SI_8-16", "SI_16+"]
    for (lo, hi), key in zip(st.PAPER_SI_RANGES_S, got, strict=True):
        want = ref.structure_indicator(oracle_scape, lo, 128.0 if hi is None else hi)
        assert abs(got[key] - want) < 0.005, key
        assert got[key] == pytest.approx(want, abs=1e-9), key
    assert got["SI_16+"] > 0.3  # the 16-s repeat is found


def test_repeats_score_higher_than_shuffled_bars() -> None:
    repeated = _tiled(4)  # 32 bars, 64 s at 120 bpm
    order_B = np.random.default_rng(0).permutation(32)
    shuffled = repeated.astype(np.int64).copy()
    shuffled[:, ONSET] = order_B[shuffled[:, ONSET] // FRAMES_PER_BAR] * FRAMES_PER_BAR \
        + shuffled[:, ONSET] % FRAMES_PER_BAR
    si_repeated = st.structureness_indicator(repeated, 120.0, 64.0)
    si_shuffled = st.structureness_indicator(shuffled, 120.0, 64.0)
    for key in si_repeated:
        assert si_repeated[key] > si_shuffled[key] + 0.1, key


def test_bad_duration_is_refused() -> None:
    with pytest.raises(ValueError, match="duration_s"):
        st.structureness_indicator(_tiled(1), 120.0, 0.0)
