"""TFDS builder ``sfs_songs``: segmented piano songs on the SFS frame grid.

Build (array_record files, no TensorFlow needed)::

    python -m data_pipeline.build --config=synthetic --data_dir=~/tensorflow_datasets
    python -m data_pipeline.build --config=pop909 --manual_dir=../shared/data/pop909 \
        --data_dir=~/tensorflow_datasets
    python -m data_pipeline.build --config=midi_folder --manual_dir=path/to/midis

Read::

    tfds.data_source("sfs_songs/synthetic", data_dir=...)  # or
    tfds.builder_from_directory(path).as_data_source()

Every song is processed once, in parallel worker processes, before the split
generators yield, so one progress bar covers the build and the report sees every
outcome (see data_pipeline/report.py).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import multiprocessing
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
import tqdm

from data_pipeline import pop909, report, sources

_DESCRIPTION = """Piano songs as notes on an 8-frames-per-beat 4/4 grid (onset frame, pitch,
velocity, duration in frames) with a segmentation into labelled sections (same
label = same material), for the Segmented Full-Song model."""

_CITATION = """@inproceedings{chen2025sfs,
  title={Segment-Factorized Full-Song Generation on Symbolic Piano Music},
  author={Chen, Ping-Yi and Tan, Chih-Pin and Yang, Yi-Hsuan},
  booktitle={NeurIPS 2025 Workshop on AI for Music},
  year={2025}
}"""

SPLITS = ("train", "validation", "test")


@dataclasses.dataclass
class SfsSongsConfig(tfds.core.BuilderConfig):
    """``seed`` drives automatic segmentation and synthetic songs; ``num_songs`` sizes synthetic."""

    source: str = "synthetic"
    seed: int = 0
    num_songs: int = 512


class Builder(tfds.core.GeneratorBasedBuilder):
    """Segmented songs from POP909, any MIDI folder, or the built-in synthetic generator."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: pop909, midi_folder and synthetic configs."}
    BUILDER_CONFIGS = [
        SfsSongsConfig(name="pop909", source="pop909",
                       description="POP909 with aligned human phrase labels (automatic fallback)."),
        SfsSongsConfig(name="midi_folder", source="midi_folder",
                       description="Any folder of MIDI files, automatic segmentation."),
        SfsSongsConfig(name="synthetic", source="synthetic",
                       description="Procedural structured piano songs; nothing to download."),
    ]
    DEFAULT_CONFIG_NAME = "synthetic"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """pop909: a folder laid out like ../shared/data/pop909
    (songs/NNN/NNN.mid, beat_midi.txt, structure_*.txt). midi_folder: any folder of .mid files."""

    def __init__(self, *, workers: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._workers = max(int(workers), 1)
        self.last_report: dict[str, Any] | None = None

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict({
                "id": tfds.features.Text(),
                "notes": tfds.features.Tensor(shape=(None, 4), dtype=np.int32),
                "n_bars": tfds.features.Scalar(dtype=np.int32),
                "tempo_bpm": tfds.features.Scalar(dtype=np.float32),
                "segments": tfds.features.Sequence({
                    "start_bar": tfds.features.Scalar(dtype=np.int32),
                    "end_bar": tfds.features.Scalar(dtype=np.int32),
                    "label": tfds.features.Text(),
                }),
                "label_source": tfds.features.Text(),
                "source_file": tfds.features.Text(),
            }),
            homepage="https://arxiv.org/abs/2510.05881",
            citation=_CITATION,
        )

    def _work_items(self, dl_manager: tfds.download.DownloadManager) -> tuple[Callable, list[tuple]]:
        """(worker function, its argument tuples) for this config."""
        config: SfsSongsConfig = self.builder_config
        if config.source == "synthetic":
            return sources.process_synthetic, [(i, config.seed) for i in range(config.num_songs)]
        manual_dir = dl_manager.manual_dir
        if config.source == "pop909":
            dirs = pop909.song_dirs(manual_dir)
            if not dirs:
                raise FileNotFoundError(f"no POP909 song folders (songs/NNN/NNN.mid) under {manual_dir}")
            return sources.process_pop909, [(str(d), config.seed) for d in dirs]
        files = sources.midi_files(manual_dir)
        if not files:
            raise FileNotFoundError(f"no .mid/.midi files under {manual_dir}")
        return sources.process_midi_file, [(str(f), str(manual_dir), config.seed) for f in files]

    def _process_all(self, function: Callable, items: Sequence[tuple]) -> list[sources.Outcome]:
        """Runs every item, in worker processes when asked, with one progress bar."""
        bar = functools.partial(tqdm.tqdm, total=len(items), desc=f"sfs_songs/{self.builder_config.name}",
                                unit="song", mininterval=1.0)
        if self._workers == 1 or len(items) < 2:
            return [function(*args) for args in bar(items)]
        chunk = max(1, len(items) // (self._workers * 8))
        # forkserver, not fork: the calling process may already run JAX's threads (a command that
        # composed or trained before building), and forking a multithreaded process can deadlock.
        # The server imports this module once; each worker forks from that clean process.
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        with concurrent.futures.ProcessPoolExecutor(self._workers, mp_context=context) as pool:
            return list(bar(pool.map(_call, [(function, args) for args in items], chunksize=chunk)))

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        start = time.perf_counter()
        function, items = self._work_items(dl_manager)
        outcomes = self._process_all(function, items)
        self.last_report = report.build_report(self.builder_config.name, outcomes,
                                               time.perf_counter() - start)
        # A split with no song is left out (TFDS refuses empty splits): tiny folders.
        by_split = {split: [o for o in outcomes if o.split == split and o.song is not None]
                    for split in SPLITS}
        return {split: self._generate_examples(kept) for split, kept in by_split.items() if kept}

    def _generate_examples(self, outcomes: list[sources.Outcome]) -> Iterator[tuple[str, dict]]:
        for outcome in outcomes:
            yield outcome.song_id, outcome.song.to_features()


def _call(function_and_args: tuple[Callable, tuple]) -> sources.Outcome:
    function, args = function_and_args
    return function(*args)
