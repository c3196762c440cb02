"""The builder's own test on its committed dummy data (pytest collects it with the suite)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_pipeline import build, pop909
from data_pipeline.sfs_songs import make_dummy_data
from sfs_jax.music.song import Song

DUMMY = Path(make_dummy_data.DUMMY_DIR)


@pytest.mark.parametrize("config, manual, count, source", [
    ("pop909", DUMMY / "pop909", 2, "human"),
    ("midi_folder", DUMMY / "midi_folder", 3, "auto"),
])
def test_builds_dummy_data(tmp_path: Path, config: str, manual: Path, count: int, source: str) -> None:
    folder, report = build.build(config, tmp_path, manual_dir=str(manual), workers=1)
    assert report["songs_kept"] == count and not report["skipped"]
    data = tfds.builder_from_directory(str(folder)).as_data_source()
    songs = [Song.from_features(ex) for split in data for ex in data[split]]
    assert len(songs) == count
    assert {s.label_source for s in songs} == {source}
    for song in songs:
        assert song.segments[-1].end_bar == song.n_bars and len(song.notes_Nx4) > 0
    if config == "pop909":
        assert report["alignment"]["songs_aligned"] == count
        assert report["alignment"]["melody_match"]["p5"] == pytest.approx(1.0)


def test_dummy_pop909_alignment_finds_the_pickup() -> None:
    """make_dummy_data puts a one-bar pickup before label bar 0: the shift must be 4 beats."""
    song = pop909.load_song(DUMMY / "pop909" / "songs" / "001", seed=0)
    assert song.label_source == "human" and song.shift_beats == make_dummy_data.PICKUP_BEATS
    assert np.all(song.notes_Nx4[:, 0] >= 0)
