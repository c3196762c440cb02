"""An independent, loop-by-loop transcription of MusDr's SI stages, the oracle for tests/test_structureness.py.

Written from the definitions in MusDr's ``mueller_audio_tools`` (the FMP notebooks'
functions): plain Python loops over cells, no shared code with
``sfs_jax.evaluation.structureness``. Slow (pure Python), so tests use it on songs of
a few dozen 2 Hz frames.
"""

from __future__ import annotations

import math

import numpy as np


def smooth_downsample(chroma_Tx12: np.ndarray, filt_len: int = 21, down: int = 5,
                      threshold: float = 1e-3) -> np.ndarray:
    """Boxcar of ``filt_len`` centred ("same": zero outside), every ``down``-th frame, L2 per frame."""
    n, k = chroma_Tx12.shape
    half = (filt_len - 1) // 2
    out = []
    for t in range(0, n, down):
        frame = [sum(chroma_Tx12[u, p] for u in range(t - half, t + half + 1) if 0 <= u < n) / filt_len
                 for p in range(k)]
        norm = math.sqrt(sum(v * v for v in frame))
        out.append([v / norm for v in frame] if norm > threshold else [1 / math.sqrt(k)] * k)
    return np.array(out)


def _resample(n_out: int, n_in: int) -> list[int]:
    return [max(int(np.around((j + 1) / n_out * n_in)) - 1, 0) for j in range(n_out)]


def ssm(x_Tx12: np.ndarray, length: int = 16, tempi: np.ndarray | None = None, shifts: int = 12) -> np.ndarray:
    """max over shifts, tempi, directions of the column-stretched, diagonally averaged S_c = X_cycᵀ X."""
    if tempi is None:
        tempi = np.exp(np.linspace(np.log(0.5), np.log(2.0), 7))
    n = len(x_Tx12)
    best = np.zeros((n, n))
    for shift in range(shifts):
        x_cyc = np.roll(x_Tx12, shift, axis=1)  # pitch class p of x_cyc is p - shift of x
        s = np.array([[float(np.dot(x_cyc[i], x_Tx12[j])) for j in range(n)] for i in range(n)])
        for tempo in tempi:
            m = int(np.ceil(n / tempo))
            st = s[:, _resample(m, n)]
            fwd, bwd = np.zeros((n, m)), np.zeros((n, m))
            for i in range(n):
                for j in range(m):
                    fwd[i, j] = sum(st[i + p, j + p] for p in range(length) if i + p < n and j + p < m) / length
                    bwd[i, j] = sum(st[i - p, j - p] for p in range(length) if i - p >= 0 and j - p >= 0) / length
            back = _resample(n, m)
            best = np.maximum(best, np.maximum(fwd[:, back], bwd[:, back]))
    return best


def threshold(s_TxT: np.ndarray, rel: float = 0.25, penalty: float = -2.0) -> np.ndarray:
    """Relative threshold, scaling to [0, 1] from the smallest positive cell, penalty on zeros, unit diagonal."""
    s = s_TxT.copy()
    k = int(np.round(s.size * (1 - rel)))
    if k < s.size:
        theta = sorted(s.flatten(order="F"))[k]
        s[s < theta] = 0
    else:
        s[:] = 0
    positive = s[s > 0]
    low = positive.min() if positive.size else 0.0
    high = s.max()
    if high > low:
        zero = s == 0
        s = (s - low) / (high - low)
        s[zero] = penalty
    for i in range(len(s)):
        s[i, i] = 1.0
    return s


def segment_fitness(s_TxT: np.ndarray, start: int, length: int) -> float:
    """Accumulated score matrix, backtracked path family and fitness of one segment, cell by cell."""
    n_rows, cols = len(s_TxT), length + 1
    seg = [[float(s_TxT[n, start + m]) for m in range(length)] for n in range(n_rows)]
    d = [[-math.inf] * cols for _ in range(n_rows)]
    d[0][0], d[0][1] = 0.0, seg[0][0]
    for n in range(1, n_rows):
        d[n][0] = max(d[n - 1][0], d[n - 1][cols - 1])
        d[n][1] = d[n][0] + seg[n][0]
        for m in range(2, cols):
            d[n][m] = seg[n][m - 1] + max(d[n - 1][m - 1], d[n - 1][m - 2], d[n - 2][m - 1])
    score = max(d[n_rows - 1][0], d[n_rows - 1][cols - 1])
    # backtracking
    family, path = [], []
    n = n_rows - 1
    if d[n][cols - 1] < d[n][0]:
        m = 0
    else:
        m = cols - 1
        path.append((n, cols - 2))
    while n > 0 or m > 0:
        if n == 0:
            n, m = 0, m - 1
            continue
        if m == 0:
            if d[n - 1][cols - 1] > d[n - 1][0]:
                if path:
                    family.append(path[::-1])
                path = [(n - 1, cols - 2)]
                n, m = n - 1, cols - 1
            else:
                n, m = n - 1, 0
            continue
        if m == 1:
            m = 0
            continue
        options = [(n - 1, m - 1)]
        if n > 2:
            options.append((n - 2, m - 1))
        if m > 2:
            options.append((n - 1, m - 2))
        best, best_val = None, -math.inf
        for cell in options:
            if d[cell[0]][cell[1]] > best_val:
                best, best_val = cell, d[cell[0]][cell[1]]
        path.append((best[0], best[1] - 1))
        n, m = best
    family.append(path[::-1])
    family = family[::-1]
    eps = 1e-16
    seg_len = family[0][-1][1] + 1
    cells = sum(len(p) for p in family)
    coverage = sum(p[-1][0] - p[0][0] + 1 for p in family)
    score_n = (score - seg_len) / (cells + eps)
    cover_n = (coverage - seg_len) / (n_rows + eps)
    return 2 * score_n * cover_n / (score_n + cover_n + eps)


def scape(s_TxT: np.ndarray, max_length: int | None = None) -> np.ndarray:
    """``[L, T]`` fitness of every segment, 0 where it does not fit (MusDr's layout)."""
    n = len(s_TxT)
    max_length = n if max_length is None else max_length
    out = np.zeros((n, n))
    for length in range(1, max_length + 1):
        for start in range(n - length + 1):
            out[length - 1, start] = segment_fitness(s_TxT, start, length)
    return out


def structure_indicator(scape_LxT: np.ndarray, lo_s: float, hi_s: float = 128.0, rate: float = 2.0) -> float:
    """MusDr's compute_structure_indicator on a scape plot: rows int(r lo) - 1 .. int(r hi) - 1."""
    low, upp = int(lo_s * rate) - 1, int(hi_s * rate)
    return 0.0 if low >= scape_LxT.shape[0] else float(np.max(scape_LxT[low:upp]))
