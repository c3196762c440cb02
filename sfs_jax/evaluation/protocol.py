"""The paper's evaluation protocol (SFS.md section 5) as plain functions: seeds, composing, scoring, tables.

Place in the data flow: [7] evaluation. ``experiments/evaluate.py`` is the command
line; everything it does lives here so tests run the same code without a subprocess.
The runtime never imports the offline data pipeline, so the caller passes a built
``sfs_songs`` folder (the CLI builds or reuses one).

The protocol, with every choice the paper leaves open made explicit, is
``PROTOCOL_NOTES`` (also printed under the results table, so a reader of the
results sees the rules that made them).
"""

from __future__ import annotations

import csv
import dataclasses
import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from scipy import stats

from sfs_jax.evaluation import metrics as metrics_lib
from sfs_jax.evaluation import plots, structureness
from sfs_jax.music import audio as audio_lib
from sfs_jax.music import midi_io
from sfs_jax.music import notes as notes_lib
from sfs_jax.music.pianoroll import write_pianoroll
from sfs_jax.music.song import Song
from sfs_jax.music.structure import Segment, StructureError, default_compose_order, parse_structure
from sfs_jax.sampling.composer import ComposedSong, Composer, ComposeRequest, load_composer
from sfs_jax.sampling.segment import SamplingConfig
from sfs_jax.training import tasks
from sfs_jax.training.checkpoint import BEST
from sfs_jax.training.restore import saved_config

PAPER_STRUCTURES = ("A8B16C8D8E8", "A4B8C8D8B8C16E8", "A8B8C4B8D8B8E4", "A4B8C8A8C8A8D8")
SEED_BARS = 8
SEED_LABEL = "A"
SEED_FIT = "pad"  # the seed is trimmed here; the composer only keeps trailing rests as rests
REAL = "real"
CONFIDENCE = 0.95
SPEED = "beats_per_second"
SI_KEYS = tuple(structureness.si_key(lo, hi) for lo, hi in structureness.PAPER_SI_RANGES_S)
SI_SOURCES = ("notes", "audio")
SI_SOURCE_NOTES = {"notes": "the paper used rendered audio: --si_source=audio",
                   "audio": "the songs rendered with a sampled piano, as the paper"}
# (key in the rows, column title in results.md), in table order.
COLUMNS: tuple[tuple[str, str], ...] = (
    (SI_KEYS[0], "SI 2-8"), (SI_KEYS[1], "SI 8-16"), (SI_KEYS[2], "SI 16+"),
    ("seed_adherence", "seed adherence"), ("structure_contrast", "contrast"), ("structure_auc", "AUC"),
    ("pitch_class_entropy_1bar", "H1"), ("pitch_class_entropy_4bar", "H4"), ("grooving_similarity", "GS"),
    (SPEED, "beats/s"))
METRICS = tuple(key for key, _ in COLUMNS)
# SFS.md section 5 (audio SI, RTX 4090 speed), matched to our rows by (lower-case) model name.
PAPER_SI: dict[str, tuple[float, float, float]] = {
    "sfs": (0.3286, 0.2264, 0.1109), "wholesong": (0.3234, 0.2262, 0.0860),
    "flat": (0.3426, 0.1990, 0.0409), REAL: (0.4398, 0.3827, 0.3300)}
