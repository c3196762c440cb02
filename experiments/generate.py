r"""Compose songs from a structure (and optionally a seed MIDI) with a trained SFS checkpoint.

    python -m experiments.generate --structure="A8 B8 A8 C4" --seed_midi=song.mid \
        --checkpoint=runs/quickstart/sfs --num_samples=4 --top_p=0.975 --seed=0 --out=runs/songs

Writes, per sample, ``song_<i>.mid`` (the seed's tempo or ``--tempo``, 4/4, one
marker per segment with its label, the seed segment flagged), ``song_<i>.png`` (a
piano roll with labelled segment bands), with ``--audio`` ``song_<i>.wav`` (rendered
with a sampled General MIDI piano, ``sfs_jax.music.audio``), and ``report.json`` (structure, order,
contexts chosen per segment, speed). Every input is checked before anything is
written: an impossible structure, an unknown order index, an unreadable seed or a
missing checkpoint is a clear error and ``--out`` is left untouched. Without
``--checkpoint`` the model that ships with the project is used (``sfs_jax/pretrained``,
materialized once under ``~/.cache/sfs_jax/shipped``); ``--checkpoint=newest`` takes the
newest SFS run under ``--runs_dir``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import numpy as np
import tqdm
from absl import app, flags, logging

from experiments import cli
from sfs_jax.music import audio, midi_io
from sfs_jax.music.pianoroll import write_pianoroll
from sfs_jax.music.structure import StructureError, format_structure, parse_structure, validate_compose_order
from sfs_jax.sampling.composer import Callbacks, ComposeRequest, context_summary, fit_seed, load_composer, plan_order
from sfs_jax.sampling.segment import SamplingConfig
from sfs_jax.training import shipped
from sfs_jax.training.checkpoint import BEST

_STRUCTURE = flags.DEFINE_string("structure", "A8 B8 A8 C4", "Segments as label+bars: 'A8 B8 A8 C4' or 'A8B8A8C4'.")
_SEED_MIDI = flags.DEFINE_string("seed_midi", "", "A MIDI file whose notes become the seed segment.")
_SEED_SEGMENT = flags.DEFINE_integer("seed_segment", None, "Index of the seed segment (default: SFS's rule).")
_SEED_FIT = flags.DEFINE_enum("seed_fit", "error", ["error", "pad", "trim", "fit"],
                              "When the seed's bars differ from its segment's.")
_ORDER = flags.DEFINE_list("order", [], "Compose order as segment indices, e.g. 2,0,1,3 (default: SFS's rule).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "", "An SFS training workdir; 'newest': the newest under --runs_dir "
                                  "(default: the model that ships with the project).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "Songs to compose (batched).")
_TOP_P = flags.DEFINE_float("top_p", 0.975, "Nucleus sampling mass for every head.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Top-k for every head (0: off).")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Sampling temperature for every head.")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed: the same seed reproduces the songs.")
_TEMPO = flags.DEFINE_float("tempo", 0.0, "Tempo in BPM (default: the seed's, else 100).")
_OUT = flags.DEFINE_string("out", "runs/generated", "Output folder.")
_RUNS = flags.DEFINE_string("runs_dir", "runs", "Where --checkpoint=newest looks.")
_AUDIO = flags.DEFINE_bool("audio", False, "Also write song_<i>.wav beside each MIDI: a sampled piano (the system's "
                           "General MIDI SoundFont, Debian's fluid-soundfont-gm), 22050 Hz mono.")


def resolve_checkpoint(checkpoint: str, runs_dir: str | Path) -> Path:
    """``--checkpoint`` as a run folder: a path, ``newest`` (under ``runs_dir``) or empty (the shipped model)."""
    if not checkpoint:
        return shipped.materialize()
    path = newest_checkpoint(runs_dir) if checkpoint == "newest" else Path(checkpoint)
    if not path.is_dir():
        raise FileNotFoundError(f"--checkpoint {path} is not a folder")
    return path


def newest_checkpoint(runs_dir: str | Path) -> Path:
    """The most recently written SFS workdir (one with a best/ checkpoint and an SFS config)."""
    candidates = []
    for best in Path(runs_dir).glob(f"**/{BEST}"):
        meta_files = list(best.glob("*/meta/metadata")) + list(best.glob("*/meta/*.json"))
        if any('"task": "sfs"' in f.read_text(errors="ignore") for f in meta_files):
            candidates.append((best.stat().st_mtime, best.parent))
    if not candidates:
        raise FileNotFoundError(f"no trained SFS checkpoint under {runs_dir}/: train one with `bash run.sh` or "
                                "python -m experiments.train --config=experiments/configs/sfs.py --workdir=DIR, "
                                "then pass --checkpoint=DIR")
    return max(candidates)[1]


def build_request(structure: str, seed_midi: str, seed_segment: int | None, seed_fit: str, order: list[str],
                  tempo: float) -> ComposeRequest:
    """Validates every input into a ComposeRequest (raises StructureError/MidiSkip/ValueError)."""
    segments = parse_structure(structure)
    compose_order = None
    if order:
        try:
            compose_order = tuple(validate_compose_order([int(i) for i in order], len(segments)))
        except ValueError as err:
            raise StructureError(f"--order {','.join(order)}: {err}") from err
    if seed_segment is not None and not 0 <= seed_segment < len(segments):
        raise StructureError(f"--seed_segment {seed_segment} is not in 0..{len(segments) - 1}")
    seed_notes, seed_tempo = None, None
    if seed_midi:
        if not Path(seed_midi).is_file():
            raise FileNotFoundError(f"--seed_midi {seed_midi} does not exist")
        try:
            parsed = midi_io.read_midi(seed_midi)
        except midi_io.MidiSkip as err:
            raise midi_io.MidiSkip(err.reason, f"--seed_midi {seed_midi} is not usable: {err.detail}") from err
        seed_notes, seed_tempo = parsed.notes_Nx4, parsed.tempo_bpm
        if parsed.tempo_varies:
            logging.warning("the seed's tempo changes from %.1f to %.1f bpm; the song is written at %.1f bpm (its "
                            "tempo at the first note) unless --tempo says otherwise", *parsed.tempo_span_bpm,
                            parsed.tempo_bpm)
    if compose_order is not None and seed_segment is not None and compose_order[0] != seed_segment:
        raise StructureError(f"the seed segment {seed_segment} must come first in --order")
    request = ComposeRequest(segments=segments, tempo_bpm=tempo or seed_tempo or 100.0, seed_notes_Nx4=seed_notes,
                             seed_segment=seed_segment, seed_fit=seed_fit, compose_order=compose_order)
    if seed_notes is not None:  # check the seed fits its segment now, before any model is loaded
        _, _, index = plan_order(request, np.random.default_rng(0))
        fit_seed(seed_notes, segments[index].n_bars, seed_fit)
    return request


def main(argv: list[str]) -> None:
    del argv
    cli.prepare()
    try:
        request = build_request(_STRUCTURE.value, _SEED_MIDI.value, _SEED_SEGMENT.value, _SEED_FIT.value,
                                _ORDER.value, _TEMPO.value)
        checkpoint = resolve_checkpoint(_CHECKPOINT.value, _RUNS.value)
        renderer = audio.PianoRenderer() if _AUDIO.value else None  # no SoundFont: refused before composing
    except (StructureError, midi_io.MidiSkip, FileNotFoundError, ValueError, audio.AudioError) as err:
        raise app.UsageError(str(err)) from err
    sampling = SamplingConfig(temperature=_TEMPERATURE.value, top_p=_TOP_P.value, top_k=_TOP_K.value)
    loading = time.perf_counter()
    composer, meta = load_composer(str(checkpoint), sampling)
    load_seconds = time.perf_counter() - loading
    try:  # what only the model decides: a left-to-right model (the GPT-like Flat) refuses other orders
        plan_order(request, np.random.default_rng(_SEED.value), composer.left_to_right)
    except StructureError as err:
        raise app.UsageError(str(err)) from err
    to_write = len(request.segments) - (request.seed_notes_Nx4 is not None)
    bar = tqdm.tqdm(total=to_write, desc="segments", unit="segment")
    start = time.perf_counter()
    results = composer.compose(request, jax.random.key(_SEED.value), _NUM_SAMPLES.value,
                               Callbacks(on_segment_done=lambda _: bar.update()), seed=_SEED.value)
    seconds = time.perf_counter() - start
    bar.close()
    out = Path(_OUT.value)
    out.mkdir(parents=True, exist_ok=True)
    for i, result in enumerate(results):
        song = result.song
        midi_io.write_midi(out / f"song_{i}.mid", song.notes_Nx4, song.tempo_bpm, song.segments, result.seed_segment)
        write_pianoroll(out / f"song_{i}.png", song.notes_Nx4, song.n_bars, song.segments, result.seed_segment,
                        title=f"{format_structure(song.segments)} (sample {i}, seed {_SEED.value})")
        if renderer is not None:
            audio.write_wav(out / f"song_{i}.wav", renderer.render(song.notes_Nx4, song.tempo_bpm),
                            renderer.sample_rate)
    written_beats = _NUM_SAMPLES.value * 4 * sum(request.segments[i].n_bars for i in results[0].contexts)
    report = {
        "structure": format_structure(request.segments), "checkpoint": str(checkpoint),
        "checkpoint_step": meta.get("step"), "seed": _SEED.value, "num_samples": _NUM_SAMPLES.value,
        "sampling": {"temperature": _TEMPERATURE.value, "top_p": _TOP_P.value, "top_k": _TOP_K.value},
        "tempo_bpm": request.tempo_bpm, "seed_segment": results[0].seed_segment,
        "compose_order": list(results[0].compose_order),
        "contexts": {str(k): context_summary(request.segments, v, composer.example_config, k)
                     for k, v in results[0].contexts.items()},
        "load_seconds": round(load_seconds, 2),  # the models from their checkpoints
        "seconds": round(seconds, 2),  # composing, compilation (or reading it from the cache) included
        "beats_per_second": round(written_beats / seconds, 2),
        "notes": [len(r.song.notes_Nx4) for r in results],
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    cli.run(main)
