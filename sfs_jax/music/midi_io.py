"""MIDI <-> notes on the 32-frame bar grid, through symusic (the engine under miditok).

Place in the data flow: [1] reading any MIDI file into ``notes_Nx4`` and [7] writing
generated songs back. Fixes the original's reader (SFS.md section 6): every
non-drum track is merged into one piano part, the sustain pedal lengthens notes,
pitches outside the piano are folded by octaves, the tempo is kept, and meters
other than a constant 4/4 are refused with a reason instead of being cut into
wrong bars.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import symusic

from sfs_jax.music import notes as notes_lib
from sfs_jax.music.structure import Segment

DEFAULT_TEMPO_BPM = 120.0
OUTPUT_TICKS_PER_BEAT = 480


class MidiSkip(Exception):
    """A MIDI file that cannot become a 4/4 piano song; ``reason`` is a short code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclasses.dataclass
class RawNotes:
    """Merged, pedal-applied notes in the score's own time unit (ticks or seconds)."""

    start: np.ndarray
    end: np.ndarray
    pitch: np.ndarray
    velocity: np.ndarray
    melody_start: np.ndarray  # onsets of tracks named MELODY, sorted (POP909 alignment)
    melody_pitch: np.ndarray  # their pitches, in the same order


@dataclasses.dataclass
class ParsedMidi:
    """A MIDI file on the frame grid: what the dataset builders consume."""

    notes_Nx4: np.ndarray
    tempo_bpm: float  # in force at the first note
    stats: notes_lib.NormalizationStats
    tempo_span_bpm: tuple[float, float] = (0.0, 0.0)  # slowest and fastest tempo while notes sound

    @property
    def tempo_varies(self) -> bool:
        """The tempo changes by more than 10% during the notes (the grid is in beats; the seconds are not kept)."""
        slowest, fastest = self.tempo_span_bpm
        return slowest > 0 and fastest > 1.1 * slowest