PAPER_SPEED = {"sfs": 2.03, "wholesong": 0.197, "flat": 5.68}
PROTOCOL_NOTES = """\
- **Seed songs.** A song of the split is *eligible* when it has at least
  ``seed_bars`` (8) bars and its seed, trimmed to the shortest seed segment of the
  requested structures, holds a note (an empty seed cannot seed anything). From the
  eligible songs, ``num_seeds`` are drawn without replacement by
  ``np.random.default_rng(seed).permutation`` and kept in dataset order (0: all).
- **Seed rule** (``seed_from_song``): the first ``seed_bars`` bars of the song's
  first segment of at least ``seed_bars`` bars, or, when no segment is that long,
  the song's first ``seed_bars`` bars. A seed is then one coherent section instead of
  an excerpt straddling a boundary. Notes still sounding at the seed's last bar line
  are cut there, so the seed is a self-contained excerpt and stays bit-identical in
  every generated song. Its tempo is the song's tempo.
- **Seed placement.** The seed goes in the structure's first segment labelled
  ``A`` (the paper: "an 8-bar seed"; every paper structure starts with A). With A
  shorter than the seed (the paper's A4 structures) the seed's first A bars are used
  (trimmed like ``seed_fit='trim'``, notes cut at the segment's end); a longer A is
  refused, since it would leave silent bars the model never fills. The request then
  passes ``seed_fit='pad'``, which only keeps trailing rests of the seed as rests.
  The rest of the compose order is the default rule (the seed first, then SFS.md
  section 1's order), drawn from a seed derived from (``seed``, structure, seed song).
- **Models.** Every model, SFS, Flat or an ablation, composes through the same
  ``Composer`` and request. A Flat checkpoint has no structure or seed inputs (no
  context slots, no G); it still receives the seed notes in the seed segment so every
  model's song contains the same seed. The paper's Flat ("GPT-like, no structure, no
  seed") is the default ``model=flat``: trained on windows anywhere in the song, it
  writes the other segments left to right, each window reaching back up to
  ``window_bars - 1`` bars across segment boundaries (so the bars right after the seed
  continue it, as a GPT prompted with the seed would). A Flat trained on SFS's segment
  windows (``examples.window_scope=segment``) instead starts every segment from an
  empty window and never hears the seed or another segment. Both are the same decoder
  with the structure inputs removed (``sfs_jax.model.flat``).
- **Randomness.** The JAX key of a song depends on (``seed``, structure, seed song)
  only, so all models draw with common random numbers.
- **Real songs.** The chosen seed songs themselves are scored through the same
  ``song_metrics`` with their own (human or automatic) segments; their "seed" for
  seed adherence is the first segment of the default compose order
  (``default_compose_order(...)[0]``: the segment of the label covering the most bars
  whose start is closest to the song's middle; that step draws nothing at random).
- **Metrics** per song: ``metrics.song_metrics`` (MusDr's SI 2-8/8-16/16+ s from notes,
  or with ``si_source="audio"`` from the song rendered with a sampled piano,
  seed adherence, structure contrast and AUC, pitch-class entropy over 1 and 4 bars,
  grooving similarity) and the generation speed: beats written (every segment but
  the seed, all samples of the batch) per wall-clock second of one ``compose`` call,
  after one warm-up call per model that compiles every sampler program used.
- **Statistics.** Each cell is the mean over songs with a finite value and a 95%
  Student t-interval (``t_interval``). A metric can be undefined for a song (seed
  adherence when the seed's label occurs once; SI is MusDr's 0 where nothing fits): those
  songs are left out of that cell and its n says so. n = 1 gives no interval and is
  marked. Songs sharing a seed song are not independent, so the interval is
  optimistic when ``samples_per_seed`` > 1 or over structures; the per-song CSV
  allows any other analysis. Speed is averaged over compose calls, not songs.
"""
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


