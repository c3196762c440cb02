r"""Audio: songs rendered with a sampled General MIDI piano, WAV files, and STFT chroma as MusDr takes it.

Place in the data flow: after [6] sampling, for listening and for SI from audio ([7]).

Rendering uses TinySoundFont (``tinysoundfont``) with a SoundFont from the system:
``$SFS_JAX_SOUNDFONT`` if set, else Debian's ``fluid-soundfont-gm`` (FluidR3 GM,
``apt-get install fluid-soundfont-gm``). Nothing is downloaded. symusic's own
``Synthesizer`` would be the natural choice, but symusic 0.6.0's ``render`` fails on
this stack (``TypeError``: its Eigen array return value does not convert to Python).

``stft_chroma`` is librosa's ``feature.chroma_stft(y, sr, tuning=0, norm=2,
hop_length=2205, n_fft=4410)`` as MusDr calls it (librosa >= 0.10 defaults: centred
frames, zero padding, periodic Hann window, power spectrogram), in numpy.
"""

from __future__ import annotations

import io
import os
import wave
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import signal

from sfs_jax.music import notes as notes_lib

SAMPLE_RATE = 22050  # MusDr loads audio at 22050 Hz
RELEASE_S = 0.3  # audio continues this long after the last note ends (the piano's release)
PIANO_PROGRAM = 0  # General MIDI acoustic grand piano
SOUNDFONT_ENV = "SFS_JAX_SOUNDFONT"
SOUNDFONT_CANDIDATES: tuple[str, ...] = (
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/sounds/sf2/default-GM.sf2",
    "/usr/share/soundfonts/FluidR3_GM.sf2",
    "/usr/share/soundfonts/default.sf2",
)
CHROMA_N_FFT = 4410
CHROMA_HOP = 2205
_FADE_S = 0.02  # fade-out at the cut, so the last sample is not a click


class AudioError(RuntimeError):
    """Audio cannot be rendered or written: no SoundFont, no synthesizer, or bad input."""


def find_soundfont(candidates: Sequence[str] = SOUNDFONT_CANDIDATES) -> Path:
    """The SoundFont to render with: ``$SFS_JAX_SOUNDFONT``, else the first installed candidate."""
    chosen = os.environ.get(SOUNDFONT_ENV)
    if chosen:
        if not Path(chosen).is_file():
            raise AudioError(f"${SOUNDFONT_ENV}={chosen} is not a file")
        return Path(chosen)
    for candidate in candidates:
        if Path(candidate).is_file():
            return Path(candidate)
    raise AudioError("no General MIDI SoundFont found: install Debian's fluid-soundfont-gm "
                     f"(apt-get install fluid-soundfont-gm) or set ${SOUNDFONT_ENV} to an .sf2 file")


