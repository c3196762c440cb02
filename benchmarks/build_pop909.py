r"""POP909 build speed: the full sfs_songs/pop909 build against a plain REMI tokenization.

    python -m benchmarks.build_pop909 [--manual_dir=../shared/data/pop909] [--workers=2]

Both run in this process on the same files, one after the other, so the printed
ratio is comparable on a noisy machine. The full build reads every MIDI, aligns
the human labels (melody matching), segments every song automatically (also to
score against the labels), and writes array_record TFDS shards; the baseline only
parses each file and runs miditok's REMI on it. Goal (issue 2): 909 songs in at
most 30 s on the 2-core CI machine.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import platform
import tempfile
import time
from pathlib import Path

from absl import app, flags

from data_pipeline import build, pop909
from sfs_jax.music.tokenizer import remi_tokenizer

_MANUAL_DIR = flags.DEFINE_string("manual_dir", str(Path(__file__).resolve().parents[2] / "shared/data/pop909"),
                                  "POP909 folder.")
_WORKERS = flags.DEFINE_integer("workers", 2, "Worker processes for both pipelines.")


def _remi_count(path: str) -> int:
    return sum(len(seq.ids) for seq in _REMI.encode(path))


_REMI = None


def _init_remi() -> None:
    global _REMI  # one tokenizer per worker process
    _REMI = remi_tokenizer()


def plain_remi_seconds(files: list[Path], workers: int) -> tuple[float, int]:
    start = time.perf_counter()
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                                initializer=_init_remi) as pool:
        tokens = sum(pool.map(_remi_count, [str(f) for f in files], chunksize=16))
    return time.perf_counter() - start, tokens


def main(argv: list[str]) -> None:
    del argv
    dirs = pop909.song_dirs(_MANUAL_DIR.value)
    files = [d / f"{d.name}.mid" for d in dirs]
    print(f"machine: {platform.machine()}, {multiprocessing.cpu_count()} cpus, python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as data_dir:
        start = time.perf_counter()
        _, report = build.build("pop909", data_dir, manual_dir=_MANUAL_DIR.value, workers=_WORKERS.value)
        ours = time.perf_counter() - start
    remi, tokens = plain_remi_seconds(files, _WORKERS.value)
    print(f"sfs_songs/pop909 build: {len(dirs)} songs in {ours:.1f} s = {len(dirs) / ours:.1f} songs/s "
          f"(processing {report['seconds']} s, the rest is TFDS writing), {report['songs_kept']} kept")
    print(f"plain REMI tokenization: {len(files)} songs in {remi:.1f} s = {len(files) / remi:.1f} songs/s "
          f"({tokens} tokens)")
    print(f"ratio full build / plain REMI time: {ours / remi:.2f}")


if __name__ == "__main__":
    app.run(main)