# ---------------------------------------------------------------- inputs and checks


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One evaluated checkpoint: a row name and its training workdir."""

    name: str
    workdir: Path


@dataclasses.dataclass(frozen=True)
class StructureSpec:
    """A parsed structure, its compact name (a folder name) and where the seed goes."""

    name: str
    segments: tuple[Segment, ...]
    seed_segment: int


def safe_name(text: str) -> str:
    """A file-name-safe version of an id (POP909 or MIDI-folder ids may hold '/' or spaces)."""
    return _SAFE_NAME.sub("_", text).strip("_") or "_"


def parse_model_specs(items: Iterable[str]) -> tuple[ModelSpec, ...]:
    """``["sfs=runs/sfs", "runs/flat"]`` -> specs (a bare path is named by its last folder).

    Names become table rows and folder names, so they must be unique, file-name safe
    and not ``real`` (the real-songs row).
    """
    specs = []
    for item in items:
        name, sep, workdir = item.strip().partition("=")
        if not sep:
            name, workdir = Path(item.strip()).name, item.strip()
        name, workdir = name.strip(), workdir.strip()
        if not name or not workdir:
            raise ValueError(f"--models entry {item!r} is not name=workdir")
        if safe_name(name) != name:
            raise ValueError(f"model name {name!r} may hold only letters, digits, '_', '.' and '-'")
        if name.lower() == REAL:
            raise ValueError(f"model name {name!r} is reserved for the real-songs row")
        specs.append(ModelSpec(name, Path(workdir).expanduser()))
    if not specs:
        raise ValueError("--models is empty: pass name=workdir pairs, e.g. sfs=runs/sfs,flat=runs/flat")
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"model names must be unique; repeated: {duplicates}")
    return tuple(specs)


def check_model(spec: ModelSpec) -> ml_collections.ConfigDict:
    """The training config of a workdir holding an SFS (or Flat) best checkpoint; clear errors otherwise.

    Checked without building the model: the folder, a committed ``best/<step>``
    checkpoint (looked for before orbax opens the folder, which would create it),
    the task, and the bar VAE that a model with G needs.
    """
    where = f"model {spec.name!r} ({spec.workdir})"
    if not spec.workdir.is_dir():
        raise FileNotFoundError(f"{where}: no such folder")
    best = spec.workdir / BEST
    if not best.is_dir() or not any(p.name.isdigit() for p in best.iterdir()):
        raise FileNotFoundError(f"{where} holds no best checkpoint ({BEST}/<step>): train it with "
                                "python -m experiments.train --config=experiments/configs/sfs.py --workdir=DIR")
    config = saved_config(spec.workdir)
    if config.get("task") != "sfs":
        raise ValueError(f"{where} holds a {config.get('task')!r} checkpoint, not an SFS or Flat model")
    if tasks.model_config_from(config).use_global_view:
        vae_dir = config.get("vae_workdir", "")
        if not vae_dir or not Path(vae_dir).is_dir():
            raise FileNotFoundError(f"{where} uses the global view G but its bar VAE {vae_dir!r} is missing")
    return config


def check_models(specs: Sequence[ModelSpec]) -> list[ml_collections.ConfigDict]:
    """``check_model`` of every spec, before any work starts."""
    return [check_model(spec) for spec in specs]


def parse_structures(texts: Iterable[str], seed_bars: int = SEED_BARS) -> tuple[StructureSpec, ...]:
    """Parses each structure and finds its seed segment (the first ``A``); refuses what cannot take a seed."""
    specs = []
    for text in texts:
        segments = parse_structure(text)
        name = "".join(f"{s.label}{s.n_bars}" for s in segments)
        seed_index = next((i for i, s in enumerate(segments) if s.label == SEED_LABEL), None)
        if seed_index is None:
            raise StructureError(f"structure {text!r} has no segment labelled {SEED_LABEL!r} for the seed")
        if segments[seed_index].n_bars > seed_bars:
            raise StructureError(f"structure {text!r}: the seed segment {SEED_LABEL}{segments[seed_index].n_bars} "
                                 f"is longer than the {seed_bars}-bar seed (raise --seed_bars)")
        specs.append(StructureSpec(name, segments, seed_index))
    if not specs:
        raise StructureError("no structure given")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise StructureError(f"structures repeat: {names}")
    return tuple(specs)


# ---------------------------------------------------------------- seeds


@dataclasses.dataclass(frozen=True, eq=False)
class Seed:
    """An excerpt of a test song: notes relative to its first bar, and where it came from."""

    song_id: str
    notes_Nx4: np.ndarray
    tempo_bpm: float
    start_bar: int  # in the source song
    n_bars: int

    def fitted(self, n_bars: int) -> np.ndarray:
        """The seed's first ``n_bars`` bars, notes cut at that bar line (what the seed segment keeps)."""
        return clip_to_bars(self.notes_Nx4, min(n_bars, self.n_bars))


def clip_to_bars(notes_Nx4: np.ndarray, n_bars: int) -> np.ndarray:
    """Notes with onsets in bars [0, n_bars), each cut to end by the ``n_bars`` bar line."""
    notes = notes_lib.notes_in_bars(np.asarray(notes_Nx4), 0, n_bars)
    end = n_bars * notes_lib.FRAMES_PER_BAR
    notes[:, notes_lib.DURATION] = np.minimum(notes[:, notes_lib.DURATION], end - notes[:, notes_lib.ONSET])
    return notes


def seed_start_bar(song: Song, seed_bars: int = SEED_BARS) -> int:
    """First bar of the seed: the first segment of >= ``seed_bars`` bars, else bar 0."""
    return next((s.start_bar for s in song.segments if s.n_bars >= seed_bars), 0)


