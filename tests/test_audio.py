"""Audio (sfs_jax/music/audio.py): the sampled piano, WAV files, and MusDr's STFT chroma.

Rendering needs a General MIDI SoundFont from the system (``.ci/run`` installs Debian's
fluid-soundfont-gm); those tests skip, saying so, where none is installed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sfs_jax.evaluation import structureness
from sfs_jax.music import audio
from tests.conftest import require_soundfont


@pytest.fixture(scope="module")
def renderer() -> audio.PianoRenderer:
    require_soundfont()
    return audio.PianoRenderer()


def test_each_pitch_class_is_the_loudest_chroma_bin_of_its_note(renderer: audio.PianoRenderer) -> None:
    # 12 notes C4..B4, half a second each at 120 bpm (8 grid frames)
    notes = np.array([[8 * k, 60 + k, 100, 8] for k in range(12)])
    chroma_Tx12 = audio.stft_chroma(renderer.render(notes, 120.0))
    middles = [5 * k + 3 for k in range(12)]  # 10 Hz frames 0.3 s into each note
    assert [int(np.argmax(chroma_Tx12[f])) for f in middles] == list(range(12))


def test_a_known_chord_is_found_in_the_audio_chroma(renderer: audio.PianoRenderer) -> None:
    chord = np.array([[0, 55, 100, 32], [0, 59, 100, 32], [0, 62, 100, 32]])  # G major: G3 B3 D4, 2 s
    samples = renderer.render(chord, 120.0)
    assert len(samples) == round((2.0 + audio.RELEASE_S) * audio.SAMPLE_RATE)
    chroma_Tx12 = audio.stft_chroma(samples)
    mean_12 = chroma_Tx12[3:17].mean(axis=0)
    assert set(np.argsort(mean_12)[-3:]) == {7, 11, 2}
    assert np.sqrt(np.mean(samples ** 2)) > 1e-3 and np.abs(samples).max() <= 1.0


def test_render_length_and_silence(renderer: audio.PianoRenderer) -> None:
    samples = renderer.render(np.zeros((0, 4), np.int32), 120.0, duration_s=1.5)
    assert len(samples) == round(1.5 * audio.SAMPLE_RATE) and np.abs(samples).max() == 0.0
    with pytest.raises(audio.AudioError, match="tempo"):
        renderer.render(np.array([[0, 60, 100, 8]]), 0.0)


def test_si_from_audio_of_a_repeated_passage_is_high(renderer: audio.PianoRenderer) -> None:
    from tests.test_structureness import _tiled

    notes = _tiled(4)  # 8 bars four times, 64 s
    chroma_Tx12 = audio.stft_chroma(renderer.render(notes, 120.0, duration_s=64.0))
    assert len(chroma_Tx12) == structureness.chroma_frames(64.0)  # the frames notes give too
    from_audio = structureness.si_from_chroma(chroma_Tx12)
    from_notes = structureness.structureness_indicator(notes, 120.0, 64.0)
    assert from_audio["SI_16+"] > 0.5 and from_notes["SI_16+"] > 0.5


def test_stft_chroma_of_a_sine_is_its_pitch_class_and_silence_stays_zero() -> None:
    t = np.arange(audio.SAMPLE_RATE) / audio.SAMPLE_RATE
    chroma_Tx12 = audio.stft_chroma(0.5 * np.sin(2 * np.pi * 440.0 * t))  # A4
    assert chroma_Tx12.shape == (1 + audio.SAMPLE_RATE // audio.CHROMA_HOP, 12)
    assert np.all(np.argmax(chroma_Tx12[2:-2], axis=1) == 9)
    np.testing.assert_allclose(np.linalg.norm(chroma_Tx12, axis=1), 1.0)
    np.testing.assert_array_equal(audio.stft_chroma(np.zeros(10000)), 0.0)
    bank_12xF = audio._chroma_filterbank(audio.SAMPLE_RATE, audio.CHROMA_N_FFT)
    assert bank_12xF.shape == (12, 1 + audio.CHROMA_N_FFT // 2)
    bin_440 = round(440.0 * audio.CHROMA_N_FFT / audio.SAMPLE_RATE)
    assert int(np.argmax(bank_12xF[:, bin_440])) == 9


def test_wav_round_trip_and_refusals(tmp_path: Path) -> None:
    samples = np.sin(np.linspace(0, 100, 5000)).astype(np.float32) * 0.5
    path = audio.write_wav(tmp_path / "x.wav", samples)
    back, rate = audio.read_wav(path)
    assert rate == audio.SAMPLE_RATE and np.abs(back - samples).max() < 1e-4
    with pytest.raises(audio.AudioError, match="non-finite"):
        audio.write_wav(tmp_path / "bad.wav", np.array([0.0, np.nan]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.wav"]  # nothing half-written


def test_missing_soundfont_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(audio.SOUNDFONT_ENV, str(tmp_path / "none.sf2"))
    with pytest.raises(audio.AudioError, match="not a file"):
        audio.find_soundfont()
    monkeypatch.delenv(audio.SOUNDFONT_ENV)
    with pytest.raises(audio.AudioError, match="fluid-soundfont-gm"):
        audio.find_soundfont(candidates=(str(tmp_path / "nope.sf2"),))
