r"""Structureness indicator SI exactly as MusDr's Python pipeline computes it.

Place in the data flow: [7] evaluation. SI (Wu and Yang, "The Jazz Transformer on the
Front Line", ISMIR 2020) is the maximum of Müller's fitness scape plot (Müller, Jiang,
Grosche, IEEE TASLP 2013) over a range of segment durations. The paper computed it
with MusDr (``run_python_scapeplot.py`` + ``compute_structure_indicator``, which use
the FMP notebooks' functions); every stage here follows that code, quirks included:

1. 10 Hz chroma, each frame L2-normalised (a zero frame stays zero). MusDr takes it
   from audio (librosa's STFT chroma; ``sfs_jax.music.audio.stft_chroma``); from notes,
   ``note_chroma_10hz`` integrates each pitch class over the frame's 0.1 s, centred
   on k / 10 s like an STFT frame;
2. a 21-frame boxcar ("same" alignment, zero padded, divided by 21), every 5th frame
   kept (2 Hz), each column L2-normalised; a column with norm <= 1e-3 becomes the
   uniform vector 1 / sqrt(12) (``smooth_downsample``);
3. S_c[i, j] = <roll(x_i, c), x_j> for the 12 cyclic shifts c; for 7 relative tempi
   exp(linspace(log 0.5, log 2, 7)) the columns are stretched to ceil(T / τ) by
   nearest-neighbour resampling, averaged over 16 cells along the diagonal forward and
   backward (zero outside), and resampled back; S = the maximum over c, τ and
   direction (``self_similarity``; not symmetrised);
4. relative threshold: the 25% largest cells kept and scaled to [0, 1], the others set
   to -2, then S[i, i] = 1 (``threshold_similarity``);
5. the fitness of every segment from its optimal path family: the score from the
   dynamic programme, the path-family length and coverage from the FMP code's
   backtracking, whose predecessor rules differ from the programme's at the first
   rows and the second column (``fitness_scape``);
6. SI(lo, hi) = the maximum of rows int(2 lo) - 1 .. int(2 hi) - 1 of the plot, so
   segment lengths 2 lo .. 2 hi frames, both ends included, with the zeros of the
   cells that do not fit; 0 when no row exists; hi defaults to 128 s
   (``structureness_indicator``).

Speed: the exact plot needs a T x (M + 1) programme per segment, about T⁴ / 6 cell
updates (T = 480 for a 4-minute song). Segments shorter than ``ScapeGrid.exact_below``
frames are all evaluated; longer ones on a grid refined around its best cells, whose
error ``benchmarks/structureness.py`` measures against the exact plot.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np
from numpy.lib.stride_tricks import as_strided
from scipy import signal

from sfs_jax.music import notes as notes_lib

PITCH_CLASSES = 12
CHROMA_RATE_HZ = 10.0  # MusDr: librosa chroma_stft with hop 2205 at 22050 Hz
SMOOTH_FRAMES = 21  # boxcar length at 10 Hz
DOWNSAMPLE = 5  # 10 Hz -> 2 Hz
FEATURE_RATE_HZ = CHROMA_RATE_HZ / DOWNSAMPLE
UNIFORM_BELOW_NORM = 1e-3  # normalize_feature_sequence(X, norm='2', threshold=0.001)
SI_MAX_SECONDS = 128.0  # compute_structure_indicator's default upper bound
PAPER_SI_RANGES_S: tuple[tuple[float, float | None], ...] = ((2, 8), (8, 16), (16, None))
_FITNESS_EPS = 1e-16  # the FMP code's eps in the normalised score, coverage and fitness
_SSM_ROW_CHUNK = 32  # rows of the stretched SSM smoothed at once (working set in cache)

# The backtracked path family rides along the programme as one int32 per cell:
# cells << _CELL_SHIFT  +  (coverage field + _COVER_OFFSET), both fields below 2**16
# for songs of fewer than 2**15 frames (4.5 hours); see ``_family_scores``.
_CELL_SHIFT = 16
_COVER_OFFSET = 1 << 15
_ONE_CELL = 1 << _CELL_SHIFT
_MAX_FRAMES = 1 << 15


@dataclasses.dataclass(frozen=True)
class SSMConfig:
    """Parameters of the enhanced, thresholded self-similarity matrix (MusDr's values)."""

    filter_length: int = 16  # L_smooth of compute_SM_from_filename
    tempo_rel_min: float = 0.5
    tempo_rel_max: float = 2.0
    num_tempi: int = 7
    transposition_invariant: bool = True  # shift_set = 0..11
    threshold_rel: float = 0.25  # the share of (largest) cells kept
    penalty: float = -2.0  # value of every cell below the threshold

    def tempi(self) -> np.ndarray:
        """exp(linspace(log min, log max, num)), computed as the FMP code does (the ceil of T / τ depends on it)."""
        return np.exp(np.linspace(np.log(self.tempo_rel_min), np.log(self.tempo_rel_max), self.num_tempi))


# ---------------------------------------------------------------- chroma


def note_chroma(notes_Nx4: np.ndarray, tempo_bpm: float, rate_hz: float, n_frames: int, *,
                centred: bool = True) -> np.ndarray:
    r"""Unnormalised chromagram ``[T, 12]`` from notes: seconds of sound per pitch class and frame.

    A note sounds during [on, off) seconds, on = onset_frames * s, off = (onset_frames +
    duration_frames) * s with s = 60 / (tempo_bpm * 8). Frame k covers [k / r, (k+1) / r)
    or, ``centred``, [(k - 1/2) / r, (k + 1/2) / r) (an STFT frame's centre is k / r):
    C[k, p] = total overlap of the notes of pitch class p with frame k.

    Exact in O(N + T): the overlap integral G(t) = sum_i (max(t - on_i, 0) - max(t -
    off_i, 0)) is evaluated at every frame boundary from cumulative sums of the events'
    weights and moments, and C[k] = G(end of k) - G(start of k).
    """
    notes_Nx4 = np.asarray(notes_Nx4).reshape(-1, len(notes_lib.NOTE_FIELDS))
    seconds_per_grid = 60.0 / (float(tempo_bpm) * notes_lib.FRAMES_PER_BEAT)
    onset_N = notes_Nx4[:, notes_lib.ONSET].astype(np.float64)
    shift = 0.5 if centred else 0.0  # boundaries at (k - shift) / r  <=>  times shifted by + shift frames
    on_N = onset_N * seconds_per_grid * rate_hz + shift
    off_N = (onset_N + notes_Nx4[:, notes_lib.DURATION]) * seconds_per_grid * rate_hz + shift
    pc_N = notes_Nx4[:, notes_lib.PITCH].astype(np.int64) % PITCH_CLASSES
    # an event at u frames adds w (k - u) to G at every boundary k > u, i.e. from floor(u) + 1 on
    time_E = np.concatenate([on_N, off_N])
    weight_E = np.concatenate([np.ones(len(on_N)), -np.ones(len(on_N))])
    pc_E = np.concatenate([pc_N, pc_N])
    first_boundary_E = np.clip(np.floor(time_E).astype(np.int64) + 1, 0, n_frames + 1)
    bins = (n_frames + 2) * PITCH_CLASSES
    flat_E = first_boundary_E * PITCH_CLASSES + pc_E
    weight_sum_Kx12 = np.cumsum(np.bincount(flat_E, weight_E, bins).reshape(-1, PITCH_CLASSES), axis=0)
    moment_sum_Kx12 = np.cumsum(np.bincount(flat_E, weight_E * time_E, bins).reshape(-1, PITCH_CLASSES), axis=0)
    boundary_K = np.arange(n_frames + 2, dtype=np.float64)[:, None]
    overlap_Kx12 = (boundary_K * weight_sum_Kx12 - moment_sum_Kx12)[:n_frames + 1] / rate_hz
    return np.maximum(np.diff(overlap_Kx12, axis=0), 0.0)


def normalize_frames(chroma_Tx12: np.ndarray) -> np.ndarray:
    """Each frame divided by its L2 norm; a frame of norm 0 stays zero (librosa's ``norm=2``)."""
    norm_T = np.linalg.norm(chroma_Tx12, axis=1, keepdims=True)
    return np.where(norm_T > 0, chroma_Tx12 / np.where(norm_T > 0, norm_T, 1.0), chroma_Tx12)


def chroma_frames(duration_s: float, rate_hz: float = CHROMA_RATE_HZ) -> int:
    """Frames of a centred STFT over ``duration_s`` seconds: 1 + floor(duration * rate) (librosa, center=True)."""
    return 1 + math.floor(duration_s * rate_hz + 1e-9)


def note_chroma_10hz(notes_Nx4: np.ndarray, tempo_bpm: float, duration_s: float) -> np.ndarray:
    """MusDr's stage 1 from notes: centred 10 Hz chroma over ``duration_s``, each frame L2-normalised."""
    n_frames = chroma_frames(duration_s)
    return normalize_frames(note_chroma(notes_Nx4, tempo_bpm, CHROMA_RATE_HZ, n_frames))


def smooth_downsample(chroma_Tx12: np.ndarray) -> np.ndarray:
    """MusDr's stage 2: 21-frame boxcar ("same", / 21), every 5th frame, L2 per column (uniform below 1e-3).

    ``[T10, 12]`` at 10 Hz -> ``[ceil(T10 / 5), 12]`` at 2 Hz.
    """
    kernel_1xK = np.ones((1, SMOOTH_FRAMES))
    smooth_12xT = signal.convolve(np.asarray(chroma_Tx12, np.float64).T, kernel_1xK, mode="same") / SMOOTH_FRAMES
    x_Tx12 = smooth_12xT[:, ::DOWNSAMPLE].T
    norm_T = np.sqrt(np.sum(x_Tx12 ** 2, axis=1, keepdims=True))
    uniform = np.full(PITCH_CLASSES, 1.0 / np.sqrt(PITCH_CLASSES))
    return np.where(norm_T > UNIFORM_BELOW_NORM, x_Tx12 / np.where(norm_T > 0, norm_T, 1.0), uniform)


# ---------------------------------------------------------------- SSM


def _resample_index(n_out: int, n_in: int) -> np.ndarray:
    """The FMP code's nearest-neighbour map: max(around((1..n_out) / n_out * n_in) - 1, 0)."""
    position = np.around(np.multiply(np.divide(np.arange(1, n_out + 1), n_out), n_in)) - 1
    return np.maximum(position, 0).astype(np.int64)


def _diagonal_window_sums(x_CxRxK: np.ndarray, length: int) -> np.ndarray:
    """W[c, a, b] = sum_{p < length} x[c, a + p, b + p]; shape [C, R - length + 1, K - length + 1].

    Binary decomposition of the window: sums over 1, 2, 4, ... cells are built by
    doubling, and the window is the sum of the blocks of its set bits, so the cost is
    O(log length) array additions instead of O(length).
    """
    out_r, out_k = x_CxRxK.shape[1] - length + 1, x_CxRxK.shape[2] - length + 1
    total, offset, block, size = None, 0, x_CxRxK, 1
    remaining = length
    while remaining:
        if remaining & 1:
            part = block[:, offset:offset + out_r, offset:offset + out_k]
            total = part if total is None else total + part
            offset += size
        remaining >>= 1
        if remaining:
            block = block[:, :-size, :-size] + block[:, size:, size:]
            size *= 2
    return total


def self_similarity(x_Tx12: np.ndarray, config: SSMConfig = SSMConfig()) -> np.ndarray:
    r"""MusDr's enhanced, transposition-invariant similarity ``[T, T]`` (``compute_SM_TI``, direction 2).

    S = max over shifts c, tempi τ, and forward / backward of the column-stretched,
    diagonally smoothed S_c[i, j] = <roll(x_i, c), x_j> (module docstring, stage 3).
    Computed on the transpose A_c = S_cᵀ, where stretching columns becomes a contiguous
    row gather, and transposed back at the end; the diagonal windows are the same
    either way. Not symmetric: the stretch acts on one axis only.
    """
    x_Tx12 = np.asarray(x_Tx12, np.float64)
    n_frames = len(x_Tx12)
    n_shifts = PITCH_CLASSES if config.transposition_invariant else 1
    rolled_12xCT = np.concatenate([np.roll(x_Tx12, c, axis=1).T for c in range(n_shifts)], axis=1)
    # A_c[j, i] = <x_j, roll(x_i, c)> = S_c[i, j]
    sim_CxTxT = (x_Tx12 @ rolled_12xCT).reshape(n_frames, n_shifts, n_frames).transpose(1, 0, 2)
    length = int(config.filter_length)
    pad = length - 1
    # A_c with `pad` zero columns either side and one zero row (index T) for padding rows
    source_CxTxK = np.zeros((n_shifts, n_frames + 1, n_frames + 2 * pad))
    source_CxTxK[:, :n_frames, pad:pad + n_frames] = sim_CxTxT
    best_TxT = np.zeros((n_frames, n_frames))
    for tempo in config.tempi():
        n_rows = int(np.ceil(n_frames / tempo))
        # padded stretched matrix: `pad` zero rows, the n_rows stretched rows, `pad` zero rows
        row_source_R = np.full(n_rows + 2 * pad, n_frames)
        row_source_R[pad:pad + n_rows] = _resample_index(n_rows, n_frames)
        window_RxK = np.empty((n_rows + pad, n_frames + pad))
        for lo in range(0, n_rows + pad, _SSM_ROW_CHUNK):  # row chunks stay in cache
            hi = min(lo + _SSM_ROW_CHUNK, n_rows + pad)
            chunk_CxRxK = source_CxTxK[:, row_source_R[lo:hi + pad]]
            np.max(_diagonal_window_sums(chunk_CxRxK, length), axis=0, out=window_RxK[lo:hi])
        back_rows = _resample_index(n_frames, n_rows)
        np.maximum(best_TxT, window_RxK[pad:, pad:][back_rows], out=best_TxT)  # forward
        np.maximum(best_TxT, window_RxK[:n_rows, :n_frames][back_rows], out=best_TxT)  # backward
    return (best_TxT / length).T.copy()


def threshold_similarity(ssm_TxT: np.ndarray, config: SSMConfig = SSMConfig()) -> np.ndarray:
    r"""MusDr's ``threshold_matrix`` (relative, scale, penalty) followed by ``normalization_properties_SSM``.

    θ = the k-th smallest cell, k = round(T² (1 - ρ)) (k >= T² keeps nothing: all
    zero); cells below θ become 0. With m = the smallest positive cell and M the
    largest, if M > m every cell becomes (S - m) / (M - m) and the zero cells (those
    below θ, and any kept cell that was 0) the penalty; otherwise the matrix stays
    as it is (the FMP code prints a warning and skips both). Finally S[i, i] = 1.
    """
    out_TxT = np.array(ssm_TxT, np.float64)
    if out_TxT.min() < 0:
        raise ValueError("the similarity matrix to threshold has negative cells")
    k = int(np.round(out_TxT.size * (1.0 - config.threshold_rel)))
    if k < out_TxT.size:
        theta = np.partition(out_TxT.reshape(-1), k)[k]
        out_TxT[out_TxT < theta] = 0.0
    else:
        out_TxT[:] = 0.0
    positive = out_TxT > 0
    low = out_TxT[positive].min() if positive.any() else 0.0
    high = out_TxT.max()
    if high > low:
        zero = out_TxT == 0
        out_TxT = (out_TxT - low) / (high - low)
        out_TxT[zero] = config.penalty
    np.fill_diagonal(out_TxT, 1.0)
    return out_TxT


# ---------------------------------------------------------------- fitness scape plot


@dataclasses.dataclass(frozen=True, eq=False)
class FitnessScape:
    """Fitness scape plot: ``fitness_LxT[length - 1, start]`` for segments in 2 Hz frames.

    NaN marks cells not evaluated: segments that do not fit (start + length > T),
    lengths above ``fitness_scape``'s ``max_length``, and, for long segments, cells
    off the evaluation grid.
    """

    fitness_LxT: np.ndarray
    frame_rate_hz: float = FEATURE_RATE_HZ

    def max_fitness(self, lo_s: float, hi_s: float | None) -> float:
        """MusDr's SI: max over rows int(r lo) - 1 .. int(r hi) - 1 (lengths r lo .. r hi), 0 where nothing fits.

        Cells that do not fit count as MusDr's zeros; cells off the grid are skipped.
        """
        lo, hi = length_range_frames(lo_s, hi_s, self.frame_rate_hz)
        if lo < 1:
            raise ValueError(f"SI ranges start at 1 / {self.frame_rate_hz:g} s or later, got {lo_s} s")
        n_frames = self.fitness_LxT.shape[1]
        if lo > n_frames:
            return 0.0
        rows_LxT = self.fitness_LxT[lo - 1:min(hi, n_frames)]
        values = rows_LxT[~np.isnan(rows_LxT)]
        best = float(values.max()) if values.size else 0.0
        return max(best, 0.0) if min(hi, n_frames) > 1 else best  # rows of length >= 2 hold unfit zeros

    def filled(self) -> np.ndarray:
        """For plots: every fitting cell takes the value of the nearest evaluated cell.

        Within a length row, an unevaluated start takes the nearest evaluated start of
        that row; a row with nothing evaluated copies the nearest evaluated shorter row.
        Cells that do not fit stay NaN.
        """
        fit_LxT = self.fitness_LxT.copy()
        n_lengths, n_frames = fit_LxT.shape
        fits_LxT = np.arange(n_frames)[None, :] + np.arange(1, n_lengths + 1)[:, None] <= n_frames
        evaluated_LxT = ~np.isnan(fit_LxT)
        has_row_L = evaluated_LxT.any(axis=1)
        source_row_L = np.maximum.accumulate(np.where(has_row_L, np.arange(n_lengths), 0))
        fit_LxT = fit_LxT[source_row_L]
        evaluated_LxT = evaluated_LxT[source_row_L]
        col_T = np.arange(n_frames)
        left_LxT = np.maximum.accumulate(np.where(evaluated_LxT, col_T, -1), axis=1)
        right_LxT = np.minimum.accumulate(np.where(evaluated_LxT, col_T, n_frames)[:, ::-1], axis=1)[:, ::-1]
        use_right = (right_LxT < n_frames) & ((left_LxT < 0) | (right_LxT - col_T < col_T - left_LxT))
        source_LxT = np.where(use_right, right_LxT, np.maximum(left_LxT, 0))
        out_LxT = np.take_along_axis(fit_LxT, source_LxT, axis=1)
        return np.where(fits_LxT, out_LxT, np.nan)


def _strided_rows(ssm_TxP: np.ndarray, first_start: int, step: int, n_starts: int, width: int) -> np.ndarray:
    """``s[n, m, 0, g] = S[n, first_start + m + g step]`` for m < width - 1: a view, no copy."""
    last_column = first_start + (width - 2) + (n_starts - 1) * step
    if first_start < 0 or last_column >= ssm_TxP.shape[1]:  # as_strided does not check
        raise ValueError(f"segments reach column {last_column}, outside [0, {ssm_TxP.shape[1]})")
    row_stride, item = ssm_TxP.strides
    return as_strided(ssm_TxP[:, first_start:], shape=(len(ssm_TxP), width - 1, 1, n_starts),
                      strides=(row_stride, item, 0, item * step), writeable=False)


def _family_scores(rows: Callable[[int], np.ndarray], n_frames: int, lengths_L: np.ndarray,
                   n_starts: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""(score, path-family length, coverage), each ``[L, G]``, of L x G segments.

    ``rows(n)`` gives row n of every segment's similarity columns, ``[W - 1, L or 1, G]``
    with W = max(lengths_L) + 1: entry [m, l, g] is S[n, start(l, g) + m]. Segment
    (l, g) has lengths_L[l] frames. The FMP code's accumulated score matrix D
    ``[T, M + 1]`` (column 0 the "elevator"):

        D[0, 0] = 0,  D[0, 1] = S[0, s],  the rest of row 0 = -inf
        D[n, 0] = max(D[n-1, 0], D[n-1, M]),   D[n, 1] = D[n, 0] + S[n, s]
        D[n, m] = S[n, s+m-1] + max(D[n-1, m-1], D[n-1, m-2], D[n-2, m-1])    m >= 2

    (at m = 2 the second term is the elevator; at n = 1 the third is -inf). The
    score is max(D[T-1, 0], D[T-1, M]). The path family is the one its backtracking
    returns: from (T-1, M) unless D[T-1, M] < D[T-1, 0]; in a path, the first best of
    [(n-1, m-1), (n-2, m-1), (n-1, m-2)] with (n-2, ·) only for n > 2 and (·, m-2)
    only for m > 2; from column 1 to the elevator; down the elevator, into a path's
    end (n-1, M) when D[n-1, M] > D[n-1, 0]. Because each choice depends only on the
    predecessors' D, the family's length (cells) and coverage (sum over paths of
    rows spanned) are carried forward with the choice, one packed int32 per cell:
    +1 cell per path cell, -n when a path starts at row n, +n when it ends at row n-1.
    D is float64 and summed in the FMP code's order, so its values, and with them
    every choice and tie, are the FMP code's (for T >= 3; at T = 2 its row -1 wraps).

    Vectorized over segments: the rows are sequential, each row a few array operations
    over every (column, length, start), laid out [column, length, start].
    """
    if n_frames >= _MAX_FRAMES:
        raise ValueError(f"{n_frames} frames are too many for the scape plot (at most {_MAX_FRAMES - 1})")
    width = int(lengths_L.max()) + 1
    n_lengths = len(lengths_L)
    shape = (width, n_lengths, n_starts)
    d_prev2, d_prev1, d_cur = (np.full(shape, -np.inf) for _ in range(3))
    a_prev2, a_prev1, a_cur = (np.zeros(shape, np.int32) for _ in range(3))
    inner = max(width - 2, 0)  # columns m = 2 .. width - 1
    best_ab = np.empty((inner, n_lengths, n_starts))
    choose_b = np.empty(best_ab.shape, bool)
    choose_c = np.empty(best_ab.shape, bool)
    # flat index of column M_l for every (l, g): where each segment's paths end
    end_LxG = (lengths_L[:, None] * n_lengths + np.arange(n_lengths)[:, None]) * n_starts + np.arange(n_starts)
    row_WxLxG = rows(0)
    d_prev1[0] = 0.0
    a_prev1[0] = _COVER_OFFSET
    d_prev1[1] = row_WxLxG[0]
    a_prev1[1] = _COVER_OFFSET + _ONE_CELL
    for n in range(1, n_frames):
        row_WxLxG = rows(n)
        if inner:
            a_d, b_d, c_d = d_prev1[1:width - 1], d_prev2[1:width - 1], d_prev1[:width - 2]
            np.maximum(a_d, b_d, out=best_ab)
            np.maximum(best_ab, c_d, out=d_cur[2:])
            d_cur[2:] += row_WxLxG[1:]
            if n > 2:  # the backtracking looks two rows up only from row 3 on
                np.greater(b_d, a_d, out=choose_b)
                np.greater(c_d, best_ab, out=choose_c)
            else:
                choose_b.fill(False)
                np.greater(c_d, a_d, out=choose_c)
            choose_c[0] = False  # from column 2 the backtracking never steps to the elevator
            ann = a_cur[2:]
            np.copyto(ann, a_prev1[1:width - 1])
            np.copyto(ann, a_prev2[1:width - 1], where=choose_b)
            np.copyto(ann, a_prev1[:width - 2], where=choose_c)
            ann += _ONE_CELL
        end_d_LxG = np.take(d_prev1, end_LxG)
        jump_LxG = end_d_LxG > d_prev1[0]
        np.maximum(d_prev1[0], end_d_LxG, out=d_cur[0])
        np.copyto(a_cur[0], a_prev1[0])
        np.copyto(a_cur[0], np.take(a_prev1, end_LxG) + n, where=jump_LxG)  # a path ends at row n - 1
        np.add(d_cur[0], row_WxLxG[0], out=d_cur[1])
        np.add(a_cur[0], _ONE_CELL - n, out=a_cur[1])  # a path starts at row n
        d_prev2, d_prev1, d_cur = d_prev1, d_cur, d_prev2
        a_prev2, a_prev1, a_cur = a_prev1, a_cur, a_prev2
    end_d_LxG = np.take(d_prev1, end_LxG)
    ends_in_path = ~(end_d_LxG < d_prev1[0])
    score = np.maximum(d_prev1[0], end_d_LxG)
    packed = np.where(ends_in_path, np.take(a_prev1, end_LxG) + n_frames, a_prev1[0]).astype(np.int64)
    cells = packed >> _CELL_SHIFT
    coverage = (packed & (_ONE_CELL - 1)) - _COVER_OFFSET
    return score, cells, coverage


def _fitness(score: np.ndarray, cells: np.ndarray, coverage: np.ndarray, length: np.ndarray,
             n_frames: int) -> np.ndarray:
    r"""The FMP code's ``compute_fitness`` for a segment of M frames in a T-frame song:

        σ̄ = (score - M) / (cells + ε),   γ̄ = (coverage - M) / (T + ε),
        fitness = 2 σ̄ γ̄ / (σ̄ + γ̄ + ε),   ε = 1e-16

    (no clipping: a negative value stays negative, as in MusDr's plots).
    """
    score_n = (score - length) / (cells + _FITNESS_EPS)
    cover_n = (coverage - length) / (n_frames + _FITNESS_EPS)
    return 2 * score_n * cover_n / (score_n + cover_n + _FITNESS_EPS)


@dataclasses.dataclass(frozen=True)
class ScapeGrid:
    """Which segments ``fitness_scape`` evaluates.

    Every segment shorter than ``exact_below`` frames is evaluated. A segment of M >=
    ``exact_below`` frames is evaluated on a grid of step h = max(1, 2**floor(log2(M /
    divisor))) in both start and length (h / M in (1/(2 divisor), 1/divisor]); then, per
    refined range, pattern searches from the ``refine_seeds`` best grid cells, each
    ending in a window of ``polish_radius`` frames around its peak.
    ``ScapeGrid.exact(T)`` evaluates everything.
    """

    exact_below: int = 33  # SI 2-8 and 8-16 (lengths 4..32 frames) are exact
    divisor: int = 8
    refine_seeds: int = 8
    polish_radius: int = 3

    @classmethod
    def exact(cls, n_frames: int) -> ScapeGrid:
        return cls(exact_below=n_frames + 1)

    def step(self, length: int) -> int:
        if length < self.exact_below:
            return 1
        return max(1, 1 << math.floor(math.log2(length / self.divisor)))


class _ScapeEvaluator:
    """Evaluates fitness for batches of segments of one SSM and records them in a scape plot."""

    def __init__(self, ssm_TxT: np.ndarray) -> None:
        self.n_frames = len(ssm_TxT)
        # zero columns on the right so windows of segments near the end stay in bounds
        self.ssm_TxP = np.zeros((self.n_frames, 2 * self.n_frames + 1))
        self.ssm_TxP[:, :self.n_frames] = ssm_TxT
        self.fitness_LxT = np.full((self.n_frames, self.n_frames), np.nan)

    def _record(self, lengths_LxG: np.ndarray, starts_LxG: np.ndarray,
                scores: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        fit_LxG = _fitness(*scores, lengths_LxG, self.n_frames)
        valid_LxG = (starts_LxG + lengths_LxG <= self.n_frames) & (starts_LxG >= 0)
        self.fitness_LxT[lengths_LxG[valid_LxG] - 1, starts_LxG[valid_LxG]] = fit_LxG[valid_LxG]

    def evaluate_grid(self, first_start: int, step: int, n_starts: int, lengths_L: np.ndarray) -> None:
        """Every length of ``lengths_L`` at starts first_start, first_start + step, ..."""
        lengths_L = np.asarray(lengths_L, np.int64)
        s_TxWx1xG = _strided_rows(self.ssm_TxP, first_start, step, n_starts, int(lengths_L.max()) + 1)
        scores = _family_scores(s_TxWx1xG.__getitem__, self.n_frames, lengths_L, n_starts)
        starts_G = first_start + step * np.arange(n_starts)
        self._record(np.broadcast_to(lengths_L[:, None], scores[0].shape),
                     np.broadcast_to(starts_G[None, :], scores[0].shape), scores)

    def evaluate_pairs(self, lengths_K: np.ndarray, starts_K: np.ndarray) -> None:
        """Segments (lengths_K[k], starts_K[k]) in one programme (rows gathered per step)."""
        lengths_K, starts_K = np.asarray(lengths_K, np.int64), np.asarray(starts_K, np.int64)
        columns_WxK = starts_K[None, :] + np.arange(int(lengths_K.max()))[:, None]
        columns_WxK = np.minimum(columns_WxK, self.ssm_TxP.shape[1] - 1)
        scores = _family_scores(lambda n: self.ssm_TxP[n][columns_WxK][:, :, None], self.n_frames, lengths_K, 1)
        self._record(lengths_K[:, None], starts_K[:, None], scores)

    def _evaluate_missing(self, groups: list[list[tuple[int, int]]]) -> bool:
        """Evaluates, in one programme, every (length, start) of the groups not evaluated yet; False if none was."""
        todo = sorted({cell for group in groups for cell in group if np.isnan(self.fitness_LxT[cell[0] - 1, cell[1]])})
        if todo:
            self.evaluate_pairs(np.array([m for m, _ in todo]), np.array([s for _, s in todo]))
        return bool(todo)

    def refine(self, lo: int, hi: int, grid: ScapeGrid, max_moves: int = 64) -> None:
        """Pattern searches for the maximum over lengths [lo, hi] from the best cells so far, all at once.

        From a cell (M, s), evaluate its 3x3 neighbourhood (M + {-h, 0, h}, s + {-h, 0, h}),
        h = the grid step at M; move to the best neighbour if it is better, keeping h,
        otherwise halve h; stop when h < 1. Seeds: the ``grid.refine_seeds`` best cells,
        at most one per grid neighbourhood (distinct peaks, not one peak's shoulders).
        Every round evaluates the new cells of all searches in one programme.
        """
        rows_LxT = self.fitness_LxT[lo - 1:hi]
        order = np.argsort(np.where(np.isnan(rows_LxT), -np.inf, rows_LxT), axis=None)[::-1]
        searches: list[list[int]] = []  # [length, start, h]
        for flat in order:
            row, start = (int(v) for v in np.unravel_index(flat, rows_LxT.shape))
            if np.isnan(rows_LxT[row, start]) or len(searches) == grid.refine_seeds:
                break
            h = grid.step(lo + row)
            if all(abs(lo + row - m) > h or abs(start - s) > h for m, s, _ in searches):
                searches.append([lo + row, start, h])
        top = min(hi, self.n_frames)
        done: list[list[int]] = []
        for _ in range(max_moves):
            searches = [search for search in searches if search[2] >= 1]
            if not searches:
                break
            blocks = []
            for length, start, h in searches:
                lengths = [m for m in (length - h, length, length + h) if lo <= m <= top]
                starts = [s for s in (start - h, start, start + h) if 0 <= s <= self.n_frames - min(lengths)]
                blocks.append([(m, s) for m in lengths for s in starts if s + m <= self.n_frames])
            self._evaluate_missing(blocks)
            for search, block in zip(searches, blocks, strict=True):
                length, start, _ = search
                best_cell = max(block, key=lambda cell: self.fitness_LxT[cell[0] - 1, cell[1]])
                if self.fitness_LxT[best_cell[0] - 1, best_cell[1]] > self.fitness_LxT[length - 1, start]:
                    search[0], search[1] = best_cell
                else:
                    search[2] //= 2
            done += [search[:2] for search in searches if search[2] < 1]
        self._polish(lo, min(hi, self.n_frames), done, grid.polish_radius, max_moves)

    def _polish(self, lo: int, hi: int, points: list[list[int]], radius: int, max_moves: int) -> None:
        """Every cell within ``radius`` (in length and start) of each point, moving to the best until none moves.

        The fitness landscape is jagged at the scale of single frames, and its ridges run
        along fixed segment ends as well as along the axes, so a 3x3 pattern search can
        stop a few frames short of a peak; a (2 radius + 1)² window finds it.
        """
        for _ in range(max_moves):
            windows = [[(m, s) for m in range(length - radius, length + radius + 1) if lo <= m <= hi
                        for s in range(start - radius, start + radius + 1) if 0 <= s <= self.n_frames - m]
                       for length, start in points]
            if not self._evaluate_missing(windows):
                break
            for point, window in zip(points, windows, strict=True):
                point[:] = max(window, key=lambda cell: self.fitness_LxT[cell[0] - 1, cell[1]])


def _grid_batches(n_frames: int, max_length: int, grid: ScapeGrid, max_width_ratio: float = 1.3,
                  max_cells: int = 1 << 17) -> list[tuple[int, np.ndarray]]:
    """(step, lengths) batches covering the evaluation grid up to ``max_length``; a batch shares one start grid.

    Lengths with the same step are grouped while longest + 1 <= ``max_width_ratio`` *
    (shortest + 1) + 2 (every segment is padded to the longest) and a row of the batch
    has at most ``max_cells`` cells (cache size).
    """
    by_step: dict[int, list[int]] = {}
    length = 1
    while length <= max_length:
        step = grid.step(length)
        by_step.setdefault(step, []).append(length)
        length += step
    batches = []
    for step, lengths in by_step.items():
        current: list[int] = []
        for length in lengths:
            n_starts = (n_frames - (current[0] if current else length)) // step + 1
            too_wide = current and (length + 1 > max_width_ratio * (current[0] + 1) + 2
                                    or (length + 1) * (len(current) + 1) * n_starts > max_cells)
            if too_wide:
                batches.append((step, np.array(current)))
                current = []
            current.append(length)
        if current:
            batches.append((step, np.array(current)))
    return batches


def fitness_scape(ssm_TxT: np.ndarray, *, grid: ScapeGrid = ScapeGrid(), max_length: int | None = None,
                  refine_ranges_frames: Sequence[tuple[int, int]] = ()) -> FitnessScape:
    r"""Fitness scape plot of a thresholded SSM (``threshold_similarity``), MusDr's ``compute_fitness_scape_plot``.

    Lengths 1 .. ``max_length`` (default T). Every evaluated cell equals the FMP code's
    value; with the default ``grid`` segments of 33 frames or more are evaluated on a
    grid (``ScapeGrid``) plus pattern searches in each (lo, hi) of
    ``refine_ranges_frames`` (lengths in frames, both included). The maximum over the
    evaluated cells is then a lower bound of the exact one; ``benchmarks/structureness.py``
    measures the gap on real songs. ``grid=ScapeGrid.exact(T)`` evaluates everything.
    """
    evaluator = _ScapeEvaluator(np.asarray(ssm_TxT, np.float64))
    n_frames = evaluator.n_frames
    max_length = n_frames if max_length is None else min(int(max_length), n_frames)
    for step, lengths in _grid_batches(n_frames, max_length, grid):
        n_starts = (n_frames - int(lengths[0])) // step + 1
        evaluator.evaluate_grid(0, step, n_starts, lengths)
    for lo, hi in refine_ranges_frames:
        lo, hi = max(int(lo), grid.exact_below, 1), min(int(hi), max_length)
        if lo <= hi:
            evaluator.refine(lo, hi, grid)
    return FitnessScape(evaluator.fitness_LxT)


# ---------------------------------------------------------------- SI


def length_range_frames(lo_s: float, hi_s: float | None, rate_hz: float = FEATURE_RATE_HZ) -> tuple[int, int]:
    """Segment lengths (frames) of SI(lo, hi), both ends included: int(r lo) .. int(r hi), hi default 128 s."""
    hi_s = SI_MAX_SECONDS if hi_s is None else hi_s
    return int(lo_s * rate_hz), int(hi_s * rate_hz)


def si_frame_ranges(ranges: Sequence[tuple[float, float | None]] = PAPER_SI_RANGES_S) -> list[tuple[int, int]]:
    """``length_range_frames`` of each SI range: the lengths ``fitness_scape`` refines for them."""
    return [length_range_frames(lo, hi) for lo, hi in ranges]


def si_key(lo_s: float, hi_s: float | None) -> str:
    """'SI_2-8', 'SI_8-16', 'SI_16+'."""
    return f"SI_{lo_s:g}+" if hi_s is None else f"SI_{lo_s:g}-{hi_s:g}"


def thresholded_ssm_from_chroma(chroma_10hz_Tx12: np.ndarray, config: SSMConfig = SSMConfig()) -> np.ndarray:
    """Stages 2-4: 10 Hz chroma -> 2 Hz features -> enhanced SSM -> thresholded SSM with unit diagonal."""
    x_Tx12 = smooth_downsample(chroma_10hz_Tx12)
    return threshold_similarity(self_similarity(x_Tx12, config), config)


def si_from_chroma(chroma_10hz_Tx12: np.ndarray, ranges: Sequence[tuple[float, float | None]] = PAPER_SI_RANGES_S,
                   *, config: SSMConfig = SSMConfig(), grid: ScapeGrid = ScapeGrid()) -> dict[str, float]:
    """SI for each range from a 10 Hz chromagram (from notes or from audio): stages 2-6."""
    ssm_TxT = thresholded_ssm_from_chroma(chroma_10hz_Tx12, config)
    frame_ranges = si_frame_ranges(ranges)
    top = max(hi for _, hi in frame_ranges)
    scape = fitness_scape(ssm_TxT, grid=grid, max_length=top, refine_ranges_frames=frame_ranges)
    return {si_key(lo, hi): scape.max_fitness(lo, hi) for lo, hi in ranges}


def structureness_indicator(notes_Nx4: np.ndarray, tempo_bpm: float, duration_s: float,
                            ranges: Sequence[tuple[float, float | None]] = PAPER_SI_RANGES_S, *,
                            config: SSMConfig = SSMConfig(), grid: ScapeGrid = ScapeGrid()) -> dict[str, float]:
    r"""MusDr's SI(lo, hi) of a song given as notes over ``duration_s`` seconds (module docstring).

    Keys from ``si_key``; values are MusDr's: the maximum fitness of segments lasting
    2 lo .. 2 hi frames at 2 Hz (both included), 0 when none fits.
    """
    if duration_s <= 0:
        raise ValueError(f"duration_s must be positive, got {duration_s}")
    return si_from_chroma(note_chroma_10hz(notes_Nx4, tempo_bpm, duration_s), ranges, config=config, grid=grid)
