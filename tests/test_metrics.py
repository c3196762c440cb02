"""Bar-level evaluation metrics (sfs_jax/evaluation/metrics.py) on songs built so the answer is known.

SI has its own tests (tests/test_structureness.py).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from data_pipeline.synthetic import generate_song
from sfs_jax.evaluation import metrics
from sfs_jax.music.notes import FRAMES_PER_BAR, ONSET, notes_in_bars
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
