"""The TFDS build end to end: odd MIDI corpus, synthetic build read back, determinism."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import symusic
import tensorflow_datasets as tfds

from data_pipeline import build, sources
from sfs_jax.music import notes as notes_lib
from sfs_jax.music.song import Song
from tests.conftest import REPO_ROOT, TINY_SYNTHETIC_SONGS, write_good_midi


def _score(notes: list[tuple[int, int, int, int]], meters: list[tuple[int, int, int]] = (),
           drum: bool = False) -> symusic.Score:
    """A score at 480 ticks per quarter; notes as (tick, duration_ticks, pitch, velocity)."""
    score = symusic.Score(480)
    for time, num, den in meters:
        score.time_signatures.append(symusic.TimeSignature(time, num, den))
    track = symusic.Track("t", program=0, is_drum=drum)
    for time, duration, pitch, velocity in notes:
        track.notes.append(symusic.Note(time, duration, pitch, velocity))
    score.tracks.append(track)
    return score


def _bar_notes(n_bars: int) -> list[tuple[int, int, int, int]]:
    return [(i * 240, 240, 60 + i % 7, 90) for i in range(n_bars * 8)]


def write_odd_corpus(folder: Path) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """Writes the odd files and some good ones.

    Returns (skipped file -> expected reason, kept-with-changes file -> changed
    stat, good files).
    """
    folder.mkdir(parents=True, exist_ok=True)
    good = []
    for i in range(3):
        write_good_midi(folder / f"good_{i}.mid", n_bars=8 + i, seed=i)
        good.append(f"good_{i}.mid")
    (folder / "empty.mid").write_bytes(b"")
    data = (folder / "good_0.mid").read_bytes()
    (folder / "truncated.mid").write_bytes(data[: len(data) // 2])
    (folder / "not_a_midi.mid").write_text("this is a text file, not MIDI\n")
    type2 = bytearray(data)
    type2[8:10] = (2).to_bytes(2, "big")
    (folder / "type2.mid").write_bytes(bytes(type2))
    _score(_bar_notes(4), drum=True).dump_midi(folder / "drums_only.mid")
    _score(_bar_notes(4), meters=[(0, 3, 4)]).dump_midi(folder / "three_four.mid")
    _score(_bar_notes(8), meters=[(0, 4, 4), (4 * 1920, 3, 4)]).dump_midi(folder / "meter_change.mid")
    rng = np.random.default_rng(0)
    dense = [(int(t), 60, int(p), 80) for t, p in zip(rng.integers(0, 100 * 1920, 100_000),
                                                     rng.integers(21, 109, 100_000), strict=True)]
    _score(dense).dump_midi(folder / "hundred_k_notes.mid")
    _score([(i * 480, 0, 60 + i, 80) for i in range(16)]).dump_midi(folder / "zero_length.mid")
    _score([(0, 480, 0, 80), (480, 480, 127, 80), *_bar_notes(2)]).dump_midi(folder / "pitch_0_127.mid")
    _score(_bar_notes(4), meters=[(0, 2, 2)]).dump_midi(folder / "cut_time.mid")  # bars of 4 quarters: kept
    good.append("cut_time.mid")
    tempo_change = _score(_bar_notes(8))
    tempo_change.tempos.extend([symusic.Tempo(0, 100.0), symusic.Tempo(4 * 1920, 140.0)])
    tempo_change.dump_midi(folder / "tempo_change.mid")  # kept at 100 bpm, and reported
    good.append("tempo_change.mid")
    skipped = {"empty.mid": "empty_file", "truncated.mid": "not_midi_or_corrupt",
               "not_a_midi.mid": "not_midi_or_corrupt", "type2.mid": "midi_type_2",
               "drums_only.mid": "no_pitched_notes", "three_four.mid": "not_4_4",
               "meter_change.mid": "meter_change", "hundred_k_notes.mid": "too_dense"}
    changed = {"zero_length.mid": "zero_length_fixed", "pitch_0_127.mid": "pitches_moved_by_octave"}
    return skipped, changed, good


def test_odd_midi_corpus_builds_with_every_file_reported(tmp_path: Path) -> None:
    skipped, changed, good = write_odd_corpus(tmp_path / "midis")
    data_dir = tmp_path / "tfds"
    result = subprocess.run(
        [sys.executable, "-m", "data_pipeline.build", "--config=midi_folder",
         f"--manual_dir={tmp_path / 'midis'}", f"--data_dir={data_dir}", "--workers=2"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report_path = next(data_dir.glob("sfs_songs/midi_folder/*/build_report.json"))
    report = json.loads(report_path.read_text())
    reasons = {s["file"]: s["reason"] for s in report["skipped"]}
    assert reasons == skipped
    changes = {c["file"]: c for c in report["kept_with_changes"]}
    for file, stat in changed.items():
        assert changes[file][stat] > 0, (file, changes.get(file))
    assert report["songs_kept"] == len(good) + len(changed)
    assert [v["file"] for v in report["tempo_varies"]] == ["tempo_change.mid"]
    assert report["tempo_varies"][0]["tempo_bpm"] == pytest.approx(100.0, abs=0.01)
    for line in ("empty.mid", "too_dense", "songs:"):
        assert line in result.stdout

    source = tfds.builder_from_directory(str(report_path.parent)).as_data_source()
    kept_files = sorted(Song.from_features(ex).source_file for split in source for ex in source[split])
    assert kept_files == sorted(good + list(changed))


def test_synthetic_build_reads_back_as_songs(tiny_synthetic_dataset: Path) -> None:
    source = tfds.builder_from_directory(str(tiny_synthetic_dataset)).as_data_source()
    songs = [Song.from_features(ex) for split in source for ex in source[split]]
    assert len(songs) == TINY_SYNTHETIC_SONGS
    for song in songs:
        assert song.label_source == "synthetic"
        assert len(song.notes_Nx4) > 0
        np.testing.assert_array_equal(song.notes_Nx4, notes_lib.normalize_notes(song.notes_Nx4)[0])
        assert sources.split_of(song.song_id) in source
    report = json.loads((tiny_synthetic_dataset / "build_report.json").read_text())
    assert report["songs_kept"] == TINY_SYNTHETIC_SONGS
    assert report["tokens_per_bar"]["mean"] > notes_lib.FRAMES_PER_BAR


def test_build_is_deterministic(tmp_path: Path) -> None:
    contents = []
    for run in range(2):
        folder, _ = build.build("synthetic", tmp_path / f"run{run}", num_songs=8, seed=3, workers=1)
        source = tfds.builder_from_directory(str(folder)).as_data_source()
        contents.append({ex["id"]: ex["notes"].tobytes() for split in source for ex in source[split]})
    assert contents[0] == contents[1]


def test_split_is_a_stable_hash() -> None:
    counts = {"train": 0, "validation": 0, "test": 0}
    for i in range(2000):
        counts[sources.split_of(f"song-{i}")] += 1
    assert sources.split_of("pop909-001") == sources.split_of("pop909-001")
    assert 0.86 < counts["train"] / 2000 < 0.94
    assert counts["validation"] > 50 and counts["test"] > 50


def test_build_refuses_missing_manual_dir(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="manual_dir"):
        build.build("pop909", tmp_path)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        build.build("midi_folder", tmp_path, manual_dir=str(tmp_path / "nope"))