def seed_from_song(song: Song, seed_bars: int = SEED_BARS) -> Seed:
    """The song's seed by the module's rule; a song shorter than ``seed_bars`` gives a shorter seed."""
    start = seed_start_bar(song, seed_bars)
    n_bars = min(seed_bars, song.n_bars - start)
    notes = clip_to_bars(notes_lib.notes_in_bars(np.asarray(song.notes_Nx4), start, start + n_bars), n_bars)
    return Seed(song.song_id, notes, float(song.tempo_bpm), start, n_bars)


def choose_seed_songs(songs: Sequence[Song], num_seeds: int, seed: int, seed_bars: int = SEED_BARS,
                      min_seed_bars: int = 1) -> list[Song]:
    """``num_seeds`` eligible songs (0: all), drawn by ``seed`` and returned in dataset order.

    Eligible: at least ``seed_bars`` bars, and a note in the seed's first
    ``min_seed_bars`` bars (the shortest seed segment it must fill).
    """
    if num_seeds < 0:
        raise ValueError(f"num_seeds must be >= 0, got {num_seeds}")
    eligible = [i for i, song in enumerate(songs) if song.n_bars >= seed_bars
                and len(seed_from_song(song, seed_bars).fitted(min_seed_bars))]
    if not eligible or num_seeds > len(eligible):
        raise ValueError(f"asked for {num_seeds} seed songs but only {len(eligible)} of {len(songs)} songs have "
                         f">= {seed_bars} bars and notes in their seed; lower --num_seeds (0 takes all)")
    count = num_seeds or len(eligible)
    picked = np.random.default_rng(seed).permutation(len(eligible))[:count]
    return [songs[eligible[i]] for i in sorted(picked)]


# ---------------------------------------------------------------- composing


@dataclasses.dataclass(frozen=True, eq=False)
class GeneratedSong:
    """One composed song and how long its ``compose`` call took."""

    model: str
    structure: StructureSpec
    structure_index: int
    seed: Seed
    seed_index: int
    sample: int
    composed: ComposedSong
    seconds: float  # of the whole compose call (every sample of the batch)
    written_beats: int  # of the whole compose call

    @property
    def beats_per_second(self) -> float:
        return self.written_beats / self.seconds if self.seconds > 0 else math.nan

    @property
    def stem(self) -> str:
        """``<seed_song_id>_<k>``: the MIDI and piano-roll file name."""
        return f"{safe_name(self.seed.song_id)}_{self.sample}"


def seed_request(structure: StructureSpec, seed: Seed) -> ComposeRequest:
    """The request every model gets for (structure, seed): the seed fitted to the seed segment."""
    n_bars = structure.segments[structure.seed_segment].n_bars
    return ComposeRequest(segments=structure.segments, tempo_bpm=seed.tempo_bpm, seed_notes_Nx4=seed.fitted(n_bars),
                          seed_segment=structure.seed_segment, seed_fit=SEED_FIT)


def song_key(base_seed: int, structure_index: int, seed_index: int) -> tuple[jax.Array, int]:
    """(JAX key, compose-order seed) of one (structure, seed song): the same for every model."""
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(base_seed), structure_index), seed_index)
    order_seed = int(np.random.SeedSequence([base_seed, structure_index, seed_index]).generate_state(1)[0])
    return key, order_seed


def warmup_structure(structures: Sequence[StructureSpec], window_bars: int) -> StructureSpec:
    """A short structure whose compose compiles every sampler program the evaluated ones use.

    A seed segment and a fresh window always; a segment one bar longer than the
    window when any structure slides (its prefilled windows are another program).
    """
    seed_bars = min(window_bars, min(s.segments[s.seed_segment].n_bars for s in structures))
    lengths = [(SEED_LABEL, seed_bars), ("B", window_bars)]
    if any(seg.n_bars > window_bars for s in structures for seg in s.segments):
        lengths.append(("C", window_bars + 1))
    return parse_structures(["".join(f"{label}{n}" for label, n in lengths)], seed_bars)[0]