def load_score(path: str | os.PathLike) -> symusic.Score:
    """Parses a MIDI file; every failure becomes MidiSkip so a corpus build never crashes."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as err:
        raise MidiSkip("unreadable", str(err)) from err
    if size == 0:
        raise MidiSkip("empty_file", "0 bytes")
    with open(path, "rb") as f:
        header = f.read(14)
    if len(header) < 14 or header[:4] != b"MThd":
        raise MidiSkip("not_midi_or_corrupt", "no MThd header")
    midi_format = int.from_bytes(header[8:10], "big")
    if midi_format == 2:
        # Format 2 holds independent sequential patterns, not one song on one timeline.
        raise MidiSkip("midi_type_2", "format 2 files hold independent patterns")
    if midi_format > 2:
        raise MidiSkip("not_midi_or_corrupt", f"unknown MIDI format {midi_format}")
    try:
        return symusic.Score(str(path))
    except Exception as err:  # symusic raises RuntimeError/ValueError/... on bad bytes
        repaired = clamp_data_bytes(path.read_bytes())
        if repaired is not None:
            try:  # a data byte above 127 (a broken controller value) need not cost the whole song
                return symusic.Score.from_midi(repaired)
            except Exception:  # the original error is the one to report
                pass
        raise MidiSkip("not_midi_or_corrupt", f"{type(err).__name__}: {err}") from err


def _read_vlq(data: bytes, pos: int) -> tuple[int, int]:
    """A MIDI variable-length quantity at ``pos``: (value, position after it)."""
    value = 0
    for _ in range(4):
        byte = data[pos]
        pos += 1
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, pos
    raise ValueError("variable-length quantity longer than 4 bytes")


def clamp_data_bytes(data: bytes) -> bytes | None:
    """The file with every channel-message data byte clamped to 0..127, or None when nothing changes or it
    cannot be walked.

    A tolerant reader (as mido's ``clip``) reads the data bytes a channel message
    must have and clips them; strict readers refuse the whole file for one bad
    controller value. Meta and system-exclusive events are copied as they are.
    """
    out, pos, changed = bytearray(), 0, False
    try:
        while pos + 8 <= len(data):
            kind, length = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "big")
            chunk = bytearray(data[pos:pos + 8 + length])
            if kind == b"MTrk":
                changed |= _clamp_track(chunk, 8, 8 + length)
            out += chunk
            pos += 8 + length
    except (IndexError, ValueError):
        return None
    return bytes(out) if changed else None


def _clamp_track(chunk: bytearray, pos: int, end: int) -> bool:
    changed, status = False, 0
    while pos < end:
        _, pos = _read_vlq(chunk, pos)  # delta time
        if chunk[pos] >= 0x80:
            status = chunk[pos]
            pos += 1
        if status == 0xFF:  # meta: type, length, data
            length, pos = _read_vlq(chunk, pos + 1)
            pos += length
        elif status in (0xF0, 0xF7):  # system exclusive: length, data
            length, pos = _read_vlq(chunk, pos)
            pos += length
        elif 0x80 <= status < 0xF0:
            for _ in range(1 if 0xC0 <= status < 0xE0 else 2):
                if chunk[pos] > 0x7F:
                    chunk[pos], changed = 0x7F, True
                pos += 1
        else:
            raise ValueError(f"no status byte at {pos}")
    return changed


# Meters whose bar is four quarter notes long: the 32-frame bar of the grid (2/2 is "cut time").
FOUR_QUARTER_METERS = ((4, 4), (2, 2))


def meters_in_force(score: symusic.Score) -> list[tuple[int, int]]:
    """The meters the song uses in time order: at each tick only the last time signature counts.

    A file that writes 4/4 and then 2/4 at tick 0 is in 2/4 from the start; the 4/4 never sounds.
    """
    by_tick: dict[int, tuple[int, int]] = {}
    for ts in sorted(score.time_signatures, key=lambda t: t.time):
        by_tick[int(ts.time)] = (int(ts.numerator), int(ts.denominator))
    meters = [by_tick[tick] for tick in sorted(by_tick)]
    return [m for i, m in enumerate(meters) if i == 0 or m != meters[i - 1]]  # repeats are no change


def check_four_four(score: symusic.Score) -> None:
    """Refuses songs whose bar is not a constant four quarter notes (4/4 or 2/2; none means 4/4 by the MIDI spec)."""
    meters = meters_in_force(score)
    bar_of = lambda m: FOUR_QUARTER_METERS[0] if m in FOUR_QUARTER_METERS else m
    if len({bar_of(m) for m in meters}) > 1:
        raise MidiSkip("meter_change", " -> ".join(f"{n}/{d}" for n, d in meters))
    if meters and meters[0] not in FOUR_QUARTER_METERS:
        raise MidiSkip("not_4_4", f"{meters[0][0]}/{meters[0][1]}")


def tempo_at(score: symusic.Score, time: float) -> float:
    """The tempo in force at ``time`` (the score's unit): the last tempo event at or before it, else 120 bpm.

    120 bpm is the MIDI standard's tempo before any tempo event.
    """
    tempos = [t for t in sorted(score.tempos, key=lambda t: t.time) if t.time <= time]
    return float(tempos[-1].qpm) if tempos else DEFAULT_TEMPO_BPM


def tempo_span_bpm(score: symusic.Score, first: float, last: float) -> tuple[float, float]:
    """(slowest, fastest) tempo in force between two times (the song's first and last onset)."""
    during = [float(t.qpm) for t in score.tempos if first < t.time <= last]
    in_force = [tempo_at(score, first), *during]
    return min(in_force), max(in_force)


def first_tempo_bpm(score: symusic.Score) -> float:
    """The tempo in force at the first note, so generated MIDI is written at the song's tempo.

    Not the first tempo event: files often carry a placeholder tempo for a beat before
    the real one (a 13.3 bpm beat before 120 would make a 79 s song last 676 s).
    """
    onsets = [track.notes.numpy()["time"].min() for track in score.tracks if not track.is_drum and len(track.notes)]
    return tempo_at(score, float(min(onsets)) if onsets else 0.0)


def _apply_sustain(start: np.ndarray, end: np.ndarray, pedal_start: np.ndarray,
                   pedal_end: np.ndarray) -> np.ndarray:
    """A note released while the pedal is down sounds until the pedal comes up."""
    if len(pedal_start) == 0 or len(end) == 0:
        return end
    order = np.argsort(pedal_start, kind="stable")
    pedal_start, pedal_end = pedal_start[order], pedal_end[order]
    # Overlapping pedal spans: the running maximum of ends is the effective release.
    pedal_end = np.maximum.accumulate(pedal_end)
    idx = np.searchsorted(pedal_start, end, side="right") - 1
    held = (idx >= 0) & (end < pedal_end[np.maximum(idx, 0)])
    return np.where(held, np.maximum(end, pedal_end[np.maximum(idx, 0)]), end)


def merge_tracks(score: symusic.Score) -> RawNotes:
    """All non-drum tracks as one piano part with each track's own sustain pedal applied."""
    parts, melody = [], []
    for track in score.tracks:
        if track.is_drum or len(track.notes) == 0:
            continue
        arr = track.notes.numpy()
        start = arr["time"].astype(np.float64)
        end = start + np.maximum(arr["duration"].astype(np.float64), 0.0)
        pedals = track.pedals.numpy()
        p_start = pedals["time"].astype(np.float64)
        end = _apply_sustain(start, end, p_start, p_start + pedals["duration"].astype(np.float64))
        parts.append((start, end, arr["pitch"].astype(np.int64), arr["velocity"].astype(np.int64)))
        if track.name.strip().upper() == "MELODY":
            melody.append((start, arr["pitch"].astype(np.int64)))
    if not parts:
        has_drums = any(track.is_drum and len(track.notes) for track in score.tracks)
        raise MidiSkip("no_pitched_notes", "only drum notes" if has_drums else "the file holds no notes")
    start, end, pitch, velocity = (np.concatenate(cols) for cols in zip(*parts, strict=True))
    melody_start = np.concatenate([m[0] for m in melody]) if melody else np.zeros(0)
    melody_pitch = np.concatenate([m[1] for m in melody]) if melody else np.zeros(0, np.int64)
    order = np.argsort(melody_start, kind="stable")
    return RawNotes(start, end, pitch, velocity, melody_start[order], melody_pitch[order])


def quantize(raw: RawNotes, beats_of_time: Callable[[np.ndarray], np.ndarray],
             origin_beats: float = 0.0) -> tuple[np.ndarray, notes_lib.NormalizationStats]:
    """Maps onsets/offsets to the nearest frame of the beat grid and normalizes.

    ``beats_of_time`` turns the score's time unit into (fractional) beats: ticks/tpq
    for ordinary files, interpolation of annotated beat times for POP909.
    ``origin_beats`` is the beat that becomes frame 0 (bar 0); notes before it are
    dropped by ``normalize_notes``.
    """
    fpb = notes_lib.FRAMES_PER_BEAT
    onset = np.rint((beats_of_time(raw.start) - origin_beats) * fpb).astype(np.int64)
    offset = np.rint((beats_of_time(raw.end) - origin_beats) * fpb).astype(np.int64)
    notes = np.stack([onset, raw.pitch, raw.velocity, offset - onset], axis=1)
    return notes_lib.normalize_notes(notes)


def read_midi(path: str | os.PathLike) -> ParsedMidi:
    """Reads an ordinary MIDI file (own ticks per beat and meter) onto the frame grid."""
    score = load_score(path)
    raw = merge_tracks(score)  # no notes is the reason to report first, whatever the meter
    check_four_four(score)
    tpq = float(score.ticks_per_quarter)
    if tpq <= 0:
        raise MidiSkip("not_midi_or_corrupt", f"ticks per quarter is {tpq}")
    notes, stats = quantize(raw, lambda t: t / tpq)
    if len(notes) == 0:
        raise MidiSkip("no_pitched_notes", "no notes left after quantization")
    starts = raw.start
    return ParsedMidi(notes, first_tempo_bpm(score), stats, tempo_span_bpm(score, float(starts.min()),
                                                                           float(starts.max())))


def notes_to_score(notes_Nx4: np.ndarray, tempo_bpm: float,
                   segments: Sequence[Segment] = (), seed_segment: int | None = None) -> symusic.Score:
    """One piano track at the song's tempo, 4/4, and one marker per segment with its label."""
    tpf = OUTPUT_TICKS_PER_BEAT // notes_lib.FRAMES_PER_BEAT
    score = symusic.Score(OUTPUT_TICKS_PER_BEAT)
    score.tempos.append(symusic.Tempo(0, float(tempo_bpm)))
    score.time_signatures.append(symusic.TimeSignature(0, 4, 4))
    for index, seg in enumerate(segments):
        text = f"{seg.label}{seg.n_bars}" + (" seed" if index == seed_segment else "")
        score.markers.append(symusic.TextMeta(seg.start_bar * notes_lib.FRAMES_PER_BAR * tpf, text))
    track = symusic.Track("Piano", program=0, is_drum=False)
    notes = np.asarray(notes_Nx4, np.int64).reshape(-1, 4)
    for onset, pitch, velocity, duration in notes:
        track.notes.append(symusic.Note(int(onset) * tpf, max(int(duration), 1) * tpf,
                                        int(pitch), int(velocity)))
    score.tracks.append(track)
    return score


def write_midi(path: str | os.PathLike, notes_Nx4: np.ndarray, tempo_bpm: float,
               segments: Sequence[Segment] = (), seed_segment: int | None = None) -> Path:
    """Writes atomically (temp file, then rename) so a failure never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    score = notes_to_score(notes_Nx4, tempo_bpm, segments, seed_segment)
    fd, tmp = tempfile.mkstemp(suffix=".mid", dir=path.parent)
    os.close(fd)
    try:
        score.dump_midi(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the file is as readable as any other written
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_markers(score: symusic.Score) -> list[tuple[int, str]]:
    """(bar, text) of each marker, for restoring a structure from an exported MIDI."""
    ticks_per_bar = score.ticks_per_quarter * notes_lib.BEATS_PER_BAR
    return [(round(m.time / ticks_per_bar), m.text) for m in sorted(score.markers, key=lambda m: m.time)]
