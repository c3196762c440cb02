"""Deterministic automatic segmentation of a song into labelled phrases.

Place in the data flow: [2] notes -> segments, for songs without human structure
labels. SFS trained on ~32k songs segmented by spectral clustering of a bar
similarity matrix (SFS.md section 5); the original was not deterministic and had
no minimum segment length (SFS.md section 6). This module keeps the method and
fixes both:

1. ``bar_features``: per bar, duration-weighted chroma, bass chroma, top-voice
   pitch class per beat and onset rhythm, so bars with the same material match.
2. ``bar_similarity``: cosine similarity, optionally smoothed along diagonals
   (``path_smooth``) so repeated multi-bar passages stand out from chance matches.
3. ``detect_structure``:
   - spectral clustering of bars (recurrence + sequence affinity, eigengap choice
     of k, k-means seeded by ``seed``) sorts bars into kinds of material;
   - boundaries come from an exact dynamic programme over all tilings with segment
     lengths in [min, max]: it rewards cuts where a repeated passage starts or ends
     and where the rhythm texture changes, and lengths on the 4/8-bar phrase grid.
     This enforces both length limits by construction (no merge/split afterwards)
     and lets a song's phrase grid shift locally (pickups, 9-bar phrases);
   - segments share a label when their bars fall in the same clusters and also match
     bar by bar (A, B, C... in order of first appearance).
4. ``score_segmentation`` / ``aggregate_scores``: boundary P/R/F within a tolerance
   and pairwise label agreement, to compare against human labels (POP909).

Measured on the 680 POP909 songs whose human labels could be aligned with the MIDI,
mean over both annotators (boundaries +/- 1 bar): boundary F 0.69, pairwise F 0.68,
pairwise agreement 0.82. For scale: a fixed 8-bar grid scores 0.47 / 0.35 / 0.75,
one annotator against the other 0.89 / 0.92 / 0.95. The weights below were tuned
on those songs; on all 909 songs rendered from the annotations' own melody and
chord files (a different input) the scores are 0.67 / 0.63 / 0.81.

Array names carry shapes: B bars, L bar lines (B + 1, where cuts can go), O diagonal
offsets (2B - 1), F features, K clusters, R k-means restarts, D embedding dimensions,
S segments, N notes.
"""

from __future__ import annotations

import contextlib
import functools
import string
from collections.abc import Sequence

import numpy as np
import scipy.linalg
import scipy.optimize

from sfs_jax.music.notes import DURATION, FRAMES_PER_BAR, FRAMES_PER_BEAT, ONSET, PITCH
from sfs_jax.music.structure import Segment, validate_segments

try:  # Optional: only makes the tiny eigenproblems fast (see _single_threaded_blas).
    import threadpoolctl
except ImportError:  # pragma: no cover - depends on the environment
    threadpoolctl = None

PITCH_CLASSES = 12
BEATS_PER_BAR = FRAMES_PER_BAR // FRAMES_PER_BEAT
POSITIONS_PER_BAR = 16  # sixteenth notes: fine enough for rhythm, coarse enough to ignore jitter
FRAMES_PER_POSITION = FRAMES_PER_BAR // POSITIONS_PER_BAR
PHRASE_BARS = 4  # pop songs are built from 4-bar phrases (and 8-bar pairs of them)
LABELS = string.ascii_uppercase  # upper case: POP909 reserves lower case for non-melodic phrases

# Weights of the feature blocks in the material similarity: tune and harmony say what
# is played; rhythm and bass mostly say "same style", so they weigh less.
MATERIAL_WEIGHTS = {"chroma": 1.0, "bass": 0.5, "melody": 1.5, "rhythm": 0.5}

# Spectral clustering.
_PATH_HALF_WIDTH_BARS = 2
_RECURRENCE_NEIGHBOURS = 4  # a chorus recurs 3-5 times in a pop song
_RECURRENCE_SHARPNESS = 4.0  # exact repeats (~1) should far outweigh loose resemblance (~0.6)
_TEXTURE_WINDOW_BARS = 2
_TEXTURE_CHANGE_SCALE = 0.1  # texture continuity 1 -> link 1; 0.7 -> link 0.05
_KMEANS_RESTARTS = 3
_KMEANS_MAX_ITERS = 30

# Boundary programme. Evidence cues are differences of mean cosine similarities (0..1),
# deliberately not rescaled per song: a song without repeats or texture changes must
# not have its noise blown up into cuts. A cut pays _SEGMENT_COST, phrase-shaped
# lengths earn the bonuses. Tuned on POP909 human labels.
_NOVELTY_HALF_WIDTH_BARS = 2
_NOVELTY_WEIGHT = 1.5
_REPEAT_WINDOW_BARS = 4
_MIN_REPEAT_LAG_BARS = 2
_REPEAT_EDGE_WEIGHT = 1.5
_SEGMENT_COST = 1.0
_PHRASE4_BONUS = 0.5
_PHRASE8_BONUS = 0.3