def compose_one(composer: Composer, model: str, structure: StructureSpec, structure_index: int, seed: Seed,
                seed_index: int, samples: int, base_seed: int) -> list[GeneratedSong]:
    """``samples`` songs (one batched call) for one (structure, seed song), timed."""
    key, order_seed = song_key(base_seed, structure_index, seed_index)
    start = time.perf_counter()
    results = composer.compose(seed_request(structure, seed), key, samples, seed=order_seed)
    seconds = time.perf_counter() - start  # compose returns numpy notes: the device work is done
    written_bars = sum(structure.segments[i].n_bars for i in results[0].contexts)
    beats = samples * written_bars * notes_lib.BEATS_PER_BAR
    return [GeneratedSong(model, structure, structure_index, seed, seed_index, k, result, seconds, beats)
            for k, result in enumerate(results)]


def compose_all(composer: Composer, model: str, structures: Sequence[StructureSpec], seeds: Sequence[Seed],
                samples: int, base_seed: int) -> list[GeneratedSong]:
    """Every (structure, seed song) for one model, after a warm-up call that is not timed."""
    warmup = warmup_structure(structures, composer.example_config.window_bars)
    composer.compose(seed_request(warmup, seeds[0]), jax.random.key(base_seed), samples, seed=base_seed)
    if composer.left_to_right and any(s.seed_segment != 0 for s in structures):
        # The seed at bar 0 gives every window of a left-to-right model a prefix; unseeded, its first has none.
        composer.compose(ComposeRequest(warmup.segments), jax.random.key(base_seed), samples, seed=base_seed)
    songs = []
    for s_index, structure in enumerate(structures):
        for k_index, seed in enumerate(seeds):
            songs += compose_one(composer, model, structure, s_index, seed, k_index, samples, base_seed)
        logging.info("%s: composed %s for %d seed songs", model, structure.name, len(seeds))
    return songs


# ---------------------------------------------------------------- scoring and statistics


def real_seed_segment(song: Song) -> int:
    """The real song's 'seed': the first segment of the default compose order (deterministic)."""
    return default_compose_order(song.segments, np.random.default_rng(0))[0]


def render_song(renderer: audio_lib.PianoRenderer, song: Song) -> np.ndarray:
    """The song played by the sampled piano over its bars (the audio SI and the WAV files use)."""
    return renderer.render(song.notes_Nx4, song.tempo_bpm, metrics_lib.song_seconds(song))


def song_scores(song: Song, seed_segment: int | None, samples: np.ndarray | None = None,
                sample_rate: int = audio_lib.SAMPLE_RATE) -> dict[str, float]:
    """Every metric of one song; given its audio ``samples``, SI_* are from that audio (the paper's
    SI source) and SI_*_notes keep the SI from notes beside them."""
    scores = metrics_lib.song_metrics(song, seed_segment)
    if samples is None:
        return scores
    from_audio = structureness.si_from_chroma(audio_lib.stft_chroma(samples, sample_rate))
    return {**scores, **from_audio, **{f"{key}_notes": scores[key] for key in SI_KEYS}}


def generated_row(song: GeneratedSong, scores: Mapping[str, float]) -> dict[str, Any]:
    """Per-song record of a generated song: identity, timing and every metric."""
    result = song.composed
    return {"model": song.model, "structure": song.structure.name, "seed_song_id": song.seed.song_id,
            "sample": song.sample, "n_bars": result.song.n_bars, "tempo_bpm": result.song.tempo_bpm,
            "seed_segment": result.seed_segment, "compose_seconds": song.seconds,
            SPEED: song.beats_per_second, **scores}


def real_row(song: Song, renderer: audio_lib.PianoRenderer | None = None) -> dict[str, Any]:
    """Per-song record of a real song, scored by the same code (SI from its audio when ``renderer`` is given);
    no speed."""
    seed_segment = real_seed_segment(song)
    return {"model": REAL, "structure": "".join(f"{s.label}{s.n_bars}" for s in song.segments),
            "seed_song_id": song.song_id, "sample": 0, "n_bars": song.n_bars, "tempo_bpm": song.tempo_bpm,
            "seed_segment": seed_segment, "compose_seconds": math.nan, SPEED: math.nan,
            **song_scores(song, seed_segment, None if renderer is None else render_song(renderer, song))}


