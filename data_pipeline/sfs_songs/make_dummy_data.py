"""Writes ``dummy_data/``: a POP909-shaped folder and a MIDI folder from this project's synthetic songs.

    python -m data_pipeline.sfs_songs.make_dummy_data

POP909-shaped songs get three tracks (MELODY = the top voice, BRIDGE, PIANO), a
``beat_midi.txt`` with a one-bar pickup, human-label files, and a
``structure_melody.txt`` on the label grid, so the builder's alignment has a known
answer: a shift of 4 beats.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import symusic

from data_pipeline import synthetic
from sfs_jax.music import midi_io
from sfs_jax.music import notes as notes_lib
from sfs_jax.music.structure import format_structure

DUMMY_DIR = Path(__file__).resolve().parent / "dummy_data"
PICKUP_BEATS = 4
TICKS_PER_BEAT = 480


def top_voice(notes_Nx4: np.ndarray) -> np.ndarray:
    """The highest note of each onset frame (a stand-in for POP909's MELODY track)."""
    order = np.lexsort((-notes_Nx4[:, notes_lib.PITCH], notes_Nx4[:, notes_lib.ONSET]))
    ordered = notes_Nx4[order]
    first = np.ones(len(ordered), bool)
    first[1:] = ordered[1:, notes_lib.ONSET] != ordered[:-1, notes_lib.ONSET]
    return ordered[first & (ordered[:, notes_lib.PITCH] >= 60)]


def write_pop909_song(folder: Path, song: synthetic.SyntheticSong) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    ticks_per_frame = TICKS_PER_BEAT // notes_lib.FRAMES_PER_BEAT
    offset = PICKUP_BEATS * TICKS_PER_BEAT
    melody = top_voice(song.notes_Nx4)
    score = symusic.Score(TICKS_PER_BEAT)
    score.tempos.append(symusic.Tempo(0, song.tempo_bpm))
    score.time_signatures.append(symusic.TimeSignature(0, 1, 4))  # wrong on purpose, like most POP909 files
    for name, part in (("MELODY", melody), ("BRIDGE", song.notes_Nx4[:0]), ("PIANO", song.notes_Nx4)):
        track = symusic.Track(name, program=0)
        for onset, pitch, velocity, duration in part:
            if name == "PIANO" and any((melody[:, 0] == onset) & (melody[:, 1] == pitch)):
                continue
            track.notes.append(symusic.Note(int(onset) * ticks_per_frame + offset, int(duration) * ticks_per_frame,
                                            int(pitch), int(velocity)))
        score.tracks.append(track)
    score.dump_midi(folder / f"{folder.name}.mid")
    seconds_per_beat = 60.0 / song.tempo_bpm
    n_beats = song.n_bars * notes_lib.BEATS_PER_BAR + PICKUP_BEATS
    with open(folder / "beat_midi.txt", "w") as f:
        for beat in range(n_beats):
            downbeat = float((beat - PICKUP_BEATS) % 4 == 0)
            f.write(f"{beat * seconds_per_beat:.6f} {float(beat % 2 == 0)} {downbeat}\n")
    labels = format_structure(song.segments).replace(" ", "")
    (folder / "structure_human_label1.txt").write_text(labels + "\n")
    (folder / "structure_human_label2.txt").write_text(labels + "\n")
    # (pitch or 0, length in 16ths) on the label grid: each melody note lasts until the next onset.
    start_16 = melody[:, notes_lib.ONSET] // 2
    keep = np.ones(len(start_16), bool)
    keep[1:] = start_16[1:] != start_16[:-1]
    start_16, pitches = start_16[keep], melody[keep, notes_lib.PITCH]
    lengths = np.diff(np.append(start_16, start_16[-1] + 4))
    sixteenths = ([(0, int(start_16[0]))] if start_16[0] > 0 else []) + list(zip(pitches.tolist(), lengths.tolist(),
                                                                                  strict=True))
    (folder / "structure_melody.txt").write_text("".join(f"{p} {n}\n" for p, n in sixteenths))


def main() -> None:
    for index in range(2):
        write_pop909_song(DUMMY_DIR / "pop909" / "songs" / f"{index + 1:03d}", synthetic.generate_song(7, index))
    for index in range(3):
        song = synthetic.generate_song(8, index)
        midi_io.write_midi(DUMMY_DIR / "midi_folder" / f"song_{index}.mid", song.notes_Nx4, song.tempo_bpm)


if __name__ == "__main__":
    main()
