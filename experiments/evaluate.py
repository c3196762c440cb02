r"""The paper's evaluation protocol (SFS.md section 5) over trained checkpoints and real test songs.

    python -m experiments.evaluate --models=sfs=runs/sfs,flat=runs/flat,no_ref=runs/ablate/no_ref \
        --num_seeds=20 --out=runs/eval --seed=0
    python -m experiments.evaluate --models=sfs=runs/quickstart/sfs --num_seeds=2 --structures=A4B4A4 \
        --out=/tmp/eval_quick                                                 # a CPU smoke run

For every model, seed song and structure (default: the paper's four) it composes
with an 8-bar seed from a test song placed in segment A (nucleus top_p=1.0, the
paper's evaluation), scores every generated song and the real seed songs with the
same note-level metrics, and writes under ``--out``:

- ``results.md`` / ``results.csv``: one row per model plus ``real``, mean and 95%
  Student t-interval per metric, the paper's SI next to ours (markdown);
- ``results_by_structure.csv`` and ``per_song.csv`` (every song's raw values);
- ``midi/<model>/<structure>/<seed_song_id>_<k>.mid`` (a marker per segment, the
  seed flagged) and ``pianoroll/<model>/<structure>/<seed_song_id>_<k>.png``;
- ``plots/<model>.png`` and ``plots/real.png``: self-similarity matrices with segment
  boundaries and fitness scape plots of a few example songs;
- ``paired.md`` / ``paired.csv``: every model minus ``--baseline`` (default flat) on the
  same songs, with intervals over seed songs (``sfs_jax.evaluation.paired``); to pair
  models evaluated in separate runs, ``python -m experiments.paired``.

Without ``--models`` the model that ships with the project is evaluated (its seeds
come from POP909, built from ``../shared/data/pop909`` or ``--dataset_dir``).

Every workdir, structure, number and the dataset split are checked before any
model is loaded. The rules the protocol follows (seed choice, seed placement, Flat,
real songs, statistics) are ``sfs_jax.evaluation.protocol.PROTOCOL_NOTES``.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import ml_collections
from absl import app, flags

from experiments import cli, pipeline
from sfs_jax.evaluation import paired, protocol
from sfs_jax.music import audio
from sfs_jax.music.structure import StructureError
from sfs_jax.training import shipped


def define_flags() -> None:
    """CLI flags, defined only when run as a program: importing this module (tests, other tools) defines
    none, so it never clashes with ``experiments.generate``'s ``--seed``, ``--out`` and ``--top_p``."""
    flags.DEFINE_list("models", [], "name=workdir pairs: SFS, Flat and ablation training workdirs (default: "
                      "sfs=the model that ships with the project).")
    flags.DEFINE_string("dataset_dir", "", "A built sfs_songs folder (default: the first model's config.data, "
                        "built or reused).")
    flags.DEFINE_string("split", "test", "Split the seed songs and real songs come from.")
    flags.DEFINE_integer("num_seeds", 8, "Seed songs drawn from the split (0: every eligible song).")
    flags.DEFINE_list("structures", list(protocol.PAPER_STRUCTURES), "Structures to compose.")
    flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (the paper's evaluation: 1.0).")
    flags.DEFINE_integer("samples_per_seed", 1, "Songs per (model, seed song, structure), batched.")
    flags.DEFINE_integer("seed_bars", protocol.SEED_BARS, "Bars of each seed.")
    flags.DEFINE_integer("plot_examples", 3, "Example songs per model in plots/<model>.png.")
    flags.DEFINE_string("out", "runs/evaluation", "Output folder.")
    flags.DEFINE_integer("seed", 0, "Seed of the seed-song draw, the compose orders and the sampling keys.")
    flags.DEFINE_integer("workers", 2, "Processes for a dataset build, if one is needed.")
    flags.DEFINE_enum("si_source", "notes", list(protocol.SI_SOURCES), "SI from the notes, or from each song "
                      "rendered with a sampled piano (librosa's STFT chroma, as the paper's MusDr); with audio the "
                      "per-song CSV keeps SI_*_notes beside SI_*.")
    flags.DEFINE_bool("audio", False, "Write a WAV beside each generated song's MIDI (the sampled piano).")
    flags.DEFINE_string("baseline", "flat", "Model the others are paired with (paired.md); skipped when it is not "
                        "among --models or is the only one.")


def resolve_dataset(dataset_dir: str, first_model_config: ml_collections.ConfigDict, workers: int) -> Path:
    """``--dataset_dir`` if given, else the dataset the first model was trained on (built if missing)."""
    if dataset_dir:
        path = Path(dataset_dir).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"--dataset_dir {path} is not a folder")
        return path
    return pipeline.ensure_dataset(first_model_config.data, workers)


def make_plan(args: flags.FlagValues | SimpleNamespace) -> protocol.ProtocolPlan:
    """Every check of the command line, in the order that fails cheapest first; bad input -> UsageError.

    ``args`` has one attribute per flag (``flags.FLAGS`` or a namespace in tests).
    Workdirs and structures are checked before the dataset is resolved, because
    resolving it may build a dataset.
    """
    try:
        specs = protocol.parse_model_specs(args.models or [f"sfs={shipped.materialize()}"])
        configs = protocol.check_models(specs)
        protocol.parse_structures(args.structures, args.seed_bars)
        config = protocol.ProtocolConfig(
            models=specs, dataset_dir=resolve_dataset(args.dataset_dir, configs[0], args.workers),
            out=Path(args.out), split=args.split, num_seeds=args.num_seeds, structures=tuple(args.structures),
            top_p=args.top_p, samples_per_seed=args.samples_per_seed, seed=args.seed, seed_bars=args.seed_bars,
            plot_examples=args.plot_examples, si_source=args.si_source, write_audio=args.audio)
        if config.si_source == "audio" or config.write_audio:
            audio.find_soundfont()  # no SoundFont: refused before anything is composed
        return protocol.prepare(config)
    except (StructureError, FileNotFoundError, ValueError, audio.AudioError) as err:
        raise app.UsageError(str(err)) from err


def main(argv: list[str]) -> None:
    del argv
    cli.prepare()
    plan = make_plan(flags.FLAGS)
    result = protocol.execute(plan)
    print(result.markdown)
    names = [spec.name for spec in plan.config.models]
    if flags.FLAGS.baseline in names and len(names) > 1:
        print(paired.write_paired(Path(plan.config.out), result.rows, flags.FLAGS.baseline))
    print(f"written under {plan.config.out}")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
