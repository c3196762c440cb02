"""Shared fixtures: real MIDI files written by the tests, a real tiny TFDS build, data skips."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import jax
import numpy as np
import pytest

from sfs_jax.model.config import ModelConfig, model_config
from sfs_jax.music import audio, midi_io

# One XLA compilation cache per test session: the same program compiled again (the
# train step of a resumed run, a tiny config shared by several tests) is loaded from
# disk instead of recompiled, which dominates CPU test time. jax reads this setting at
# its first compilation, so it is set here, before any test runs.
_JIT_CACHE_DIR = tempfile.mkdtemp(prefix="sfs_jax_tests_jit_")
jax.config.update("jax_compilation_cache_dir", _JIT_CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
atexit.register(shutil.rmtree, _JIT_CACHE_DIR, ignore_errors=True)

REPO_ROOT = Path(__file__).resolve().parents[1]
POP909_DIR = REPO_ROOT.parent / "shared" / "data" / "pop909"
TINY_SYNTHETIC_SONGS = 24


def live_tiny_config(**overrides) -> ModelConfig:
    """The ``tiny`` preset with every structure path live at initialisation.

    Perturbation and equivalence tests need the contexts and G to reach the logits of a
    freshly initialised model; the default zero init of those paths
    (``ModelConfig.zero_init_paths``) would make their checks pass without power. The
    zero init itself is tested in test_model.py.
    """
    return model_config("tiny", zero_init_paths=(), **overrides)


@pytest.fixture(scope="session")
def pop909_dir() -> Path:
    """The shared POP909 copy, or a skip that says why (a fresh clone has no ../shared)."""
    if not (POP909_DIR / "songs").is_dir():
        pytest.skip(f"POP909 not found at {POP909_DIR} (../shared/data/pop909 is absent on this machine)")
    return POP909_DIR


def soundfont_missing() -> str | None:
    """Why no song can be rendered here (no General MIDI SoundFont installed), or None when one can."""
    try:
        audio.find_soundfont()
    except audio.AudioError as error:
        return str(error)
    return None


def require_soundfont() -> None:
    """A skip that says why, where no SoundFont is installed (``.ci/run`` installs fluid-soundfont-gm)."""
    reason = soundfont_missing()
    if reason is not None:
        pytest.skip(f"no SoundFont to render with: {reason}")


def scale_notes(n_bars: int, notes_per_bar: int = 8, seed: int = 0) -> np.ndarray:
    """A small deterministic piano part: notes_per_bar notes per bar on the frame grid."""
    rng = np.random.default_rng(seed)
    step = 32 // notes_per_bar
    onsets = np.arange(n_bars * notes_per_bar) * step
    pitches = 60 + rng.integers(0, 12, len(onsets))
    return np.stack([onsets, pitches, np.full_like(onsets, 80), np.full_like(onsets, step)], 1)


def write_good_midi(path: Path, n_bars: int = 8, seed: int = 0, tempo_bpm: float = 100.0) -> Path:
    """A valid 4/4 MIDI file written through the project's own writer."""
    return midi_io.write_midi(path, scale_notes(n_bars, seed=seed), tempo_bpm)


@pytest.fixture(scope="session")
def tiny_synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real ``sfs_songs`` synthetic build (array_record) shared by the tests that read data."""
    from data_pipeline import build

    data_dir = tmp_path_factory.mktemp("tfds")
    folder, _ = build.build("synthetic", data_dir, num_songs=TINY_SYNTHETIC_SONGS, seed=0, workers=1)
    return folder
