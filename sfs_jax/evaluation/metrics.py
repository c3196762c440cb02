r"""Objective metrics for generated songs (SFS.md section 5), computed from notes.

Place in the data flow: [7] evaluation. Every function here is a pure numpy function
of a note array (``sfs_jax.music.notes``: int32 ``[N, 4]`` onset_frames, pitch,
velocity, duration_frames on the 8-frames-per-beat, 32-frames-per-bar grid) and, where
structure matters, the song's ``Segment`` tuple. Nothing is rendered to audio.

Metrics and their sources:

- structureness indicator SI (Wu and Yang, "The Jazz Transformer on the Front Line",
  ISMIR 2020) exactly as MusDr computes it: ``sfs_jax.evaluation.structureness``;
- seed adherence and structure contrast (this project's objective stand-ins for the
  paper's listening test), from position-aligned bar similarities;
- pitch-class entropy H1/H4 and grooving pattern similarity GS (Wu and Yang 2020,
  as in their MusDr code);
- bits per beat.

Bar-level arrays use ``B`` for bars.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

from sfs_jax.evaluation import structureness
from sfs_jax.music import notes as notes_lib
from sfs_jax.music.song import Song
from sfs_jax.music.structure import Segment

PITCH_CLASSES = 12


# ---------------------------------------------------------------- bar-level metrics


def _bars_of(notes_Nx4: np.ndarray, n_bars: int) -> tuple[np.ndarray, np.ndarray]:
    """(bar, position in bar) of every note with onset in bars [0, n_bars)."""
    onset_N = np.asarray(notes_Nx4)[:, notes_lib.ONSET].astype(np.int64)
    keep_N = (onset_N >= 0) & (onset_N < n_bars * notes_lib.FRAMES_PER_BAR)
    return onset_N // notes_lib.FRAMES_PER_BAR, keep_N


def bar_pitch_class_counts(notes_Nx4: np.ndarray, n_bars: int) -> np.ndarray:
    """``[B, 12]`` number of note onsets of each pitch class in each bar."""
    notes_Nx4 = np.asarray(notes_Nx4).reshape(-1, len(notes_lib.NOTE_FIELDS))
    bar_N, keep_N = _bars_of(notes_Nx4, n_bars)
    pc_N = notes_Nx4[:, notes_lib.PITCH].astype(np.int64) % PITCH_CLASSES
    flat = bar_N[keep_N] * PITCH_CLASSES + pc_N[keep_N]
    return np.bincount(flat, minlength=n_bars * PITCH_CLASSES).reshape(n_bars, PITCH_CLASSES).astype(np.float64)


def bar_onset_patterns(notes_Nx4: np.ndarray, n_bars: int) -> np.ndarray:
    """``[B, 32]`` binary: 1 where at least one note starts at that frame of the bar."""
    notes_Nx4 = np.asarray(notes_Nx4).reshape(-1, len(notes_lib.NOTE_FIELDS))
    bar_N, keep_N = _bars_of(notes_Nx4, n_bars)
    onsets_BxF = np.zeros((n_bars, notes_lib.FRAMES_PER_BAR))
    onsets_BxF[bar_N[keep_N], notes_Nx4[keep_N, notes_lib.ONSET] % notes_lib.FRAMES_PER_BAR] = 1.0
    return onsets_BxF


def _cosine_matrix(x_BxD: np.ndarray) -> np.ndarray:
    """Cosine similarity of non-negative rows; two empty rows are identical (1), one empty row 0."""
    norm_B = np.linalg.norm(x_BxD, axis=1)
    unit_BxD = x_BxD / np.where(norm_B > 0, norm_B, 1.0)[:, None]
    cos_BxB = unit_BxD @ unit_BxD.T
    empty_B = norm_B == 0
    cos_BxB[np.outer(empty_B, empty_B)] = 1.0
    return np.clip(cos_BxB, 0.0, 1.0)


def bar_similarity(notes_Nx4: np.ndarray, n_bars: int) -> np.ndarray:
    r"""``[B, B]`` bar similarity in [0, 1]:  sim(a, b) = ½ cos(h_a, h_b) + ½ cos(o_a, o_b),

    h = pitch-class onset counts (``bar_pitch_class_counts``), o = onset pattern
    (``bar_onset_patterns``); cos of two empty bars is 1, of one empty bar 0. 1 exactly
    when both bars have proportional pitch-class counts and the same onset positions.
    """
    return 0.5 * (_cosine_matrix(bar_pitch_class_counts(notes_Nx4, n_bars))
                  + _cosine_matrix(bar_onset_patterns(notes_Nx4, n_bars)))


def _aligned_bar_pairs(segments: Sequence[Segment], first_P: np.ndarray,
                       second_P: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bars compared position by position for segment pairs (first_P[p], second_P[p]).

    Segment pair p contributes bars (start_a + k, start_b + k) for k < min(len_a, len_b).
    Returns (bar_a_Q, bar_b_Q, pair_Q).
    """
    start_S = np.array([s.start_bar for s in segments], np.int64)
    length_S = np.array([s.n_bars for s in segments], np.int64)
    count_P = np.minimum(length_S[first_P], length_S[second_P])
    pair_Q = np.repeat(np.arange(len(first_P)), count_P)
    position_Q = np.arange(len(pair_Q)) - np.repeat(np.cumsum(count_P) - count_P, count_P)
    return start_S[first_P][pair_Q] + position_Q, start_S[second_P][pair_Q] + position_Q, pair_Q


