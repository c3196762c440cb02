"""The app's sampled piano: bars of the browser's song rendered to WAV by the server.

Place in the data flow: [7] for the browser, beside ``midi_files``. The app plays a
song by asking for it a few bars at a time (``/api/audio`` with a frame range) and
scheduling each chunk at its start time. A chunk holds the notes whose onsets fall
in its range, with their full sound (a note held past the range's end, and its
release, are in the chunk that started it), so chunks laid at their start times
sum to the whole song: each note's sound is its own and Web Audio adds them. The
same endpoint without a range renders the whole song for download.

Why on the server: the SoundFont (FluidR3 GM, 140 MB) stays on disk beside the
synthesizer, and the browser plays exactly what ``generate --audio`` writes and
what SI from audio measured. One ``PianoRenderer`` is made on first use and
renders one request at a time (a synthesizer has one voice state).
"""

from __future__ import annotations

import dataclasses
import threading

import numpy as np

from sfs_jax.music import audio
from sfs_jax.music import notes as notes_lib
from sfs_jax.serving.schemas import InvalidRequest, ValidSong

APP_SAMPLE_RATE = 44100  # for listening: the SoundFont's own rate (evaluation renders at MusDr's 22050 Hz)
MAX_AUDIO_SECONDS = 900.0  # one response: 15 minutes of 16-bit mono at 44.1 kHz is 79 MB


class AudioUnavailable(RuntimeError):
    """No sampled piano on this server (no SoundFont or no synthesizer); answered with HTTP 503."""


@dataclasses.dataclass(frozen=True)
class AudioChunk:
    """A rendered range: WAV bytes and the song frame its first sample plays at."""

    wav: bytes
    start_frame: int
    seconds: float


def chunk_notes(notes_Nx4: np.ndarray, start_frame: int, end_frame: int) -> np.ndarray:
    """The notes with onsets in [start_frame, end_frame), their onsets made relative to start_frame."""
    onsets = notes_Nx4[:, notes_lib.ONSET]
    chunk = notes_Nx4[(onsets >= start_frame) & (onsets < end_frame)].copy()
    chunk[:, notes_lib.ONSET] -= start_frame
    return chunk


class SongAudio:
    """Renders ranges of checked songs with one lazily loaded ``PianoRenderer`` (thread-safe)."""

    def __init__(self, sample_rate: int = APP_SAMPLE_RATE, max_seconds: float = MAX_AUDIO_SECONDS) -> None:
        self.sample_rate, self.max_seconds = int(sample_rate), float(max_seconds)
        self._lock = threading.Lock()
        self._renderer: audio.PianoRenderer | None = None

    def unavailable_reason(self) -> str | None:
        """Why this server cannot play a sampled piano, or None when it can (cheap: loads nothing)."""
        if self._renderer is not None:
            return None
        try:
            import tinysoundfont  # noqa: F401
            audio.find_soundfont()
        except (ImportError, audio.AudioError) as error:
            return str(error)
        return None

    def _load(self) -> audio.PianoRenderer:
        if self._renderer is None:
            try:
                self._renderer = audio.PianoRenderer(sample_rate=self.sample_rate)
            except audio.AudioError as error:
                raise AudioUnavailable(f"the server has no sampled piano: {error}") from error
        return self._renderer

    def render(self, song: ValidSong, frames: tuple[int, int] | None = None) -> AudioChunk:
        """The notes starting in ``frames`` (default: the whole song), sounding to the range's end or their own.

        Raises InvalidRequest for a range outside the song or audio longer than
        ``max_seconds``; AudioUnavailable when there is no piano to render with.
        """
        song_frames = song.n_bars * notes_lib.FRAMES_PER_BAR
        start, end = (0, song_frames) if frames is None else (int(frames[0]), int(frames[1]))
        if not 0 <= start < end <= song_frames:
            raise InvalidRequest(f"frames [{start}, {end}) are not a range inside the song's {song_frames} frames "
                                 f"({song.n_bars} bars)")
        seconds_per_frame = 60.0 / (song.tempo_bpm * notes_lib.FRAMES_PER_BEAT)
        notes = chunk_notes(song.notes_Nx4, start, end)
        note_end = int((notes[:, notes_lib.ONSET] + notes[:, notes_lib.DURATION]).max()) if len(notes) else 0
        seconds = max(end - start, note_end) * seconds_per_frame + (audio.RELEASE_S if len(notes) else 0.0)
        if seconds > self.max_seconds:
            raise InvalidRequest(f"frames [{start}, {end}) at {song.tempo_bpm:g} BPM are {seconds:.0f} s of audio, "
                                 f"more than the {self.max_seconds:.0f} s one request may render; ask for fewer bars")
        with self._lock:
            samples = self._load().render(notes, song.tempo_bpm, duration_s=seconds)
        return AudioChunk(audio.wav_bytes(samples, self.sample_rate), start, seconds)