@dataclasses.dataclass(frozen=True)
class Interval:
    """Mean and two-sided confidence bounds over the n finite values (bounds NaN when n < 2)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def t_interval(values: Iterable[float], level: float = CONFIDENCE) -> Interval:
    r"""Student t-interval of the mean of the finite values (NaN values are left out):

        mean ± t_{(1 + level) / 2, n - 1} · s / sqrt(n),   s the sample standard deviation.

    n = 1 has no interval (bounds NaN), n = 0 not even a mean.
    """
    x = np.asarray([float(v) for v in values], np.float64)
    x = x[np.isfinite(x)]
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n == 1:
        return Interval(mean, math.nan, math.nan, 1)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return Interval(mean, mean - half, mean + half, n)


def summarize(rows: Sequence[Mapping[str, Any]], by: Sequence[str] = ("model",)) -> list[dict[str, Any]]:
    """One record per group (first-appearance order): the group keys, its song count, an Interval per metric.

    Speed is a property of a compose call, shared by its samples, so it is
    summarized over each call's first song only.
    """
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in by), []).append(row)
    out = []
    for key, members in groups.items():
        record: dict[str, Any] = dict(zip(by, key, strict=True))
        record["songs"] = len(members)
        for metric in METRICS:
            used = [r for r in members if r["sample"] == 0] if metric == SPEED else members
            record[metric] = t_interval(r.get(metric, math.nan) for r in used)
        out.append(record)
    return out


# ---------------------------------------------------------------- tables


def _csv_number(value: float, exact: bool = False) -> str:
    """'NA' (read as missing by pandas and R) for an undefined value; 6 digits, or every digit when ``exact``."""
    if not math.isfinite(value):
        return "NA"
    return repr(float(value)) if exact else f"{value:.6g}"


def write_summary_csv(path: Path, summary: Sequence[Mapping[str, Any]], by: Sequence[str]) -> None:
    """Columns: group keys, songs, then ``<metric>_mean/_ci_low/_ci_high/_n`` (NA where undefined)."""
    fields = [*by, "songs"] + [f"{m}_{part}" for m in METRICS for part in ("mean", "ci_low", "ci_high", "n")]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(fields)
        for record in summary:
            cells = [record[k] for k in by] + [record["songs"]]
            for metric in METRICS:
                iv = record[metric]
                cells += [_csv_number(iv.mean), _csv_number(iv.low), _csv_number(iv.high), iv.n]
            writer.writerow(cells)


def write_rows_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Every song's raw values, for analyses the summary does not make.

    Floats keep every digit, so a table computed from this file (``experiments.paired``)
    equals the one computed from the rows in memory to the last printed digit.
    """
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_number(v, exact=True) if isinstance(v, float) else v for k, v in row.items()})


def format_cell(iv: Interval, songs: int, digits: int = 4) -> str:
    """'mean ± half-width', the cell's n when some songs lack the value, and an explicit mark for n < 2."""
    if iv.n == 0:
        return "n/a (n=0)"
    if iv.n == 1:
        return f"{iv.mean:.{digits}f} (n=1, no CI)"
    text = f"{iv.mean:.{digits}f} ± {iv.half_width:.{digits}f}"
    return text + (f" (n={iv.n})" if iv.n != songs else "")


def _paper_cell(name: str, si_index: int) -> str:
    values = PAPER_SI.get(name.lower())
    return f"{values[si_index]:.4f}" if values else "-"