# Labels.
_MAX_LABEL_SHIFT_BARS = 1  # a repeat may come a bar early or late relative to its segment
_MIN_CLUSTER_OVERLAP = 0.4  # same label needs this much shared cluster mix ...
_MIN_BAR_SIMILARITY = 0.5  # ... and this bar-by-bar similarity (default), both at once


@functools.cache
def _blas_controller():
    return threadpoolctl.ThreadpoolController() if threadpoolctl is not None else None


def _single_threaded_blas() -> contextlib.AbstractContextManager:
    """One BLAS thread while segmenting: on ~100x100 matrices a thread pool costs ~10x
    more than it saves (measured 1 ms vs 8-20 ms per eigh on 2 cores), and corpus
    builds already parallelize over songs."""
    controller = _blas_controller()
    return controller.limit(limits=1, user_api="blas") if controller else contextlib.nullcontext()


# ----------------------------------------------------------------------------- features


def _l2_normalize_rows(x_BxF: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; all-zero rows (silent bars) stay zero."""
    norm_B = np.linalg.norm(x_BxF, axis=1, keepdims=True)
    return x_BxF / np.where(norm_B > 0, norm_B, 1.0)


def _histogram(row_N: np.ndarray, col_N: np.ndarray, weight_N: np.ndarray,
               n_rows: int, n_cols: int) -> np.ndarray:
    """Weighted 2-D histogram [n_rows, n_cols] in one bincount (no loop over notes)."""
    flat = np.bincount(row_N * n_cols + col_N, weights=weight_N, minlength=n_rows * n_cols)
    return flat.reshape(n_rows, n_cols)


def _is_extreme_in_cell(cell_N: np.ndarray, pitch_N: np.ndarray, n_cells: int, highest: bool) -> np.ndarray:
    """Marks notes that are the highest (or lowest) pitch among notes sharing their cell."""
    sign = 1 if highest else -1
    best_C = np.full(n_cells, np.iinfo(np.int64).min, np.int64)
    np.maximum.at(best_C, cell_N, sign * pitch_N)
    return sign * pitch_N == best_C[cell_N]


def bar_feature_blocks(notes_Nx4: np.ndarray, n_bars: int) -> dict[str, np.ndarray]:
    """Unnormalized per-bar descriptors, each [B, width]; silent bars are all zero.

    - chroma (12): pitch classes weighted by the frames they sound inside the bar;
    - bass (12): chroma of the lowest note of each beat (the harmony's root motion);
    - melody (4 beats x 12): chroma of the top voice at each sixteenth, per beat, so
      the same chords under a different tune still differ;
    - rhythm (16): onsets per sixteenth, chord sizes included (the texture).
    Notes belong to the bar of their onset; onsets outside [0, n_bars) are ignored.
    """
    if n_bars < 0:
        raise ValueError(f"n_bars must be >= 0, got {n_bars}")
    notes = np.asarray(notes_Nx4, np.int64).reshape(-1, 4)
    onset_N = notes[:, ONSET]
    notes = notes[(onset_N >= 0) & (onset_N < n_bars * FRAMES_PER_BAR)]
    bar_N, frame_N = np.divmod(notes[:, ONSET], FRAMES_PER_BAR)
    pitch_N = notes[:, PITCH]
    pitch_class_N = pitch_N % PITCH_CLASSES
    sounding_frames_N = np.clip(notes[:, DURATION], 1, FRAMES_PER_BAR - frame_N).astype(np.float64)
    beat_N = frame_N // FRAMES_PER_BEAT
    position_N = frame_N // FRAMES_PER_POSITION

    bass = _is_extreme_in_cell(bar_N * BEATS_PER_BAR + beat_N, pitch_N, n_bars * BEATS_PER_BAR,
                               highest=False)
    top = _is_extreme_in_cell(bar_N * POSITIONS_PER_BAR + position_N, pitch_N,
                              n_bars * POSITIONS_PER_BAR, highest=True)
    return {
        "chroma": _histogram(bar_N, pitch_class_N, sounding_frames_N, n_bars, PITCH_CLASSES),
        "bass": _histogram(bar_N[bass], pitch_class_N[bass], sounding_frames_N[bass], n_bars,
                           PITCH_CLASSES),
        "melody": _histogram(bar_N[top], beat_N[top] * PITCH_CLASSES + pitch_class_N[top],
                             sounding_frames_N[top], n_bars, BEATS_PER_BAR * PITCH_CLASSES),
        "rhythm": _histogram(bar_N, position_N, np.ones(len(bar_N)), n_bars, POSITIONS_PER_BAR),
    }


def _material_features(blocks: dict[str, np.ndarray]) -> np.ndarray:
    """Unit rows [B, F]: each block normalized, scaled by sqrt(weight), concatenated.

    Normalizing per block first stops a dense block (many notes) from drowning the
    others; the weight then sets each block's share of the cosine similarity.
    """
    weighted = [_l2_normalize_rows(blocks[name]) * np.sqrt(w) for name, w in MATERIAL_WEIGHTS.items()]
    return _l2_normalize_rows(np.concatenate(weighted, axis=1))


def bar_features(notes_Nx4: np.ndarray, n_bars: int) -> np.ndarray:
    """Per-bar material descriptor ``features_BxF`` (unit rows, silent bars zero) for finding repeats."""
    return _material_features(bar_feature_blocks(notes_Nx4, n_bars))


# ----------------------------------------------------------------------------- similarity


class DiagonalSums:
    """Running sums along every diagonal of a [B, B] matrix: any diagonal stretch's mean in O(1).

    Path smoothing, repeat edges and segment comparison all average the similarity
    along diagonals (bar t of one passage against bar t of another); one table built
    once serves all three. Internally cells are addressed "skewed", as (row i, offset
    d = j - i), O = 2B-1 offsets, so a window of rows is a row slice, not a gather.
    """

    def __init__(self, matrix_BxB: np.ndarray) -> None:
        n_bars = matrix_BxB.shape[0]
        n_offsets = max(2 * n_bars - 1, 0)
        # Row i of the zero-padded matrix, read from column i on, lists offsets
        # -(B-1)..B-1 of row i: a strided view instead of a fancy-index gather.
        padded = np.zeros((n_bars, max(3 * n_bars - 2, 0)))
        padded[:, n_bars - 1:2 * n_bars - 1] = matrix_BxB
        row_stride, col_stride = padded.strides
        skewed_BxO = np.lib.stride_tricks.as_strided(
            padded, shape=(n_bars, n_offsets), strides=(row_stride + col_stride, col_stride),
            writeable=False)
        self.n_bars = n_bars
        # suffix[i, d + B - 1] = sum over rows r >= i of M[r, r + d] (out-of-range terms are 0).
        self._suffix = np.zeros((n_bars + 1, n_offsets))
        self._suffix[:n_bars] = np.cumsum(skewed_BxO[::-1], axis=0)[::-1]

    def means(self, start_i: np.ndarray, start_j: np.ndarray, length: np.ndarray) -> np.ndarray:
        """Mean of ``M[start_i + t, start_j + t]`` for t < length (0 where length is 0).

        Every stretch must lie inside the matrix.
        """
        offset = start_j - start_i + (self.n_bars - 1)
        total = self._suffix[start_i, offset] - self._suffix[start_i + length, offset]
        return total / np.maximum(length, 1)

    def row_windows(self, first: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Skewed [B, O] sum and count of the in-range ``M[r, r + d]`` for rows r in [i+first, i+stop)."""
        n_bars = self.n_bars
        row_B = np.arange(n_bars)
        lo_B, hi_B = np.clip(row_B + first, 0, n_bars), np.clip(row_B + stop, 0, n_bars)
        total_BxO = self._suffix[lo_B] - self._suffix[hi_B]
        offset_O = np.arange(-(n_bars - 1), n_bars)
        count_BxO = (np.minimum(hi_B[:, None], n_bars - offset_O[None, :])
                     - np.maximum(lo_B[:, None], -offset_O[None, :]))
        return total_BxO, np.maximum(count_BxO, 0)

    def unskew(self, skewed_BxO: np.ndarray) -> np.ndarray:
        """Skewed (i, d) layout back to the [B, B] matrix layout (i, j = i + d)."""
        n_bars = self.n_bars
        skewed_BxO = np.ascontiguousarray(skewed_BxO)
        row_stride, col_stride = skewed_BxO.strides
        return np.lib.stride_tricks.as_strided(
            skewed_BxO[:, n_bars - 1:], shape=(n_bars, n_bars),
            strides=(row_stride - col_stride, col_stride), writeable=False).copy()


def path_smooth(similarity_BxB: np.ndarray | DiagonalSums, half_width_bars: int) -> np.ndarray:
    """Mean of the similarity over diagonal stretches of +/- half_width_bars around each cell.

    Bar i resembling bar j is weak evidence; bars i-2..i+2 resembling j-2..j+2 in
    order is a repeated passage. Near the edges the stretch is shortened, not padded.
    """
    diagonals = _as_diagonal_sums(similarity_BxB)
    half_width_bars = max(half_width_bars, 0)
    total_BxO, count_BxO = diagonals.row_windows(-half_width_bars, half_width_bars + 1)
    return diagonals.unskew(total_BxO / np.maximum(count_BxO, 1))


def _as_diagonal_sums(matrix: np.ndarray | DiagonalSums) -> DiagonalSums:
    return matrix if isinstance(matrix, DiagonalSums) else DiagonalSums(np.asarray(matrix, np.float64))


def bar_similarity(features_BxF: np.ndarray, path_half_width_bars: int = 0) -> np.ndarray:
    """Cosine similarity of bars [B, B]; two silent bars count as identical (1), silent vs not as 0.

    With ``path_half_width_bars > 0`` the matrix is diagonally smoothed (``path_smooth``).
    """
    features = np.asarray(features_BxF, np.float64)
    unit_BxF = _l2_normalize_rows(features)
    similarity_BxB = np.clip(unit_BxF @ unit_BxF.T, -1.0, 1.0)
    silent_B = ~np.any(features != 0, axis=1)
    similarity_BxB[np.ix_(silent_B, silent_B)] = 1.0
    if path_half_width_bars > 0:
        return path_smooth(similarity_BxB, path_half_width_bars)
    return similarity_BxB


# ----------------------------------------------------------------------------- clustering


def texture_continuity(texture_BxF: np.ndarray, window_bars: int) -> np.ndarray:
    """Per bar line b = 1..B-1 [B-1]: cosine of the mean texture of the window_bars before b
    and the window_bars from b. Averaging over a few bars keeps a single fill bar from
    looking like a section change."""
    n_bars = texture_BxF.shape[0]
    prefix = np.zeros((n_bars + 1, texture_BxF.shape[1]))
    prefix[1:] = np.cumsum(texture_BxF, axis=0)
    line = np.arange(1, n_bars)
    before = prefix[line] - prefix[np.maximum(line - window_bars, 0)]
    after = prefix[np.minimum(line + window_bars, n_bars)] - prefix[line]
    return np.sum(_l2_normalize_rows(before) * _l2_normalize_rows(after), axis=1)


def _affinity(path_similarity_BxB: np.ndarray, continuity_Bm1: np.ndarray) -> np.ndarray:
    """Recurrence (mutual nearest neighbours in path-smoothed material) plus sequence links.

    The usual recipe for structure by spectral clustering: recurrence ties repeated
    passages together; links between consecutive bars, strong where the texture goes
    on and weak where it changes, keep each passage in one piece. The mix weight
    balances the two graphs' degrees so neither dominates.
    """
    n_bars = path_similarity_BxB.shape[0]
    n_neighbours = min(n_bars - 1, _RECURRENCE_NEIGHBOURS)
    recurrence = np.clip(path_similarity_BxB, 0.0, None)
    np.fill_diagonal(recurrence, 0.0)
    # k-th largest per row (ties kept): cells above both rows' thresholds are mutual neighbours.
    kth_B = -np.partition(-recurrence, n_neighbours - 1, axis=1)[:, n_neighbours - 1]
    mutual = (recurrence >= kth_B[:, None]) & (recurrence >= kth_B[None, :]) & (recurrence > 0)
    recurrence = np.where(mutual, recurrence, 0.0) ** _RECURRENCE_SHARPNESS

    step_Bm1 = np.exp(-(1.0 - np.clip(continuity_Bm1, 0.0, 1.0)) / _TEXTURE_CHANGE_SCALE)
    sequence = np.diag(step_Bm1, 1) + np.diag(step_Bm1, -1)
    degree_rec_B, degree_seq_B = recurrence.sum(1), sequence.sum(1)
    total_B = degree_rec_B + degree_seq_B
    denom = float(np.sum(total_B**2))
    mix = float(np.dot(degree_seq_B, total_B)) / denom if denom > 0 else 0.5
    return mix * recurrence + (1.0 - mix) * sequence


def _spectral_embedding(affinity_BxB: np.ndarray, max_clusters: int) -> tuple[np.ndarray, int]:
    """Leading normalized-Laplacian eigenvectors [B, K] and K chosen by the largest eigengap."""
    n_bars = affinity_BxB.shape[0]
    inv_sqrt_B = 1.0 / np.sqrt(np.maximum(affinity_BxB.sum(1), 1e-9))
    normalized = affinity_BxB * inv_sqrt_B[:, None] * inv_sqrt_B[None, :]
    n_eig = min(max_clusters + 1, n_bars)
    # Largest eigenpairs of D^-1/2 A D^-1/2 are the smallest of the Laplacian I - D^-1/2 A D^-1/2.
    values, vectors = scipy.linalg.eigh(normalized, subset_by_index=[n_bars - n_eig, n_bars - 1],
                                        check_finite=False)
    laplacian_values = 1.0 - values[::-1]
    vectors = vectors[:, ::-1]
    gaps = np.diff(laplacian_values)[:max_clusters]
    n_clusters = int(np.argmax(gaps)) + 1 if gaps.size else 1
    return _l2_normalize_rows(vectors[:, :n_clusters]), n_clusters


def _squared_distances(points_BxD: np.ndarray, centres_RxKxD: np.ndarray) -> np.ndarray:
    """[R, B, K] squared distances from every point to every centre of every restart.

    Expanded as |p|^2 - 2 p.c + |c|^2 (one matmul, no [R, B, K, D] temporary); clipped
    at 0 against rounding, since k-means++ draws with these as weights.
    """
    cross_RxBxK = points_BxD @ centres_RxKxD.transpose(0, 2, 1)
    norms_B = (points_BxD * points_BxD).sum(-1)
    norms_RxK = (centres_RxKxD * centres_RxKxD).sum(-1)
    return np.maximum(norms_B[None, :, None] - 2.0 * cross_RxBxK + norms_RxK[:, None, :], 0.0)


def _kmeans_plus_plus_init(points_BxD: np.ndarray, n_clusters: int, n_restarts: int,
                           rng: np.random.Generator) -> np.ndarray:
    """Seeded k-means++ centres [R, K, D] for R restarts at once: spread-out starts."""
    n_points = len(points_BxD)
    chosen_RxK = np.zeros((n_restarts, n_clusters), np.int64)
    chosen_RxK[:, 0] = rng.integers(n_points, size=n_restarts)
    dist2_RxB = _squared_distances(points_BxD, points_BxD[chosen_RxK[:, :1]])[..., 0]
    for k in range(1, n_clusters):
        cumulative_RxB = np.cumsum(dist2_RxB, axis=1)
        # Draw proportional to squared distance: the first point whose running sum passes u * total.
        target_R = rng.random(n_restarts) * cumulative_RxB[:, -1]
        pick_R = np.minimum((cumulative_RxB <= target_R[:, None]).sum(1), n_points - 1)
        chosen_RxK[:, k] = pick_R
        dist2_RxB = np.minimum(dist2_RxB, _squared_distances(points_BxD, points_BxD[pick_R][:, None])[..., 0])
    return points_BxD[chosen_RxK]


def kmeans(points_BxD: np.ndarray, n_clusters: int, rng: np.random.Generator) -> np.ndarray:
    """Lloyd's k-means from seeded k-means++ starts; cluster ids [B] of the lowest-inertia restart.

    The restarts run side by side as one batch: at ~100 points numpy call overhead,
    not arithmetic, is the cost.
    """
    centres_RxKxD = _kmeans_plus_plus_init(points_BxD, n_clusters, _KMEANS_RESTARTS, rng)
    cluster_ids = np.arange(n_clusters)
    labels_RxB = None
    for _ in range(_KMEANS_MAX_ITERS):
        new_labels_RxB = np.argmin(_squared_distances(points_BxD, centres_RxKxD), axis=-1)
        if labels_RxB is not None and np.array_equal(new_labels_RxB, labels_RxB):
            break
        labels_RxB = new_labels_RxB
        one_hot_RxBxK = (labels_RxB[..., None] == cluster_ids).astype(np.float64)
        counts_RxK = one_hot_RxBxK.sum(1)
        sums_RxKxD = one_hot_RxBxK.transpose(0, 2, 1) @ points_BxD
        # An emptied cluster keeps its old centre instead of becoming NaN.
        centres_RxKxD = np.where(counts_RxK[..., None] > 0,
                                 sums_RxKxD / np.maximum(counts_RxK, 1)[..., None], centres_RxKxD)
    dist2_RxBxK = _squared_distances(points_BxD, centres_RxKxD)
    best = int(np.argmin(dist2_RxBxK.min(-1).sum(-1)))  # ties: the earliest restart
    return np.argmin(dist2_RxBxK[best], axis=-1)


def cluster_bars(path_similarity_BxB: np.ndarray, continuity_Bm1: np.ndarray, *,
                 seed: int, max_clusters: int) -> np.ndarray:
    """Spectral clustering of bars into kinds of material: cluster id per bar [B]."""
    n_bars = path_similarity_BxB.shape[0]
    if n_bars < 2:
        return np.zeros(n_bars, np.int64)
    embedding_BxK, n_clusters = _spectral_embedding(_affinity(path_similarity_BxB, continuity_Bm1),
                                                    max_clusters)
    if n_clusters == 1:
        return np.zeros(n_bars, np.int64)
    return kmeans(embedding_BxK, n_clusters, np.random.default_rng(seed))


# ----------------------------------------------------------------------------- boundaries


def checkerboard_novelty(similarity_BxB: np.ndarray, half_width_bars: int) -> np.ndarray:
    """Per bar line b = 0..B [B+1]: mean similarity inside the blocks of
    half_width_bars before and after b minus the mean across them; high where what the
    matrix measures (here: rhythm) changes at b. Block sums come from an integral image."""
    n_bars = similarity_BxB.shape[0]
    integral = np.zeros((n_bars + 1, n_bars + 1))
    integral[1:, 1:] = similarity_BxB.cumsum(0).cumsum(1)

    def block_mean(r0, r1, c0, c1):
        total = integral[r1, c1] - integral[r0, c1] - integral[r1, c0] + integral[r0, c0]
        return total / np.maximum((r1 - r0) * (c1 - c0), 1)

    line = np.arange(n_bars + 1)
    lo, hi = np.maximum(line - half_width_bars, 0), np.minimum(line + half_width_bars, n_bars)
    within = 0.5 * (block_mean(lo, line, lo, line) + block_mean(line, hi, line, hi))
    novelty = np.clip(within - block_mean(lo, line, line, hi), 0.0, None)
    novelty[[0, n_bars]] = 0.0
    return novelty


def repetition_edges(similarity_BxB: np.ndarray | DiagonalSums, window_bars: int,
                     min_lag_bars: int) -> np.ndarray:
    """Per bar line b = 0..B [B+1]: how sharply some repeat starts or ends at b.

    For every other bar j (at least min_lag_bars away), compare the window_bars after b
    with those after j (forward match) and the window_bars before b with those before j
    (backward match). A repeated passage starting at b matches forward but not backward;
    one ending at b the other way round. Edges of repeats are where listeners (and the
    POP909 annotators) put phrase boundaries.
    """
    diagonals = _as_diagonal_sums(similarity_BxB)
    n_bars = diagonals.n_bars
    b_BxB, j_BxB = np.indices((n_bars, n_bars))
    ahead = np.minimum(window_bars, n_bars - np.maximum(b_BxB, j_BxB))
    forward = diagonals.means(b_BxB, j_BxB, ahead)
    behind = np.minimum(window_bars, np.minimum(b_BxB, j_BxB))
    backward = diagonals.means(b_BxB - behind, j_BxB - behind, behind)
    # Both sides need context: at j = 0 "nothing before" would look like a repeat starting.
    comparable = (np.abs(b_BxB - j_BxB) >= min_lag_bars) & (behind > 0) & (ahead > 0)
    contrast = np.where(comparable, np.abs(forward - backward), 0.0)
    edges = np.zeros(n_bars + 1)
    edges[1:n_bars] = contrast.max(axis=1)[1:]
    return edges


def optimal_boundaries(evidence_L: np.ndarray, min_segment_bars: int, max_segment_bars: int) -> list[int]:
    """Segment starts maximizing sum(evidence at each cut + length bonus - cost) over all tilings.

    evidence_L has one entry per bar line 0..B. Lengths are confined to
    [min_segment_bars, max_segment_bars]; since max >= 2 * min - 1 every song of at
    least min bars has such a tiling. Ties go to the shorter last segment.
    """
    n_bars = len(evidence_L) - 1
    if n_bars < 2 * min_segment_bars:
        return [0]
    lengths = np.arange(min_segment_bars, max_segment_bars + 1)
    length_score = (_PHRASE4_BONUS * (lengths % PHRASE_BARS == 0)
                    + _PHRASE8_BONUS * (lengths % (2 * PHRASE_BARS) == 0) - _SEGMENT_COST)
    cut_score = [0.0, *evidence_L[1:].tolist()]  # the song's start is not a cut
    # Plain Python: ~13 candidates per bar are too few for numpy calls to pay off.
    best = [-np.inf] * (n_bars + 1)
    best[0] = 0.0
    previous = [0] * (n_bars + 1)
    for end in range(min_segment_bars, n_bars + 1):
        for length, bonus in zip(lengths.tolist(), length_score.tolist(), strict=True):
            start = end - length
            if start < 0:
                break
            total = best[start] + cut_score[start] + bonus
            if total > best[end]:
                best[end], previous[end] = total, start
    result, end = [], n_bars
    while end > 0:
        end = previous[end]
        result.append(end)
    return result[::-1]


# ----------------------------------------------------------------------------- labels


def segment_similarity(similarity_BxB: np.ndarray | DiagonalSums, starts: Sequence[int],
                       ends: Sequence[int], max_shift_bars: int = 0) -> np.ndarray:
    """[S, S] bar-by-bar similarity of segment pairs over their common length.

    Repeated material repeats in order, so bar t of one segment is compared with bar
    t of the other (a diagonal of the matrix), not every bar with every bar. With
    max_shift_bars > 0 the other segment may also be read up to that many bars early
    or late (boundaries are only accurate to a bar); the best shift counts.
    """
    diagonals = _as_diagonal_sums(similarity_BxB)
    starts_S, ends_S = np.asarray(starts), np.asarray(ends)
    start_i, start_j = np.meshgrid(starts_S, starts_S, indexing="ij")
    length = np.minimum.outer(ends_S - starts_S, ends_S - starts_S)
    best = np.full(length.shape, -np.inf)
    for shift in range(-max_shift_bars, max_shift_bars + 1):
        shifted_j = start_j + shift
        inside = (shifted_j >= 0) & (shifted_j + length <= diagonals.n_bars)
        means = diagonals.means(start_i, np.where(inside, shifted_j, start_j), length)
        best = np.maximum(best, np.where(inside, means, -np.inf))
    return np.maximum(best, best.T)  # shifting j later = shifting i earlier


def cluster_overlap(cluster_B: np.ndarray, starts: Sequence[int], ends: Sequence[int]) -> np.ndarray:
    """[S, S] overlap (sum of minima) of the segments' cluster histograms: 1 = same mix of material."""
    one_hot_BxK = (cluster_B[:, None] == np.arange(int(cluster_B.max()) + 1)).astype(np.float64)
    prefix = np.concatenate([np.zeros((1, one_hot_BxK.shape[1])), np.cumsum(one_hot_BxK, axis=0)])
    counts_SxK = prefix[np.asarray(ends)] - prefix[np.asarray(starts)]
    share_SxK = counts_SxK / counts_SxK.sum(1, keepdims=True)
    return np.minimum(share_SxK[:, None, :], share_SxK[None, :, :]).sum(-1)


def assign_labels(pair_similarity_SxS: np.ndarray, threshold: float) -> list[str]:
    """Greedy in song order: join the existing label whose segments are most similar on
    average if that is >= threshold, else open the next letter. Past 26 letters the
    closest label is reused."""
    n_segments = pair_similarity_SxS.shape[0]
    label_S = np.zeros(n_segments, np.int64)
    n_labels = 0
    for index in range(n_segments):
        earlier_S = label_S[:index]
        sums = np.bincount(earlier_S, weights=pair_similarity_SxS[index, :index], minlength=n_labels)
        means = sums / np.maximum(np.bincount(earlier_S, minlength=n_labels), 1)
        best = int(np.argmax(means)) if n_labels else -1
        if best >= 0 and (means[best] >= threshold or n_labels == len(LABELS)):
            label_S[index] = best
        else:
            label_S[index] = n_labels
            n_labels += 1
    return [LABELS[i] for i in label_S]


# ----------------------------------------------------------------------------- pipeline


def detect_structure(notes_Nx4: np.ndarray, n_bars: int, *, seed: int, min_segment_bars: int = 4,
                     max_segment_bars: int = 16, max_clusters: int = 8,
                     same_label_similarity: float = _MIN_BAR_SIMILARITY) -> tuple[Segment, ...]:
    """Segments tiling bars [0, n_bars), each min..max bars long (a song under 2 * min bars is one segment).

    Two segments share a label when the spectral clusters of their bars overlap and
    their bars match one by one (mean cosine >= same_label_similarity); requiring
    both keeps a coarse clustering from merging distinct sections and a chance bar
    match from merging distinct kinds of material.

    Same notes, n_bars and seed always give the same segments: the only randomness is
    k-means++ under ``np.random.default_rng(seed)``. Raises ValueError for n_bars < 1
    or max_segment_bars < 2 * min_segment_bars - 1 (some lengths could not be tiled).
    """
    if n_bars < 1:
        raise ValueError(f"cannot segment a song of {n_bars} bars")
    if min_segment_bars < 1 or max_segment_bars < 2 * min_segment_bars - 1:
        raise ValueError(f"need 1 <= min_segment_bars and max_segment_bars >= 2 * min_segment_bars - 1, "
                         f"got {min_segment_bars} and {max_segment_bars}")
    with _single_threaded_blas():
        blocks = bar_feature_blocks(notes_Nx4, n_bars)
        material = DiagonalSums(bar_similarity(_material_features(blocks)))
        rhythm_BxB = bar_similarity(blocks["rhythm"])
        continuity_Bm1 = texture_continuity(_l2_normalize_rows(blocks["rhythm"]), _TEXTURE_WINDOW_BARS)
        cluster_B = cluster_bars(path_smooth(material, _PATH_HALF_WIDTH_BARS), continuity_Bm1,
                                 seed=seed, max_clusters=max_clusters)

        evidence_L = (
            _NOVELTY_WEIGHT * checkerboard_novelty(rhythm_BxB, _NOVELTY_HALF_WIDTH_BARS)
            + _REPEAT_EDGE_WEIGHT * repetition_edges(material, _REPEAT_WINDOW_BARS, _MIN_REPEAT_LAG_BARS))
        starts = optimal_boundaries(evidence_L, min_segment_bars, max_segment_bars)
        ends = [*starts[1:], n_bars]
        # Each cue relative to its threshold; the weaker one decides (>= 1: same material).
        same_material_SxS = np.minimum(
            cluster_overlap(cluster_B, starts, ends) / _MIN_CLUSTER_OVERLAP,
            segment_similarity(material, starts, ends, _MAX_LABEL_SHIFT_BARS) / same_label_similarity)
    labels = assign_labels(same_material_SxS, threshold=1.0)
    segments = tuple(Segment(s, e, label) for s, e, label in zip(starts, ends, labels, strict=True))
    validate_segments(segments, n_bars)
    return segments


# ----------------------------------------------------------------------------- scoring


def _precision_recall_f(hits: int, n_predicted: int, n_reference: int) -> tuple[float, float, float]:
    """P, R, F with the convention that predicting nothing for nothing is perfect."""
    if n_predicted == 0 and n_reference == 0:
        return 1.0, 1.0, 1.0
    precision = hits / n_predicted if n_predicted else 0.0
    recall = hits / n_reference if n_reference else 0.0
    f = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return precision, recall, f


def _boundary_hits(predicted: np.ndarray, reference: np.ndarray, tolerance_bars: int) -> int:
    """Largest one-to-one matching of boundaries within tolerance (not greedy, which can undercount)."""
    if predicted.size == 0 or reference.size == 0:
        return 0
    close_PxR = np.abs(predicted[:, None] - reference[None, :]) <= tolerance_bars
    rows, cols = scipy.optimize.linear_sum_assignment(close_PxR, maximize=True)
    return int(close_PxR[rows, cols].sum())


def _bar_label_ids(segments: Sequence[Segment]) -> np.ndarray:
    labels = [seg.label for seg in segments for _ in range(seg.n_bars)]
    return np.unique(np.asarray(labels), return_inverse=True)[1]


def _song_bars(segments: Sequence[Segment], name: str) -> int:
    if not segments:
        raise ValueError(f"{name} segmentation is empty")
    n_bars = segments[-1].end_bar
    validate_segments(segments, n_bars)
    return n_bars


def score_segmentation(predicted: Sequence[Segment], reference: Sequence[Segment],
                       tolerance_bars: int = 1) -> dict[str, float]:
    """Boundary P/R/F (interior boundaries, +/- tolerance_bars, one-to-one) and pairwise label scores.

    Pairwise, over all bar pairs i < j: ``pairwise_agreement`` is the fraction where
    "same label" agrees between the two; ``pairwise_precision/recall/f`` treat
    same-label pairs as the retrieved/relevant sets (the usual structure metric).
    """
    n_bars = _song_bars(predicted, "predicted")
    n_reference_bars = _song_bars(reference, "reference")
    if n_bars != n_reference_bars:
        raise ValueError(f"predicted segmentation covers {n_bars} bars, reference {n_reference_bars}")
    predicted_bounds = np.asarray([s.start_bar for s in predicted[1:]], np.int64)
    reference_bounds = np.asarray([s.start_bar for s in reference[1:]], np.int64)
    hits = _boundary_hits(predicted_bounds, reference_bounds, tolerance_bars)
    b_precision, b_recall, b_f = _precision_recall_f(hits, predicted_bounds.size, reference_bounds.size)

    predicted_ids, reference_ids = _bar_label_ids(predicted), _bar_label_ids(reference)
    upper = np.triu(np.ones((n_bars, n_bars), bool), k=1)
    same_predicted = (predicted_ids[:, None] == predicted_ids[None, :])[upper]
    same_reference = (reference_ids[:, None] == reference_ids[None, :])[upper]
    agreement = float(np.mean(same_predicted == same_reference)) if same_predicted.size else 1.0
    p_precision, p_recall, p_f = _precision_recall_f(
        int(np.sum(same_predicted & same_reference)), int(same_predicted.sum()), int(same_reference.sum()))
    return {
        "boundary_precision": b_precision, "boundary_recall": b_recall, "boundary_f": b_f,
        "pairwise_agreement": agreement,
        "pairwise_precision": p_precision, "pairwise_recall": p_recall, "pairwise_f": p_f,
    }


def aggregate_scores(scores: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over songs (all dicts must have the same keys)."""
    if not scores:
        raise ValueError("no scores to aggregate")
    keys = set(scores[0])
    if any(set(s) != keys for s in scores):
        raise ValueError("score dicts have different metrics")
    return {key: float(np.mean([s[key] for s in scores])) for key in scores[0]}