class PianoRenderer:
    """Renders note arrays to mono float32 audio with one SoundFont loaded once (loading takes about 1 s)."""

    def __init__(self, soundfont: str | os.PathLike | None = None, sample_rate: int = SAMPLE_RATE,
                 program: int = PIANO_PROGRAM) -> None:
        try:
            import tinysoundfont
        except ImportError as error:  # pragma: no cover - a requirement
            raise AudioError("tinysoundfont is not installed (pip install -r requirements.txt)") from error
        self.sample_rate = int(sample_rate)
        self.soundfont = Path(soundfont) if soundfont is not None else find_soundfont()
        self._synth = tinysoundfont.Synth(samplerate=self.sample_rate)
        try:
            self._sfid = self._synth.sfload(str(self.soundfont))
        except Exception as error:
            raise AudioError(f"cannot load SoundFont {self.soundfont}: {error}") from error
        self._synth.program_select(0, self._sfid, 0, int(program))

    def _silence(self, block: int = 4096, max_seconds: float = 5.0) -> None:
        """Stops every voice and runs the synthesizer until it is silent, so no tail leaks into the next song."""
        self._synth.sounds_off()
        scratch = np.zeros(2 * block, np.float32)
        for _ in range(int(max_seconds * self.sample_rate) // block + 1):
            self._synth.generate(block, memoryview(scratch).cast("B"))
            if not np.any(scratch):
                return

    def render(self, notes_Nx4: np.ndarray, tempo_bpm: float, duration_s: float | None = None) -> np.ndarray:
        """Mono audio ``[samples]`` in [-1, 1]: every note at its time, pitch and velocity.

        Length: ``duration_s`` if given, else the last note's end plus ``RELEASE_S``;
        sound past the end is cut with a short fade.
        """
        notes_Nx4 = np.asarray(notes_Nx4).reshape(-1, len(notes_lib.NOTE_FIELDS))
        if tempo_bpm <= 0:
            raise AudioError(f"tempo must be positive, got {tempo_bpm} bpm")
        seconds_per_grid = 60.0 / (float(tempo_bpm) * notes_lib.FRAMES_PER_BEAT)
        on_N = notes_Nx4[:, notes_lib.ONSET] * seconds_per_grid
        off_N = (notes_Nx4[:, notes_lib.ONSET] + np.maximum(notes_Nx4[:, notes_lib.DURATION], 1)) * seconds_per_grid
        if duration_s is None:
            duration_s = (float(off_N.max()) if len(off_N) else 0.0) + RELEASE_S
        n_samples = round(duration_s * self.sample_rate)
        # events (sample, kind, pitch, velocity); at one time note-offs (kind 0) come before note-ons
        events = sorted([(round(t * self.sample_rate), 0, int(p), 0)
                         for t, p in zip(off_N, notes_Nx4[:, notes_lib.PITCH], strict=True)]
                        + [(round(t * self.sample_rate), 1, int(p), int(v))
                           for t, p, v in zip(on_N, notes_Nx4[:, notes_lib.PITCH], notes_Nx4[:, notes_lib.VELOCITY],
                                              strict=True)])
        stereo = np.zeros(2 * n_samples, np.float32)
        position = 0
        for sample, kind, pitch, velocity in events:
            sample = min(sample, n_samples)
            if sample > position:
                self._synth.generate(sample - position, memoryview(stereo[2 * position:2 * sample]).cast("B"))
                position = sample
            if kind:
                self._synth.noteon(0, pitch, max(1, min(velocity, 127)))
            else:
                self._synth.noteoff(0, pitch)
        if n_samples > position:
            self._synth.generate(n_samples - position, memoryview(stereo[2 * position:]).cast("B"))
        self._silence()
        mono = stereo.reshape(-1, 2).mean(axis=1)
        fade = min(len(mono), int(_FADE_S * self.sample_rate))
        if fade:
            mono[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
        return np.clip(mono, -1.0, 1.0)


def wav_bytes(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """``audio`` as the bytes of a 16-bit mono PCM WAV file (what ``write_wav`` writes and the app is served)."""
    audio = np.asarray(audio, np.float32).reshape(-1)
    if not np.all(np.isfinite(audio)):
        raise AudioError("audio has non-finite samples")
    pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(int(sample_rate))
        out.writeframes(pcm.tobytes())
    return buffer.getvalue()


def write_wav(path: str | os.PathLike, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """16-bit mono PCM WAV, written to a temporary name and renamed, so a failure leaves no half file."""
    path = Path(path)
    try:
        data = wav_bytes(audio, sample_rate)
    except AudioError as error:
        raise AudioError(f"{path}: {error}") from None
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """(mono float32 audio in [-1, 1], sample rate) of a 16-bit PCM WAV (channels averaged)."""
    with wave.open(str(path), "rb") as source:
        if source.getsampwidth() != 2:
            raise AudioError(f"{path}: only 16-bit PCM WAV is read, this one has {8 * source.getsampwidth()} bits")
        channels, rate = source.getnchannels(), source.getframerate()
        pcm = np.frombuffer(source.readframes(source.getnframes()), "<i2")
    return (pcm.reshape(-1, channels).mean(axis=1) / 32768.0).astype(np.float32), rate


def _chroma_filterbank(sample_rate: int, n_fft: int, n_chroma: int = 12, centre_octave: float = 5.0,
                       octave_width: float = 2.0) -> np.ndarray:
    """librosa's ``filters.chroma`` (tuning 0, L2 norm, base C): ``[12, 1 + n_fft // 2]``.

    Each FFT bin spreads over the pitch classes as a Gaussian in semitones around its
    own pitch (width: the bin's spacing in semitones, at least 1), columns L2-normalised,
    then weighted by a Gaussian over octaves centred on octave 5 (A5 = 880 Hz), 2 wide.
    """
    frequencies = np.linspace(0, sample_rate, n_fft, endpoint=False)[1:]
    bins = n_chroma * np.log2(frequencies / (440.0 / 16.0))  # semitones above A0
    bins = np.concatenate(([bins[0] - 1.5 * n_chroma], bins))  # the DC bin, 1.5 octaves below bin 1
    widths = np.concatenate((np.maximum(bins[1:] - bins[:-1], 1.0), [1.0]))
    distance_CxF = np.subtract.outer(bins, np.arange(n_chroma, dtype=np.float64)).T
    half = np.round(n_chroma / 2)
    distance_CxF = np.remainder(distance_CxF + half + 10 * n_chroma, n_chroma) - half
    weights_CxF = np.exp(-0.5 * (2 * distance_CxF / widths[None, :]) ** 2)
    norm_F = np.linalg.norm(weights_CxF, axis=0, keepdims=True)
    weights_CxF = weights_CxF / np.where(norm_F > np.finfo(np.float64).tiny, norm_F, 1.0)
    weights_CxF *= np.exp(-0.5 * ((bins / n_chroma - centre_octave) / octave_width) ** 2)[None, :]
    weights_CxF = np.roll(weights_CxF, -3 * (n_chroma // 12), axis=0)  # A-based -> C-based
    return np.ascontiguousarray(weights_CxF[:, :1 + n_fft // 2])


def stft_chroma(audio: np.ndarray, sample_rate: int = SAMPLE_RATE, n_fft: int = CHROMA_N_FFT,
                hop: int = CHROMA_HOP) -> np.ndarray:
    """MusDr's chroma from audio: ``[1 + len // hop, 12]`` (10 Hz at 22050 Hz), each frame L2-normalised.

    Power spectrogram of a centred STFT (zero padding of n_fft // 2 each side, periodic
    Hann window), projected on ``_chroma_filterbank``; frames of zero norm stay zero.
    """
    audio = np.asarray(audio, np.float64).reshape(-1)
    padded = np.pad(audio, n_fft // 2)
    n_frames = 1 + (len(padded) - n_fft) // hop
    if n_frames < 1:
        raise AudioError(f"{len(audio)} samples are too few for an STFT of {n_fft}")
    frames_TxN = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop][:n_frames]
    window = signal.get_window("hann", n_fft)
    power_TxF = np.abs(np.fft.rfft(frames_TxN * window, axis=1)) ** 2
    chroma_Tx12 = power_TxF @ _chroma_filterbank(sample_rate, n_fft).T
    norm_T = np.linalg.norm(chroma_Tx12, axis=1, keepdims=True)
    tiny = np.finfo(np.float64).tiny
    return np.where(norm_T >= tiny, chroma_Tx12 / np.where(norm_T >= tiny, norm_T, 1.0), chroma_Tx12)
