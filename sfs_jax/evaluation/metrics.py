r"""Objective metrics for generated songs (SFS.md section 5), computed from notes.

Place in the data flow: [7] evaluation. Every function here is a pure numpy function
of a note array (``sfs_jax.music.notes``: int32 ``[N, 4]`` onset_frames, pitch,
velocity, duration_frames on the 8-frames-per-beat, 32-frames-per-bar grid) and, where
structure matters, the song's ``Segment`` tuple. Nothing is rendered to audio.

Metrics and their sources:

- structureness indicator SI (Wu and Yang, "The Jazz Transformer on the Front Line",
  ISMIR 2020), the maximum of Müller's fitness scape plot (Müller, Jiang, Grosche,
  "A Robust Fitness Measure for Capturing Repetitions in Music Recordings With
  Applications to Audio Thumbnailing", IEEE TASLP 2013, first published as Müller,
  Grosche, Jiang, "A segment-based fitness measure for capturing repetitive
  structures of music recordings", ISMIR 2011) over a range of segment durations.
  Parameters follow the Jazz Transformer's evaluation (its MusDr scripts, which run
  the SM Toolbox of Müller, Jiang, Grohganz 2014): chroma at 2 Hz, smoothing over 20
  frames along 7 relative tempi in [0.5, 2] forward and backward, all 12 cyclic
  chroma shifts, keep the top 25% of cells, scale them to [0, 1], penalty -2.
  SI from notes differs in absolute value from SI of rendered audio (SFS.md section
  5): compare models with each other and with real songs through this same code only;
- seed adherence and structure contrast (this project's objective stand-ins for the
  paper's listening test), from position-aligned bar similarities;
- pitch-class entropy H1/H4 and grooving pattern similarity GS (Wu and Yang 2020,
  as in their MusDr code);
- bits per beat.

Frame-level arrays use ``T`` for 2 Hz frames (``chroma_Tx12``, ``ssm_TxT``), ``B`` for
bars; scape plots are indexed ``[length - 1, start]`` (``fitness_LxT``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import as_strided
from scipy import stats

from sfs_jax.music import notes as notes_lib
from sfs_jax.music.song import Song
from sfs_jax.music.structure import Segment

FEATURE_RATE_HZ = 2.0  # chroma frames per second (Wu and Yang 2020; SM Toolbox CENS 2 Hz)
PITCH_CLASSES = 12
PAPER_SI_RANGES_S: tuple[tuple[float, float | None], ...] = ((2, 8), (8, 16), (16, None))
_SSM_ROW_CHUNK = 32  # rows of the stretched SSM smoothed at once (working set in cache)
_SILENT_NORM = 1e-9  # a chroma frame with less energy than this (seconds of sound) is silence

# Fixed-point layout of the scape-plot dynamic programme (see ``_family_scores``).
_PACKED_BITS = 59  # |packed value| < 2**59 for every reachable cell
_NEG_INF = -(1 << 61)  # "unreachable": below any reachable value even after T additions
_MAX_SCORE_FRACTION_BITS = 20


@dataclasses.dataclass(frozen=True)
class SSMConfig:
    """Parameters of the enhanced, thresholded self-similarity matrix.

    Defaults are those of the Jazz Transformer's SI (MusDr ``sm_compute_scapeplot.m``):
    ``smoothLenSM = 20``, ``tempoRelMin/Max = 0.5/2``, ``tempoNum = 7``,
    forward-backward smoothing, ``circShift = 0:11``, relative threshold 0.25 with
    scaling and penalty -2.
    """

    filter_length: int = 20  # L, in 2 Hz frames (10 s)
    tempo_rel_min: float = 0.5
    tempo_rel_max: float = 2.0
    num_tempi: int = 7
    transposition_invariant: bool = True  # maximum over the 12 cyclic chroma shifts
    threshold_rel: float = 0.25  # fraction of cells kept
    penalty: float = -2.0  # value of every cell below the threshold

    def tempi(self) -> np.ndarray:
        """Relative tempi, log-spaced: exp(linspace(log min, log max, num))."""
        return np.geomspace(self.tempo_rel_min, self.tempo_rel_max, self.num_tempi)


@dataclasses.dataclass(frozen=True, eq=False)
class FitnessScape:
    """Fitness scape plot: ``fitness_LxT[length - 1, start]`` for segments in 2 Hz frames.

    NaN marks cells not evaluated: segments that do not fit (start + length > T) and,
    for long segments, cells off the evaluation grid (see ``fitness_scape``).
    """

    fitness_LxT: np.ndarray
    frame_rate_hz: float = FEATURE_RATE_HZ

    def max_fitness(self, lo_s: float, hi_s: float | None) -> float:
        """Max fitness over evaluated segments with duration in [lo_s, hi_s) seconds; NaN if none."""
        lo, hi = _duration_range_frames(lo_s, hi_s, self.frame_rate_hz, len(self.fitness_LxT))
        rows = self.fitness_LxT[lo - 1:hi - 1]
        return float(np.nanmax(rows)) if np.any(~np.isnan(rows)) else math.nan

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


# ---------------------------------------------------------------- chroma and SSM


def chroma_2hz(notes_Nx4: np.ndarray, tempo_bpm: float, *, n_frames: int | None = None,
               velocity_weighted: bool = False, normalize: bool = True) -> np.ndarray:
    r"""Chromagram ``[T, 12]`` at 2 Hz computed from notes (no audio).

    A note sounds during [on, off) seconds, on = onset_frames * s, off = (onset_frames +
    duration_frames) * s with s = 60 / (tempo_bpm * 8). Frame k covers [k/2, (k+1)/2) s:

        C[k, p] = sum over notes with pitch % 12 == p of  w * |[on, off) ∩ [k/2, (k+1)/2)|

    with w = 1, or velocity / 127 if ``velocity_weighted``. With ``normalize`` each
    frame is divided by its Euclidean norm (the SSM is then a cosine similarity); a
    silent frame stays the zero vector. ``n_frames`` defaults to ceil(2 * last offset).

    Computed exactly in O(N + T): the overlap integral G(t) = sum_i w_i (max(t - on_i, 0)
    - max(t - off_i, 0)) is evaluated at every frame boundary from cumulative sums of
    per-boundary event weights, and C[k] = G((k+1)/2) - G(k/2).
    """
    notes_Nx4 = np.asarray(notes_Nx4).reshape(-1, len(notes_lib.NOTE_FIELDS))
    seconds_per_frame = 60.0 / (float(tempo_bpm) * notes_lib.FRAMES_PER_BEAT)
    onset_N = notes_Nx4[:, notes_lib.ONSET].astype(np.float64)
    on_N = onset_N * seconds_per_frame * FEATURE_RATE_HZ  # in chroma frames
    off_N = (onset_N + notes_Nx4[:, notes_lib.DURATION]) * seconds_per_frame * FEATURE_RATE_HZ
    if n_frames is None:
        n_frames = math.ceil(off_N.max() - 1e-9) if len(off_N) else 0
    weight_N = notes_Nx4[:, notes_lib.VELOCITY] / 127.0 if velocity_weighted else np.ones(len(on_N))
    pc_N = notes_Nx4[:, notes_lib.PITCH].astype(np.int64) % PITCH_CLASSES
    # Events: +w at each onset, -w at each offset; an event at u frames adds w * (k - u)
    # to G at every boundary k > u, i.e. from boundary floor(u) + 1 on.
    time_E = np.concatenate([on_N, off_N])
    weight_E = np.concatenate([weight_N, -weight_N])
    pc_E = np.concatenate([pc_N, pc_N])
    first_boundary_E = np.minimum(np.floor(time_E).astype(np.int64) + 1, n_frames + 1)
    bins = (n_frames + 2) * PITCH_CLASSES
    flat_E = first_boundary_E * PITCH_CLASSES + pc_E
    weight_sum_Kx12 = np.cumsum(np.bincount(flat_E, weight_E, bins).reshape(-1, PITCH_CLASSES), axis=0)
    moment_sum_Kx12 = np.cumsum(np.bincount(flat_E, weight_E * time_E, bins).reshape(-1, PITCH_CLASSES), axis=0)
    boundary_K = np.arange(n_frames + 2, dtype=np.float64)[:, None]
    overlap_Kx12 = (boundary_K * weight_sum_Kx12 - moment_sum_Kx12)[:n_frames + 1] / FEATURE_RATE_HZ
    chroma_Tx12 = np.maximum(np.diff(overlap_Kx12, axis=0), 0.0)
    if normalize:
        norm_T = np.linalg.norm(chroma_Tx12, axis=1, keepdims=True)
        chroma_Tx12 = np.where(norm_T > _SILENT_NORM, chroma_Tx12 / np.maximum(norm_T, _SILENT_NORM), 0.0)
    return chroma_Tx12


def _resample_index(n_out: int, n_in: int) -> np.ndarray:
    """Nearest-neighbour index map stretching n_in samples to n_out: j -> round((j+1) n_in / n_out) - 1."""
    return np.clip(np.rint((np.arange(n_out) + 1) * (n_in / n_out)).astype(np.int64) - 1, 0, n_in - 1)


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


def self_similarity(chroma_Tx12: np.ndarray, config: SSMConfig = SSMConfig()) -> np.ndarray:
    r"""Enhanced, transposition-invariant self-similarity matrix ``[T, T]`` in [0, 1].

    Müller and Kurth's path-enhanced SSM as in the SM Toolbox (Müller, Jiang, Grohganz
    2014; FMP notebook C4S2 "SSM: Path Enhancement" and "Transposition Invariance"):

    1. for every cyclic shift c (0..11, or 0 only):  S_c[i, j] = <x_i, roll(x_j, c)>;
    2. for every relative tempo τ in ``config.tempi()``: stretch one axis of S_c to
       M_τ = ceil(T / τ) samples by nearest-neighbour resampling (j -> round((j+1) T /
       M_τ) - 1), average along the main diagonal over L = ``filter_length`` cells
       forward, F[i, j] = 1/L sum_{p<L} S[i+p, j+p], and backward, Bk[i, j] = 1/L
       sum_{p<L} S[i-p, j-p] (zero outside the matrix), and resample that axis back;
    3. S = max over c, τ, direction; then S := max(S, Sᵀ).

    Step 3's transpose maximum is this implementation's addition: smoothing along a
    tempo-τ line in (i, j) is the 1/τ line in (j, i), but the nearest-neighbour
    resampling makes the two differ by a cell here and there; taking the maximum makes
    the matrix exactly symmetric, as a self-similarity must be. It also makes the
    result independent of which axis step 2 stretches (S_c transposed is S_{-c}), so
    the rows are stretched (a contiguous row gather). The maximum over c is taken
    before resampling back (the two commute).
    With normalized chroma, S[i, i] = 1 for every frame whose forward or backward
    window is all non-silent.
    """
    chroma_Tx12 = np.asarray(chroma_Tx12, np.float32)
    n_frames = len(chroma_Tx12)
    n_shifts = PITCH_CLASSES if config.transposition_invariant else 1
    rolled_12xCT = np.concatenate([np.roll(chroma_Tx12, c, axis=1).T for c in range(n_shifts)], axis=1)
    sim_CxTxT = (chroma_Tx12 @ rolled_12xCT).reshape(n_frames, n_shifts, n_frames).transpose(1, 0, 2)
    length = int(config.filter_length)
    pad = length - 1
    # S_c with `pad` zero columns either side and one zero row (index T) for padding rows
    source_CxTxK = np.zeros((n_shifts, n_frames + 1, n_frames + 2 * pad), np.float32)
    source_CxTxK[:, :n_frames, pad:pad + n_frames] = sim_CxTxT
    best_TxT = np.zeros((n_frames, n_frames), np.float32)
    for tempo in config.tempi():
        n_rows = math.ceil(n_frames / tempo - 1e-9)
        # padded stretched matrix: `pad` zero rows, the n_rows stretched rows, `pad` zero rows
        row_source_R = np.full(n_rows + 2 * pad, n_frames)
        row_source_R[pad:pad + n_rows] = _resample_index(n_rows, n_frames)
        window_RxK = np.empty((n_rows + pad, n_frames + pad), np.float32)
        for lo in range(0, n_rows + pad, _SSM_ROW_CHUNK):  # row chunks stay in cache
            hi = min(lo + _SSM_ROW_CHUNK, n_rows + pad)
            chunk_CxRxK = source_CxTxK[:, row_source_R[lo:hi + pad]]
            np.max(_diagonal_window_sums(chunk_CxRxK, length), axis=0, out=window_RxK[lo:hi])
        back_rows = _resample_index(n_frames, n_rows)
        np.maximum(best_TxT, window_RxK[pad:, pad:][back_rows], out=best_TxT)  # forward
        np.maximum(best_TxT, window_RxK[:n_rows, :n_frames][back_rows], out=best_TxT)  # backward
    best_TxT /= length
    return np.maximum(best_TxT, best_TxT.T).astype(np.float64)


def threshold_similarity(ssm_TxT: np.ndarray, config: SSMConfig = SSMConfig()) -> np.ndarray:
    r"""Relative thresholding with scaling and penalty (SM Toolbox ``threshSM`` technique 2).

    With ρ = ``threshold_rel`` and the T² values of S sorted ascending as v_0 <= ... ,
    the threshold is θ = v_k, k = round(T² (1 - ρ)) (so about ρ of the cells are kept):

        S'[i, j] = (S[i, j] - θ) / (max S - θ)   if S[i, j] >= θ
        S'[i, j] = penalty                        otherwise,

    and finally S'[i, i] = 1 (MusDr's ``normalization_properties_SSM``: the trivial
    self-path of every segment scores exactly its length). If max S = θ (every kept
    cell equal, e.g. a silent song's all-zero matrix) the kept cells keep their value,
    as in the SM Toolbox, which skips the scaling then.
    """
    ssm_TxT = np.asarray(ssm_TxT, np.float64)
    values = ssm_TxT.reshape(-1)
    k = round(values.size * (1.0 - config.threshold_rel))
    if k >= values.size:
        out_TxT = np.full_like(ssm_TxT, config.penalty)
    else:
        theta = np.partition(values, k)[k]
        keep_TxT = ssm_TxT >= theta
        top = ssm_TxT.max()
        scaled_TxT = (ssm_TxT - theta) / (top - theta) if top > theta else ssm_TxT
        out_TxT = np.where(keep_TxT, scaled_TxT, config.penalty)
    np.fill_diagonal(out_TxT, 1.0)
    return out_TxT


# ---------------------------------------------------------------- fitness scape plot


@dataclasses.dataclass(frozen=True)
class _Packing:
    """Fixed-point packing of (score, path-family length, coverage) into one int64.

    packed = score_q << 2b  +  cells << b  +  cover, with score_q = score * 2**fraction_bits
    rounded, and both low fields in [0, 2**b). Integer addition then updates all three
    at once and one ``np.maximum`` picks the best predecessor, ties going to the longer
    path family, then to the larger coverage field.
    """

    field_bits: int
    fraction_bits: int

    @classmethod
    def for_size(cls, n_frames: int, max_abs_cell: float) -> _Packing:
        field_bits = int(2 * n_frames + 1).bit_length()  # fields hold values in [0, 2T]
        room = _PACKED_BITS - 2 * field_bits - math.ceil(math.log2(n_frames * max_abs_cell + 2))
        fraction_bits = min(_MAX_SCORE_FRACTION_BITS, room)
        if fraction_bits < 8:
            raise ValueError(f"{n_frames} frames are too many for the int64 scape-plot packing")
        return cls(field_bits, fraction_bits)

    def cell_increments(self, ssm_TxT: np.ndarray) -> np.ndarray:
        """Per-cell packed increment: the cell's score, and one more cell on the path."""
        score_q = np.rint(ssm_TxT * (1 << self.fraction_bits)).astype(np.int64)
        return (score_q << (2 * self.field_bits)) + (1 << self.field_bits)

    def unpack(self, packed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        mask = (1 << self.field_bits) - 1
        score = (packed >> (2 * self.field_bits)) / float(1 << self.fraction_bits)
        return score, (packed >> self.field_bits) & mask, packed & mask


def _family_scores(increments_TxP: np.ndarray, packing: _Packing, first_start: int, step: int,
                   n_starts: int, lengths_L: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Optimal path family of segments [s, s + M) for s = first_start + g step, M in lengths_L.

    Returns (score, path-family length, coverage), each ``[L, G]``. Müller et al. 2013,
    Section III: D is a [T, M + 1] accumulated score matrix over all T frames (rows)
    and the segment's M frames (columns 1..M) plus an "elevator" column 0:

        D[0, 0] = 0,  D[0, 1] = S[0, s],  every other cell of row 0 = -inf
        D[n, 0] = max(D[n-1, 0], D[n-1, M])                     (wait, or finish a path)
        D[n, 1] = D[n, 0] + S[n, s]                              (a path starts at frame s)
        D[n, m] = S[n, s+m-1] + max(D[n-1, m-1], D[n-2, m-1], D[n-1, m-2])   for m >= 2

    (the last predecessor only for m >= 3, so that every path starts on the segment's
    first frame and ends on its last; steps (1,1), (2,1), (1,2)). The family's score is
    max(D[T-1, 0], D[T-1, M]). Instead of backtracking, the path-family length (cells
    on all paths) and coverage (sum over paths of rows spanned) ride along in the low
    bits of the packed value (``_Packing``): a path entering column 1 at row n sets
    the cover field to covered - n + T, leaving column M after row n - 1 turns it back
    into covered + (n - start). Ties between equal scores go to the longer family.

    Vectorized over segments: the row recurrence is sequential, but each row is three
    array operations over every (column, length, start) of the batch, laid out
    [column, length, start] so each slice is contiguous.
    """
    n_frames = increments_TxP.shape[0]
    width = int(lengths_L.max()) + 1
    last_column = first_start + (width - 2) + (n_starts - 1) * step
    if first_start < 0 or last_column >= increments_TxP.shape[1]:  # as_strided does not check
        raise ValueError(f"segments reach column {last_column}, outside [0, {increments_TxP.shape[1]})")
    row_stride, item = increments_TxP.strides
    # inc_TxWxG[n, m, g] = increments[n, first_start + m + g * step]  (a view, no copy)
    inc_TxWxG = as_strided(increments_TxP[:, first_start:], shape=(n_frames, width - 1, n_starts),
                           strides=(row_stride, item, item * step), writeable=False)
    n_lengths = len(lengths_L)
    shape = (width, n_lengths, n_starts)
    prev2 = np.full(shape, _NEG_INF, np.int64)
    prev1 = prev2.copy()
    cur = prev2.copy()
    tmp = np.empty((width - 2, n_lengths, n_starts), np.int64) if width > 2 else None
    # flat index of D[n, M_l] for every (l, g): where each segment's paths end
    end_LxG = (lengths_L[:, None] * n_lengths + np.arange(n_lengths)[:, None]) * n_starts + np.arange(n_starts)
    prev1[0] = 0
    prev1[1] = inc_TxWxG[0, 0] + n_frames
    for n in range(1, n_frames):
        row_WxG = inc_TxWxG[n]
        if tmp is not None:
            np.maximum(prev1[1:width - 1], prev2[1:width - 1], out=tmp)
            np.maximum(tmp[1:], prev1[1:width - 2], out=tmp[1:])
            np.add(tmp, row_WxG[1:, None, :], out=cur[2:])
        finished_LxG = np.take(prev1, end_LxG) + (n - n_frames)
        np.maximum(prev1[0], finished_LxG, out=cur[0])
        np.add(cur[0], row_WxG[0] + (n_frames - n), out=cur[1])
        prev2, prev1, cur = prev1, cur, prev2
    best_LxG = np.maximum(prev1[0], np.take(prev1, end_LxG))
    return packing.unpack(best_LxG)


def _fitness(score: np.ndarray, cells: np.ndarray, coverage: np.ndarray, length: np.ndarray,
             n_frames: int) -> np.ndarray:
    r"""Müller et al. 2013, eqs. (9)-(11), for a segment of M frames in a T-frame song:

        σ̄ = (score - M) / cells,   γ̄ = (coverage - M) / T,   fitness = 2 σ̄ γ̄ / (σ̄ + γ̄),

    the trivial self-path (score M, coverage M) removed. Defined as 0 unless both are
    positive (the harmonic mean of a non-positive value is meaningless; with a
    self-path-only family both are 0).
    """
    score_n = (score - length) / np.maximum(cells, 1)
    cover_n = (coverage - length) / n_frames
    ok = (score_n > 0) & (cover_n > 0)
    return np.where(ok, 2 * score_n * cover_n / np.where(ok, score_n + cover_n, 1.0), 0.0)


@dataclasses.dataclass(frozen=True)
class ScapeGrid:
    """Which segments ``fitness_scape`` evaluates (see there for the approximation).

    Every segment shorter than ``exact_below_frames`` is evaluated. A segment of
    M >= ``exact_below_frames`` frames is evaluated on a grid of step
    h = max(1, 2**floor(log2(M / divisor))) in both start and length: h / M lies in
    (1/(2 divisor), 1/divisor]. ``ScapeGrid.exact(T)`` evaluates everything.
    """

    exact_below_frames: int = 32  # 16 s at 2 Hz: the SI ranges 2-8 s and 8-16 s are exact
    divisor: int = 8
    refine_seeds: int = 4  # pattern searches per refined range (``_ScapeEvaluator.refine``)

    @classmethod
    def exact(cls, n_frames: int) -> ScapeGrid:
        return cls(exact_below_frames=n_frames + 1)

    def step(self, length: int) -> int:
        if length < self.exact_below_frames:
            return 1
        return max(1, 1 << math.floor(math.log2(length / self.divisor)))


class _ScapeEvaluator:
    """Evaluates fitness for batches of segments of one SSM and records them in a scape plot."""

    def __init__(self, ssm_TxT: np.ndarray) -> None:
        self.n_frames = len(ssm_TxT)
        self.packing = _Packing.for_size(self.n_frames, max(1.0, float(np.abs(ssm_TxT).max())))
        increments = self.packing.cell_increments(ssm_TxT)
        # zero columns on the right so windows of segments near the end stay in bounds
        self.increments_TxP = np.zeros((self.n_frames, 2 * self.n_frames + 1), np.int64)
        self.increments_TxP[:, :self.n_frames] = increments
        self.fitness_LxT = np.full((self.n_frames, self.n_frames), np.nan)

    def evaluate(self, first_start: int, step: int, n_starts: int, lengths_L: np.ndarray) -> None:
        lengths_L = np.asarray(lengths_L, np.int64)
        score, cells, coverage = _family_scores(self.increments_TxP, self.packing, first_start, step,
                                                n_starts, lengths_L)
        starts_G = first_start + step * np.arange(n_starts)
        fit_LxG = _fitness(score, cells, coverage, lengths_L[:, None], self.n_frames)
        valid_LxG = (starts_G[None, :] + lengths_L[:, None] <= self.n_frames) & (starts_G[None, :] >= 0)
        rows, cols = np.nonzero(valid_LxG)
        self.fitness_LxT[lengths_L[rows] - 1, starts_G[cols]] = fit_LxG[rows, cols]

    def refine(self, lo: int, hi: int, grid: ScapeGrid, n_seeds: int, max_moves: int = 64) -> None:
        """Pattern search for the maximum over lengths [lo, hi) from the n_seeds best cells so far.

        From a cell (M, s) evaluate its 3x3 neighbourhood (M + {-h, 0, h}, s + {-h, 0, h}),
        h = the grid step at M; move to the best neighbour if it is better, keeping h,
        otherwise halve h; stop when h < 1.
        """
        rows_LxT = self.fitness_LxT[lo - 1:hi - 1]
        order = np.argsort(np.where(np.isnan(rows_LxT), -np.inf, rows_LxT), axis=None)[::-1]
        seeds = [np.unravel_index(flat, rows_LxT.shape) for flat in order[:n_seeds]]
        for row, start in seeds:
            if not np.isnan(rows_LxT[row, start]):
                self._pattern_search(lo, hi, lo + int(row), int(start), grid.step(lo + int(row)), max_moves)

    def _pattern_search(self, lo: int, hi: int, length: int, start: int, h: int, max_moves: int) -> None:
        best = self.fitness_LxT[length - 1, start]
        for _ in range(max_moves):
            if h < 1:
                break
            lengths = [m for m in (length - h, length, length + h) if lo <= m < min(hi, self.n_frames + 1)]
            starts = [s for s in (start - h, start, start + h) if 0 <= s <= self.n_frames - min(lengths)]
            self.evaluate(starts[0], h, len(starts), np.array(lengths))
            block = self.fitness_LxT[np.array(lengths)[:, None] - 1, np.array(starts)[None, :]]
            if np.nanmax(block) > best:
                i, j = np.unravel_index(np.nanargmax(block), block.shape)
                length, start, best = lengths[i], starts[j], float(block[i, j])
            else:
                h //= 2


def _grid_batches(n_frames: int, grid: ScapeGrid, max_width_ratio: float = 1.3,
                  max_cells: int = 1 << 18) -> list[tuple[int, np.ndarray]]:
    """(step, lengths) batches covering the evaluation grid; each batch shares one start grid.

    Lengths with the same step are grouped while longest + 1 <= ``max_width_ratio`` *
    (shortest + 1) + 2 (every segment is padded to the longest) and a row of the batch
    has at most ``max_cells`` cells (cache size).
    """
    by_step: dict[int, list[int]] = {}
    length = 1
    while length <= n_frames:
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


def fitness_scape(ssm_TxT: np.ndarray, *, grid: ScapeGrid = ScapeGrid(),
                  refine_ranges_frames: Sequence[tuple[int, int]] = ()) -> FitnessScape:
    r"""Fitness scape plot (Müller et al. 2013) of a thresholded SSM (``threshold_similarity``).

    For every segment α = [s, s + M) the optimal path family over α (``_family_scores``)
    gives σ̄ and γ̄ and fitness = 2 σ̄ γ̄ / (σ̄ + γ̄) (``_fitness``).

    Cost and approximation. The exact plot needs a T x (M + 1) dynamic programme for
    each of the T(T+1)/2 segments, about T⁴/6 cell updates (8.8e9 for a 4-minute song
    at 2 Hz, T = 480): far beyond 2 s in numpy. So, with the default ``grid``:

    - every segment shorter than 32 frames (16 s) is evaluated exactly: the SI ranges
      2-8 s and 8-16 s are exact;
    - a segment of M >= 32 frames is evaluated only on a grid (``ScapeGrid``): with
      h = 2**floor(log2(M / 8)), i.e. h = 4 for M in [32, 64), 8 for [64, 128), 16 for
      [128, 256), 32 for [256, 512), lengths 32, 36, ..., 60, 64, 72, ... and starts 0,
      h, 2h, ...; every evaluated value is exact, the others are NaN;
    - for each (lo, hi) in ``refine_ranges_frames`` (lengths in frames, hi exclusive) that
      reaches the grid, pattern searches from the 4 best grid cells of that range
      (``_ScapeEvaluator.refine``: 3x3 neighbourhoods at steps h, h/2, ..., 1, moving
      uphill) add exact values around them. Max over evaluated cells is a lower bound
      of the exact maximum; it misses only a higher peak between grid cells away from
      the 4 best grid cells. On 24 synthetic songs (T = 104..278) it was exact on 20
      and at most 0.0002 below on the others (grid alone: up to 0.013 below);
      tests/test_metrics.py checks it against the exact plot.

    ``grid=ScapeGrid.exact(T)`` gives the exact plot (minutes for T = 480).
    """
    evaluator = _ScapeEvaluator(np.asarray(ssm_TxT, np.float64))
    n_frames = evaluator.n_frames
    for step, lengths in _grid_batches(n_frames, grid):
        n_starts = (n_frames - int(lengths[0])) // step + 1
        evaluator.evaluate(0, step, n_starts, lengths)
    for lo, hi in refine_ranges_frames:
        lo, hi = max(int(lo), grid.exact_below_frames, 1), min(int(hi), n_frames + 1)
        if lo < hi:
            evaluator.refine(lo, hi, grid, grid.refine_seeds)
    return FitnessScape(evaluator.fitness_LxT)


def _duration_range_frames(lo_s: float, hi_s: float | None, rate_hz: float, n_frames: int) -> tuple[int, int]:
    """Segment lengths M (frames) with duration M / rate in [lo_s, hi_s): [lo, hi), clipped to [1, T + 1)."""
    lo = max(1, math.ceil(lo_s * rate_hz - 1e-9))
    hi = n_frames + 1 if hi_s is None else min(n_frames + 1, math.ceil(hi_s * rate_hz - 1e-9))
    return lo, max(lo, hi)


def si_key(lo_s: float, hi_s: float | None) -> str:
    """'SI_2-8', 'SI_8-16', 'SI_16+'."""
    return f"SI_{lo_s:g}+" if hi_s is None else f"SI_{lo_s:g}-{hi_s:g}"


def structureness_indicator(notes_Nx4: np.ndarray, tempo_bpm: float,
                            ranges: Sequence[tuple[float, float | None]] = PAPER_SI_RANGES_S, *,
                            duration_s: float | None = None, config: SSMConfig = SSMConfig(),
                            grid: ScapeGrid = ScapeGrid()) -> dict[str, float]:
    r"""Structureness indicators (Wu and Yang 2020): SI(lo, hi) = max fitness over segments
    whose duration M / 2 s lies in [lo, hi) (``hi=None``: no upper bound).

    Pipeline: ``chroma_2hz`` -> ``self_similarity`` -> ``threshold_similarity`` ->
    ``fitness_scape`` (exact below 16 s, grid plus refinement above; see there).
    MusDr's ``compute_structure_indicator`` takes lengths in [lo*2, hi*2] frames,
    both ends included; here ranges are half-open so adjacent ranges do not share
    segments. NaN when no segment of that duration fits in the song. Values are in
    [0, 1). ``duration_s`` (default: until the last note ends) sets T = ceil(2 duration).
    """
    n_frames = None if duration_s is None else math.ceil(duration_s * FEATURE_RATE_HZ - 1e-9)
    chroma_Tx12 = chroma_2hz(notes_Nx4, tempo_bpm, n_frames=n_frames)
    if len(chroma_Tx12) == 0:
        return {si_key(lo, hi): math.nan for lo, hi in ranges}
    ssm_TxT = threshold_similarity(self_similarity(chroma_Tx12, config), config)
    frame_ranges = [_duration_range_frames(lo, hi, FEATURE_RATE_HZ, len(ssm_TxT)) for lo, hi in ranges]
    scape = fitness_scape(ssm_TxT, grid=grid, refine_ranges_frames=frame_ranges)
    return {si_key(lo, hi): scape.max_fitness(lo, hi) for lo, hi in ranges}


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
    result = structureness_indicator(notes_Nx4, song.tempo_bpm, duration_s=song_seconds(song))
    contrast = structure_contrast(notes_Nx4, song.segments)
    result["structure_contrast"] = contrast["contrast"]
    result["structure_auc"] = contrast["auc"]
    result["pitch_class_entropy_1bar"] = pitch_class_entropy(notes_Nx4, 1, song.n_bars)
    result["pitch_class_entropy_4bar"] = pitch_class_entropy(notes_Nx4, 4, song.n_bars)
    result["grooving_similarity"] = grooving_similarity(notes_Nx4, song.n_bars)
    if seed_segment is not None:
        result["seed_adherence"] = seed_adherence(notes_Nx4, song.segments, seed_segment)
    return result