def _song_bars(segments: Sequence[Segment]) -> int:
    return max((s.end_bar for s in segments), default=0)


def seed_adherence(notes_Nx4: np.ndarray, segments: Sequence[Segment], seed_segment_index: int) -> float:
    r"""How much more the seed's same-label segments resemble it than the other segments do.

        sim(i, j) = mean_{k < min(|i|, |j|)} bar_similarity(start_i + k, start_j + k)
        adherence = mean_{j != seed, label_j = label_seed} sim(seed, j)
                    - mean_{label_j != label_seed} sim(seed, j)

    Range [-1, 1]: 1 when every same-label segment copies the seed bar for bar and no
    other segment shares a pitch class or an onset position with the aligned seed bar;
    about 0 when every segment resembles the seed equally (e.g. all copies of it).
    NaN if the seed's label has no other segment or no segment has another label.
    """
    seed = segments[seed_segment_index]
    others_P = np.array([j for j in range(len(segments)) if j != seed_segment_index], np.int64)
    same_P = np.array([segments[j].label == seed.label for j in others_P], bool)
    if not same_P.any() or same_P.all():
        return math.nan
    sim_BxB = bar_similarity(notes_Nx4, _song_bars(segments))
    bar_a_Q, bar_b_Q, pair_Q = _aligned_bar_pairs(segments, np.full(len(others_P), seed_segment_index), others_P)
    segment_sim_P = np.bincount(pair_Q, sim_BxB[bar_a_Q, bar_b_Q], len(others_P)) / np.bincount(pair_Q,
                                                                                                minlength=len(others_P))
    return float(segment_sim_P[same_P].mean() - segment_sim_P[~same_P].mean())


