r"""The whole loop on a fresh machine: data -> bar VAE -> SFS -> a composed song.

    python -m experiments.quickstart --workdir=runs/quickstart            # embedded synthetic data
    python -m experiments.quickstart --workdir=runs/pop909 --pop909=../shared/data/pop909

First composes a song with the model that ships with the project (trained on POP909,
``sfs_jax/pretrained``), in seconds. Then builds the ``synthetic`` dataset (or POP909
when a folder is given), trains the bar VAE and the ``small`` SFS model for a few
minutes on CPU, composes a song from a default structure with it, and writes MIDI, a
piano-roll PNG and a short report under ``--workdir``. Every stage resumes: run it
again and finished stages are skipped.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
from absl import flags

from experiments import cli, pipeline
from experiments.configs import bar_vae as vae_configs
from experiments.configs import sfs as sfs_configs
from sfs_jax.music import midi_io
from sfs_jax.music.pianoroll import write_pianoroll
from sfs_jax.music.structure import format_structure, parse_structure
from sfs_jax.sampling.composer import ComposeRequest, load_composer
from sfs_jax.training import shipped

_WORKDIR = flags.DEFINE_string("workdir", "runs/quickstart", "Where everything is written.")
_POP909 = flags.DEFINE_string("pop909", "", "A POP909 folder; empty: the embedded synthetic dataset.")
_SIZE = flags.DEFINE_enum("size", "small", ["tiny", "small"], "Model preset for the CPU run.")
_VAE_STEPS = flags.DEFINE_integer("vae_steps", 150, "Bar VAE steps (0: the preset's).")
_SFS_STEPS = flags.DEFINE_integer("sfs_steps", 200, "SFS steps (0: the preset's).")
_STRUCTURE = flags.DEFINE_string("structure", "A8 B8 A8 C4", "Structure of the composed song.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the composed song.")
_WORKERS = flags.DEFINE_integer("workers", 2, "Processes for the dataset build.")
_SHIPPED = flags.DEFINE_bool("shipped_song", True, "First compose a song with the shipped model.")


def configure(config, workdir: Path, steps: int) -> None:
    """Points a config at the quickstart's data and sets the step budget."""
    config.data.data_dir = str(workdir / "tensorflow_datasets")
    if _POP909.value:
        config.data.builder, config.data.manual_dir = "pop909", _POP909.value
    if steps:
        config.train.num_steps = steps
        config.train.eval_every = config.train.checkpoint_every = max(steps // 2, 1)


def compose_song(run: Path, out: Path, name: str, model_name: str) -> dict:
    """Composes ``--structure`` with the run's model; writes NAME.mid, NAME.png under ``out``; returns a summary."""
    composer, meta = load_composer(str(run))
    request = ComposeRequest(parse_structure(_STRUCTURE.value), tempo_bpm=100.0)
    start = time.perf_counter()
    result = composer.compose(request, jax.random.key(_SEED.value), seed=_SEED.value)[0]
    seconds = time.perf_counter() - start
    song = result.song
    out.mkdir(parents=True, exist_ok=True)
    midi_io.write_midi(out / f"{name}.mid", song.notes_Nx4, song.tempo_bpm, song.segments)
    write_pianoroll(out / f"{name}.png", song.notes_Nx4, song.n_bars, song.segments,
                    title=f"{format_structure(song.segments)} by {model_name} (step {meta.get('step')})")
    return {"structure": format_structure(song.segments), "compose_order": list(result.compose_order),
            "notes": len(song.notes_Nx4), "seconds_with_compile": round(seconds, 1),
            "midi": str(out / f"{name}.mid"), "pianoroll": str(out / f"{name}.png")}


def main(argv: list[str]) -> None:
    del argv
    cli.prepare()
    workdir = Path(_WORKDIR.value)
    timings, shipped_song = {}, None
    if _SHIPPED.value:
        start = time.perf_counter()
        shipped_song = compose_song(shipped.materialize(), workdir, "shipped_song",
                                    f"the shipped {shipped.DEFAULT_MODEL}")
        timings["shipped_song_s"] = round(time.perf_counter() - start, 1)
        print(f"composed {shipped_song['midi']} and {shipped_song['pianoroll']} with the shipped model in "
              f"{timings['shipped_song_s']} s; now the training loop on "
              f"{'POP909' if _POP909.value else 'the embedded synthetic songs'}", flush=True)
    vae_config = vae_configs.get_config(f"size={_SIZE.value}")
    configure(vae_config, workdir, _VAE_STEPS.value)
    start = time.perf_counter()
    vae_result = pipeline.run(vae_config, str(workdir / "vae"), _WORKERS.value)
    timings["bar_vae_s"] = round(time.perf_counter() - start, 1)

    sfs_config = sfs_configs.get_config(f"size={_SIZE.value}")
    configure(sfs_config, workdir, _SFS_STEPS.value)
    sfs_config.vae_workdir = str(workdir / "vae")
    start = time.perf_counter()
    sfs_result = pipeline.run(sfs_config, str(workdir / "sfs"), _WORKERS.value)
    timings["sfs_s"] = round(time.perf_counter() - start, 1)

    start = time.perf_counter()
    song_report = compose_song(workdir / "sfs", workdir, "song", f"sfs/{_SIZE.value}")
    timings["compose_s"] = round(time.perf_counter() - start, 1)
    report = {"timings": timings, "bar_vae_validation": vae_result["validation"],
              "sfs_validation": sfs_result["validation"], "song": song_report, "shipped_song": shipped_song}
    (workdir / "quickstart_report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    cli.run(main)
