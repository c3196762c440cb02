"""The app's sampled piano over real HTTP: ``/api/audio`` renders the browser's song with the SoundFont.

Whole songs and frame ranges have the lengths their notes need, chunks laid at their
start frames sum to the whole song, bad ranges and overlong audio are refused with
a 422 naming them, and a server without a SoundFont says so in ``/api/info`` and
answers 503 rather than failing mid-playback.
"""

from __future__ import annotations

import io
import wave

import httpx
import numpy as np
import pytest

from sfs_jax.music import audio
from sfs_jax.music import notes as notes_lib
from sfs_jax.serving.song_audio import APP_SAMPLE_RATE, SongAudio, chunk_notes
from tests import serve_fixtures
from tests.conftest import require_soundfont
from tests.serve_fixtures import Served

FPB = notes_lib.FRAMES_PER_BAR
TEMPO = 120.0  # 2 s per bar
SEGMENTS = [{"label": "A", "bars": 2}, {"label": "B", "bars": 2}]
# a C major triad in bar 0 held for two beats, a G in bar 1 held across into bar 2, an E in bar 3
NOTES = [[0, 60, 90, 16], [0, 64, 90, 16], [0, 67, 90, 16], [40, 67, 100, 40], [100, 76, 80, 8]]


@pytest.fixture(scope="module")
def served() -> Served:
    return serve_fixtures.shared_server()


def _wav(response: httpx.Response) -> tuple[np.ndarray, int]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/wav"
    with wave.open(io.BytesIO(response.content), "rb") as source:
        rate = source.getframerate()
        pcm = np.frombuffer(source.readframes(source.getnframes()), "<i2")
    return pcm.astype(np.float32) / 32768.0, rate


def _post(served: Served, **extra) -> httpx.Response:
    return httpx.post(f"{served.url}/api/audio", json={"segments": SEGMENTS, "tempo_bpm": TEMPO, "notes": NOTES,
                                                        **extra}, timeout=60)


def test_info_says_the_sampled_piano_is_there(served: Served) -> None:
    require_soundfont()
    info = httpx.get(f"{served.url}/api/info", timeout=10).json()
    assert info["piano"] == {"sampled": True, "detail": None}


def test_whole_song_and_ranges_have_the_length_their_notes_need(served: Served) -> None:
    require_soundfont()
    whole, rate = _wav(_post(served))
    assert rate == APP_SAMPLE_RATE
    assert len(whole) / rate == pytest.approx(4 * 2.0 + audio.RELEASE_S, abs=0.01)  # 4 bars, then the release
    assert np.sqrt(np.mean(whole**2)) > 1e-3
    # bar 1 alone: its G (onset 40, 40 frames) rings 0.5 s into bar 2, so the chunk is longer than its range
    bar1 = _post(served, frames=[FPB, 2 * FPB])
    assert bar1.headers["x-audio-start-frame"] == str(FPB)
    samples, _ = _wav(bar1)
    assert len(samples) / rate == pytest.approx((40 + 40 - FPB) / 16 + audio.RELEASE_S, abs=0.01)
    # bar 2 has no onsets: silence as long as the range
    silent, _ = _wav(_post(served, frames=[2 * FPB, 3 * FPB]))
    assert len(silent) / rate == pytest.approx(2.0, abs=0.01) and not np.any(silent)


def test_chunks_laid_at_their_start_frames_sum_to_the_whole_song(served: Served) -> None:
    require_soundfont()
    whole, rate = _wav(_post(served))
    summed = np.zeros(len(whole) + rate, np.float32)
    for start in range(0, 4 * FPB, FPB):
        chunk, _ = _wav(_post(served, frames=[start, start + FPB]))
        offset = round(start / 16 * rate)  # 16 frames per second at 120 BPM
        summed[offset:offset + len(chunk)] += chunk
    summed = summed[:len(whole)]
    # equal up to 16-bit rounding and each chunk's fade at its own end (the release tail): 0.03% measured
    residual = np.sqrt(np.mean((summed - whole) ** 2)) / np.sqrt(np.mean(whole**2))
    assert residual < 0.005, residual


@pytest.mark.parametrize(("extra", "message"), [
    ({"frames": [0, 5 * FPB]}, "not a range inside the song's 128 frames"),
    ({"frames": [64, 64]}, "not a range inside"),
    ({"frames": [-8, 8]}, "not a range inside"),
    ({"notes": [[0, 60, 200, 4]]}, "velocity 200"),
])
def test_bad_ranges_and_songs_are_refused_with_422(served: Served, extra: dict, message: str) -> None:
    response = _post(served, **extra)
    assert response.status_code == 422 and message in response.json()["detail"], response.text


def test_audio_longer_than_one_request_may_render_is_refused() -> None:
    from sfs_jax.serving.schemas import Limits, SongIn, validate_song

    song = validate_song(SongIn(segments=[{"label": "A", "bars": 200}], tempo_bpm=20.0, notes=[]), Limits())
    with pytest.raises(ValueError, match="2400 s of audio, more than the 900 s"):
        SongAudio().render(song)
    assert len(chunk_notes(np.asarray(NOTES), FPB, 2 * FPB)) == 1


def test_without_a_soundfont_info_says_why_and_audio_is_503(served: Served, monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path) -> None:
    monkeypatch.setenv(audio.SOUNDFONT_ENV, str(tmp_path / "missing.sf2"))
    monkeypatch.setattr(served.app.state, "piano", SongAudio())
    piano = httpx.get(f"{served.url}/api/info", timeout=10).json()["piano"]
    assert piano["sampled"] is False and "missing.sf2 is not a file" in piano["detail"]
    response = _post(served)
    assert response.status_code == 503
    assert response.json()["detail"].startswith("the server has no sampled piano") and "missing.sf2" in response.text