def _rank_auc(positive_Q: np.ndarray, score_Q: np.ndarray) -> float:
    """ROC-AUC = P(score of a positive > score of a negative) + ½ P(tie) (Mann-Whitney U from
    average ranks): (sum of positive ranks - n_pos (n_pos + 1) / 2) / (n_pos n_neg)."""
    n_pos, n_neg = int(positive_Q.sum()), int((~positive_Q).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks_Q = stats.rankdata(score_Q)  # ties get their average rank
    return float((ranks_Q[positive_Q].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def structure_contrast(notes_Nx4: np.ndarray, segments: Sequence[Segment]) -> dict[str, float]:
    r"""Do same-label segments sound alike and different-label segments different?

    Over every pair of segments (i < j) and aligned positions k < min(|i|, |j|) the
    bar pair (start_i + k, start_j + k) has similarity ``bar_similarity`` and is
    "same" if label_i = label_j:

        contrast = mean sim of same pairs - mean sim of different pairs   in [-1, 1]
        auc      = ROC-AUC of sim separating same from different pairs     in [0, 1]

    (1: every same pair more similar than every different pair; 0.5: no separation).
    NaN when either kind of pair is missing.
    """
    n_segments = len(segments)
    first_P, second_P = np.triu_indices(n_segments, k=1)
    labels_S = np.array([s.label for s in segments])
    sim_BxB = bar_similarity(notes_Nx4, _song_bars(segments))
    bar_a_Q, bar_b_Q, pair_Q = _aligned_bar_pairs(segments, first_P, second_P)
    same_Q = (labels_S[first_P] == labels_S[second_P])[pair_Q]
    sim_Q = sim_BxB[bar_a_Q, bar_b_Q]
    if same_Q.all() or not same_Q.any():
        return {"contrast": math.nan, "auc": math.nan}
    return {"contrast": float(sim_Q[same_Q].mean() - sim_Q[~same_Q].mean()), "auc": _rank_auc(same_Q, sim_Q)}


def bits_per_beat(nll_nats_sum: float, n_beats: float) -> float:
    """Bits per beat = total negative log-likelihood in nats / (beats * ln 2)."""
    if n_beats <= 0:
        raise ValueError(f"n_beats must be positive, got {n_beats}")
    return float(nll_nats_sum) / (float(n_beats) * math.log(2.0))


def pitch_class_entropy(notes_Nx4: np.ndarray, window_bars: int, n_bars: int | None = None) -> float:
    r"""Mean pitch-class histogram entropy H_w (Wu and Yang 2020, eq. (1); MusDr
    ``compute_piece_pitch_entropy``).

    For every window of w consecutive bars (stride 1 bar, as MusDr; one window of all
    bars if the song is shorter than w), h = note counts per pitch class, normalized:

        H = -sum_p h_p log2 h_p     (0 log 0 = 0),  averaged over non-empty windows.

    0 for a single pitch class, log2(12) for all twelve equally often. NaN if every
    window is empty. ``n_bars`` defaults to the bars spanned by the notes.
    """
    n_bars = notes_lib.bars_spanned(np.asarray(notes_Nx4)) if n_bars is None else int(n_bars)
    counts_Bx12 = bar_pitch_class_counts(notes_Nx4, n_bars)
    window = max(1, min(int(window_bars), n_bars))
    cumulative_Bx12 = np.vstack([np.zeros((1, PITCH_CLASSES)), np.cumsum(counts_Bx12, axis=0)])
    windows_Wx12 = cumulative_Bx12[window:] - cumulative_Bx12[:-window]
    total_W = windows_Wx12.sum(axis=1)
    windows_Wx12 = windows_Wx12[total_W > 0] / total_W[total_W > 0, None]
    if len(windows_Wx12) == 0:
        return math.nan
    logs_Wx12 = np.log2(np.where(windows_Wx12 > 0, windows_Wx12, 1.0))
    return float(np.mean(-(windows_Wx12 * logs_Wx12).sum(axis=1)))


def grooving_similarity(notes_Nx4: np.ndarray, n_bars: int) -> float:
    r"""Grooving pattern similarity GS (Wu and Yang 2020, eq. (2); MusDr
    ``compute_piece_groove_similarity``), over all pairs of bars:

        GS = mean_{i < j} 1 - XOR(o_i, o_j) / 32,   o = binary onset pattern of a bar.

    XOR counts come from one matrix product: |o_i| + |o_j| - 2 o_i·o_j. Exact over all
    pairs (MusDr samples at most 1000). NaN for fewer than 2 bars.
    """
    n_bars = int(n_bars)
    if n_bars < 2:
        return math.nan
    onsets_BxF = bar_onset_patterns(notes_Nx4, n_bars)
    count_B = onsets_BxF.sum(axis=1)
    xor_BxB = count_B[:, None] + count_B[None, :] - 2.0 * (onsets_BxF @ onsets_BxF.T)
    first_P, second_P = np.triu_indices(n_bars, k=1)
    return float(np.mean(1.0 - xor_BxB[first_P, second_P] / notes_lib.FRAMES_PER_BAR))


def song_seconds(song: Song) -> float:
    """Duration of the song's bars at its tempo."""
    return song.n_bars * notes_lib.BEATS_PER_BAR * 60.0 / song.tempo_bpm


def song_metrics(song: Song, seed_segment: int | None) -> dict[str, float]:
    """Every note-level metric of one song (seed adherence only when a seed is given).

    Keys: SI_2-8, SI_8-16, SI_16+, structure_contrast, structure_auc,
    pitch_class_entropy_1bar, pitch_class_entropy_4bar, grooving_similarity, and
    seed_adherence.
    """
    notes_Nx4 = np.asarray(song.notes_Nx4)
    result = structureness.structureness_indicator(notes_Nx4, song.tempo_bpm, song_seconds(song))
    contrast = structure_contrast(notes_Nx4, song.segments)
    result["structure_contrast"] = contrast["contrast"]
    result["structure_auc"] = contrast["auc"]
    result["pitch_class_entropy_1bar"] = pitch_class_entropy(notes_Nx4, 1, song.n_bars)
    result["pitch_class_entropy_4bar"] = pitch_class_entropy(notes_Nx4, 4, song.n_bars)
    result["grooving_similarity"] = grooving_similarity(notes_Nx4, song.n_bars)
    if seed_segment is not None:
        result["seed_adherence"] = seed_adherence(notes_Nx4, song.segments, seed_segment)
    return result