def results_markdown(summary: Sequence[Mapping[str, Any]], header_lines: Sequence[str],
                     model_lines: Sequence[str], si_source: str = "notes") -> str:
    """The results table, our SI next to the paper's, and the notes needed to read it."""
    titles = ["model", "songs"]
    for key, title in COLUMNS:
        titles.append(title)
        if key in SI_KEYS:
            titles.append(f"paper {title}")
    lines = [*header_lines, "", "| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    rows = [*summary, {"model": "WholeSong (paper only)", "songs": 0}]
    for record in rows:
        cells = [str(record["model"]), str(record["songs"])]
        for key, _ in COLUMNS:
            digits = 2 if key == SPEED else 4
            cells.append(format_cell(record[key], record["songs"], digits) if key in record else "-")
            if key in SI_KEYS:
                name = "wholesong" if record["model"].startswith("WholeSong") else record["model"]
                cells.append(_paper_cell(name, SI_KEYS.index(key)))
        lines.append("| " + " | ".join(cells) + " |")
    speed = ", ".join(f"{k} {v}" for k, v in PAPER_SPEED.items())
    lines += [
        "",
        f"Cells: mean ± half-width of the {CONFIDENCE:.0%} Student t-interval over songs (t-interval, not "
        "bootstrap); songs without a value for a metric (seed adherence when the seed's label occurs once) are "
        "left out and the cell shows its n; n=1 has no interval. Songs from one "
        "seed song are not independent, so intervals over structures or samples are optimistic.",
        "",
        f"**SI here is MusDr's, from {si_source}** ({SI_SOURCE_NOTES[si_source]}"
        "; `sfs_jax/evaluation/structureness.py`). The paper's audio came from its own renderer, so compare "
        "models with each other and with the `real` row, which goes through the same code. Paper rows are matched "
        f"by model name (sfs, flat, real). Paper speed (RTX 4090, beats/s): {speed}.",
        "",
        "beats/s: beats written per second of one batched compose call (every segment but the seed), after a "
        "warm-up call; it depends on the device and batch size.",
        "",
        "## Models", "", "| name | workdir | model | windows | context slots | G | step |",
        "|---|---|---|---|---|---|---|",
        *model_lines,
        "", "## Protocol", "", PROTOCOL_NOTES]
    return "\n".join(lines)


def model_line(spec: ModelSpec, config: ml_collections.ConfigDict, step: Any) -> str:
    """A row of the models table: what each evaluated checkpoint is."""
    model = tasks.model_config_from(config)
    slots = ",".join(model.context_slots) or "none"
    scope = tasks.example_config_from(config).window_scope
    return (f"| {spec.name} | {spec.workdir} | {tasks.model_name_of(config)} ({config.get('model_size', '?')}) "
            f"| {scope} | {slots} | {'on' if model.use_global_view else 'off'} | {step} |")


# ---------------------------------------------------------------- files


def write_song_files(out: Path, song: GeneratedSong) -> tuple[Path, Path]:
    """``midi/<model>/<structure>/<seed_song_id>_<k>.mid`` (markers per segment) and its piano roll."""
    result = song.composed
    relative = Path(song.model) / song.structure.name / f"{song.stem}"
    midi = midi_io.write_midi(out / "midi" / relative.with_suffix(".mid"), result.song.notes_Nx4,
                              result.song.tempo_bpm, result.song.segments, result.seed_segment)
    roll = write_pianoroll(out / "pianoroll" / relative.with_suffix(".png"), result.song.notes_Nx4,
                           result.song.n_bars, result.song.segments, result.seed_segment,
                           title=f"{song.model}: {song.structure.name}, seed {song.seed.song_id}, sample {song.sample}")
    return midi, roll


def plot_examples(out: Path, name: str, examples: Sequence[tuple[str, Song]]) -> Path | None:
    """``plots/<name>.png`` of the examples, or nothing when there are none."""
    if not examples:
        return None
    return plots.plot_structure_examples(out / "plots" / f"{safe_name(name)}.png", examples,
                                         suptitle=f"{name}: chroma self-similarity and fitness scape plot")


def generated_examples(songs: Sequence[GeneratedSong], count: int) -> list[tuple[str, Song]]:
    """The first ``count`` songs by (sample, seed song, structure): the same cases for every model."""
    chosen = sorted(songs, key=lambda s: (s.sample, s.seed_index, s.structure_index))[:count]
    return [(f"{s.structure.name}, seed {s.seed.song_id}", s.composed.song) for s in chosen]


# ---------------------------------------------------------------- the protocol


@dataclasses.dataclass(frozen=True)
class ProtocolConfig:
    """Everything ``run_protocol`` needs; defaults are the paper's protocol."""

    models: tuple[ModelSpec, ...]
    dataset_dir: Path
    out: Path
    split: str = "test"
    num_seeds: int = 8
    structures: tuple[str, ...] = PAPER_STRUCTURES
    top_p: float = 1.0
    samples_per_seed: int = 1
    seed: int = 0
    seed_bars: int = SEED_BARS
    plot_examples: int = 3
    si_source: str = "notes"  # SI_* from the notes, or from the songs rendered to audio (as the paper)
    write_audio: bool = False  # a WAV beside each generated song's MIDI


@dataclasses.dataclass
class ProtocolResult:
    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    generated: list[GeneratedSong]
    seeds: list[Seed]
    markdown: str


def _check_numbers(config: ProtocolConfig) -> None:
    if config.samples_per_seed < 1:
        raise ValueError(f"samples_per_seed must be >= 1, got {config.samples_per_seed}")
    if config.seed_bars < 1:
        raise ValueError(f"seed_bars must be >= 1, got {config.seed_bars}")
    if config.plot_examples < 0:
        raise ValueError(f"plot_examples must be >= 0, got {config.plot_examples}")
    if config.si_source not in SI_SOURCES:
        raise ValueError(f"si_source must be one of {SI_SOURCES}, got {config.si_source!r}")
    SamplingConfig(top_p=config.top_p)  # validates top_p


@dataclasses.dataclass(frozen=True, eq=False)
class ProtocolPlan:
    """A checked ``ProtocolConfig``: model configs, parsed structures and the chosen seed songs."""

    config: ProtocolConfig
    model_configs: tuple[ml_collections.ConfigDict, ...]
    structures: tuple[StructureSpec, ...]
    real_songs: tuple[Song, ...]
    seeds: tuple[Seed, ...]


def prepare(config: ProtocolConfig) -> ProtocolPlan:
    """Every check (numbers, workdirs, structures, split, seed songs) before anything is loaded or written."""
    _check_numbers(config)
    model_configs = check_models(config.models)
    structures = parse_structures(config.structures, config.seed_bars)
    shortest_seed = min(s.segments[s.seed_segment].n_bars for s in structures)
    real_songs = choose_seed_songs(tasks.load_songs(config.dataset_dir, config.split), config.num_seeds, config.seed,
                                   config.seed_bars, shortest_seed)
    seeds = tuple(seed_from_song(song, config.seed_bars) for song in real_songs)
    return ProtocolPlan(config, tuple(model_configs), structures, tuple(real_songs), seeds)


def execute(plan: ProtocolPlan) -> ProtocolResult:
    """Composes, scores, and writes tables, MIDI, piano rolls and plots under ``out``."""
    config = plan.config
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    sampling = SamplingConfig(top_p=config.top_p)
    renderer = audio_lib.PianoRenderer() if config.si_source == "audio" or config.write_audio else None
    rows, generated, model_lines = [], [], []
    for spec, model_config in zip(config.models, plan.model_configs, strict=True):
        composer, meta = load_composer(str(spec.workdir), sampling)
        model_lines.append(model_line(spec, model_config, meta.get("step")))
        songs = compose_all(composer, spec.name, plan.structures, plan.seeds, config.samples_per_seed, config.seed)
        del composer  # free it before the next model is loaded
        for song in songs:
            composed = song.composed
            samples = None if renderer is None else render_song(renderer, composed.song)
            midi, _ = write_song_files(out, song)
            if config.write_audio:
                audio_lib.write_wav(midi.with_suffix(".wav"), samples, renderer.sample_rate)
            si_samples = samples if config.si_source == "audio" else None
            rows.append(generated_row(song, song_scores(composed.song, composed.seed_segment, si_samples)))
        plot_examples(out, spec.name, generated_examples(songs, config.plot_examples))
        generated += songs
    rows += [real_row(song, renderer if config.si_source == "audio" else None) for song in plan.real_songs]
    plot_examples(out, REAL, [(f"{s.song_id} (real)", s) for s in plan.real_songs[:config.plot_examples]])
    summary = summarize(rows)
    write_summary_csv(out / "results.csv", summary, ("model",))
    write_summary_csv(out / "results_by_structure.csv", summarize(rows, ("model", "structure")),
                      ("model", "structure"))
    write_rows_csv(out / "per_song.csv", rows)
    header = [f"# Evaluation: {', '.join(s.name for s in config.models)} and real songs", "",
              f"Split `{config.split}` of `{config.dataset_dir}`; {len(plan.seeds)} seed song(s) "
              f"({', '.join(s.song_id for s in plan.seeds)}); structures "
              f"{', '.join(s.name for s in plan.structures)}; top_p={config.top_p}; {config.samples_per_seed} "
              f"sample(s) per seed song and structure; seed={config.seed}; {config.seed_bars}-bar seeds."]
    markdown = results_markdown(summary, header, model_lines, config.si_source)
    (out / "results.md").write_text(markdown)
    return ProtocolResult(rows, summary, generated, list(plan.seeds), markdown)


def run_protocol(config: ProtocolConfig) -> ProtocolResult:
    """The whole protocol: ``prepare`` (all checks) then ``execute``."""
    return execute(prepare(config))
