r"""Builds the ``sfs_songs`` TFDS dataset and prints/writes its build report.

    python -m data_pipeline.build --config=synthetic --data_dir=~/tensorflow_datasets
    python -m data_pipeline.build --config=pop909 --manual_dir=../shared/data/pop909 \
        --data_dir=~/tensorflow_datasets --workers=2

The report (songs kept, skipped by reason, bars, notes, tokens per bar, label and
alignment statistics) is printed and written as ``build_report.json``/``.md`` in
the dataset's version folder. A dataset already built at the same path is reused
unless ``--overwrite`` is given; a failed build leaves any previous one intact
(TFDS writes into a temporary folder and renames at the end).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from pathlib import Path

from absl import app, flags, logging

from data_pipeline import report as report_lib
from data_pipeline.sfs_songs import Builder, SfsSongsConfig

CONFIG_NAMES = ("synthetic", "pop909", "midi_folder")


def make_config(name: str, seed: int = 0, num_songs: int = 512) -> SfsSongsConfig | str:
    """The registered config name, or a custom config (own folder) for another seed/size."""
    base = next(c for c in Builder.BUILDER_CONFIGS if c.name == name)
    num_songs = num_songs if name == "synthetic" else base.num_songs
    if (seed, num_songs) == (base.seed, base.num_songs):
        return name
    suffix = f"_s{seed}" + (f"_n{num_songs}" if name == "synthetic" else "")
    return SfsSongsConfig(name=name + suffix, source=base.source, seed=seed,
                          num_songs=num_songs, description=base.description)


def build(config_name: str, data_dir: str | os.PathLike, manual_dir: str | None = None,
          workers: int = 1, seed: int = 0, num_songs: int = 512,
          overwrite: bool = False) -> tuple[Path, dict | None]:
    """Builds (or reuses) the dataset; returns its folder and the build report."""
    if config_name != "synthetic" and not manual_dir:
        raise ValueError(f"--config={config_name} needs --manual_dir")
    if manual_dir and not Path(manual_dir).expanduser().is_dir():
        raise FileNotFoundError(f"--manual_dir {manual_dir} is not a folder")
    config = make_config(config_name, seed, num_songs)
    data_dir = Path(data_dir).expanduser()
    download_config = tfds.download.DownloadConfig(
        manual_dir=str(Path(manual_dir).expanduser()) if manual_dir else None)
    builder = Builder(config=config, data_dir=str(data_dir), workers=workers)
    folder = Path(builder.data_dir)
    if overwrite and folder.exists():
        shutil.rmtree(folder)
        builder = Builder(config=config, data_dir=str(data_dir), workers=workers)
    # TFDS prints "Downloading and preparing dataset Unknown size ..." for a build that downloads
    # nothing; its progress bars (stderr) stay, our report says what was built.
    with contextlib.redirect_stdout(io.StringIO()):
        builder.download_and_prepare(download_config=download_config, file_format="array_record")
    if builder.last_report is not None:
        report_lib.write_report(builder.last_report, folder)
        return folder, builder.last_report
    saved = folder / report_lib.REPORT_JSON
    return folder, json.loads(saved.read_text()) if saved.exists() else None


def define_flags() -> None:
    """CLI flags, defined only when run as a program so importing ``build`` defines none."""
    flags.DEFINE_enum("config", "synthetic", CONFIG_NAMES, "Which sfs_songs builder config.")
    flags.DEFINE_string("manual_dir", None, "POP909 folder or MIDI folder (pop909/midi_folder).")
    flags.DEFINE_string("data_dir", "~/tensorflow_datasets", "Where TFDS datasets are written.")
    flags.DEFINE_integer("workers", os.cpu_count() or 1, "Worker processes for song processing.")
    flags.DEFINE_integer("seed", 0, "Seed for automatic segmentation and synthetic songs.")
    flags.DEFINE_integer("num_songs", 512, "Number of synthetic songs.")
    flags.DEFINE_bool("overwrite", False, "Rebuild even if the dataset exists.")


def main(argv: list[str]) -> None:
    del argv
    f = flags.FLAGS
    folder, report = build(f.config, f.data_dir, f.manual_dir, f.workers, f.seed, f.num_songs, f.overwrite)
    if report is None:
        logging.info("dataset already built at %s (no report found)", folder)
    else:
        print(report_lib.to_markdown(report))
    print(f"dataset: {folder}")


import tensorflow_datasets as tfds  # noqa: E402  (after flags, keeps --help fast to read)

if __name__ == "__main__":
    define_flags()
    app.run(main)
