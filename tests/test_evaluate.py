"""The evaluation protocol (sfs_jax/evaluation/protocol.py, experiments/evaluate.py) end to end on tiny checkpoints.

Properties proved here:
- the protocol runs on a 2-step SFS and a 2-step Flat checkpoint and writes one table
  row per model plus ``real``, with finite 95% intervals where n >= 2 and an explicit
  mark where n < 2;
- every generated MIDI file carries one marker per segment of the structure, and the
  seed's notes are unchanged in the seed segment of every model's songs (in memory
  and read back from the MIDI);
- piano rolls and the per-model self-similarity / scape plots are written;
- the t-interval, the seed rule and the seed-song draw behave as documented;
- bad inputs fail with clear errors before any model is loaded.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import symusic
from absl import app
from scipy import stats

from experiments import evaluate
from experiments.configs import sfs as sfs_configs
from sfs_jax.evaluation import metrics as metrics_lib
from sfs_jax.evaluation import paired, protocol
from sfs_jax.music import audio, midi_io
from sfs_jax.music import notes as notes_lib
from sfs_jax.music.song import Song
from sfs_jax.music.structure import StructureError, segments_from_lengths
from sfs_jax.training import shipped, tasks
from sfs_jax.training.checkpoint import Checkpoints
from sfs_jax.training.train import train_and_evaluate
from tests.conftest import REPO_ROOT, require_soundfont, scale_notes

STRUCTURE = "A2B2A2"  # the tiny preset's window is 2 bars: no segment slides
SAMPLES = 2  # two songs per model: intervals with n = 2; speed and real songs have n = 1


def train_tiny(dataset_dir: Path, workdir: Path, model_name: str) -> Path:
    """A 2-step tiny checkpoint without G (no bar VAE); one target and one context bucket (one jit shape).

    ``flat`` is the config's own Flat: the GPT-like one, trained and composing on song windows.
    """
    config = sfs_configs.get_config(f"size=tiny,model={model_name}")
    config.model.use_global_view = False
    config.examples.target_buckets = (256,)
    config.examples.context_buckets = (256,)
    config.train.update(num_steps=2, eval_every=2, checkpoint_every=2, log_every=1)
    config.data.dataset_dir = str(dataset_dir)
    train_and_evaluate(tasks.sfs_task(config, dataset_dir, None), config, workdir)
    return workdir


@pytest.fixture(scope="module")
def workdirs(tiny_synthetic_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval_runs")
    return {name: train_tiny(tiny_synthetic_dataset, root / name, name) for name in ("sfs", "flat")}


@pytest.fixture(scope="module")
def evaluation(workdirs: dict[str, Path], tiny_synthetic_dataset: Path,
               tmp_path_factory: pytest.TempPathFactory) -> tuple[protocol.ProtocolResult, Path]:
    out = tmp_path_factory.mktemp("eval_out")
    config = protocol.ProtocolConfig(
        models=protocol.parse_model_specs([f"{name}={path}" for name, path in workdirs.items()]),
        dataset_dir=tiny_synthetic_dataset, out=out, num_seeds=1, structures=(STRUCTURE,),
        samples_per_seed=SAMPLES, seed=0, plot_examples=1)
    return protocol.run_protocol(config), out


def test_tables_have_one_row_per_model_and_real_with_marked_intervals(evaluation) -> None:
    _, out = evaluation
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [row["model"] for row in table] == ["sfs", "flat", protocol.REAL]
    assert [int(row["songs"]) for row in table] == [SAMPLES, SAMPLES, 1]
    finite_intervals = 0
    for row in table:
        for metric in protocol.METRICS:
            n = int(row[f"{metric}_n"])
            low, high = row[f"{metric}_ci_low"], row[f"{metric}_ci_high"]
            if n >= 2:
                mean, low, high = float(row[f"{metric}_mean"]), float(low), float(high)
                assert math.isfinite(low) and math.isfinite(high) and low <= mean <= high, (row["model"], metric)
                finite_intervals += 1
            else:
                assert low == high == "NA", (row["model"], metric)
    assert finite_intervals > 0
    assert int(table[0][f"{protocol.SPEED}_n"]) == 1  # one compose call per (seed song, structure)
    assert float(table[0][f"{protocol.SPEED}_mean"]) > 0
    markdown = (out / "results.md").read_text()
    for name in ("sfs", "flat", protocol.REAL, "WholeSong (paper only)"):
        assert f"| {name} |" in markdown
    assert "n=1, no CI" in markdown and "0.3286" in markdown  # marked n=1 cells; the paper's SFS SI 2-8
    assert "SI here is MusDr's, from notes" in markdown
    with open(out / "per_song.csv") as f:
        assert len(list(csv.DictReader(f))) == 2 * SAMPLES + 1


def test_midi_markers_match_the_structure_and_the_seed_is_unchanged(evaluation) -> None:
    result, out = evaluation
    assert len(result.generated) == 2 * SAMPLES
    seed = result.seeds[0]
    expected_seed = seed.fitted(2)
    assert len(expected_seed) > 0
    for song in result.generated:
        composed = song.composed.song
        assert composed.segments == protocol.parse_structures([STRUCTURE])[0].segments
        assert song.composed.seed_segment == 0
        np.testing.assert_array_equal(notes_lib.notes_in_bars(composed.notes_Nx4, 0, 2), expected_seed)
        midi = out / "midi" / song.model / STRUCTURE / f"{protocol.safe_name(seed.song_id)}_{song.sample}.mid"
        assert midi.is_file()
        assert midi_io.read_markers(symusic.Score(str(midi))) == [(0, "A2 seed"), (2, "B2"), (4, "A2")]
        read_back = midi_io.read_midi(midi).notes_Nx4
        np.testing.assert_array_equal(notes_lib.notes_in_bars(read_back, 0, 2), expected_seed)
        assert (out / "pianoroll" / song.model / STRUCTURE / midi.with_suffix(".png").name).is_file()
    assert len(notes_lib.notes_in_bars(result.generated[0].composed.song.notes_Nx4, 2, 6)) > 0  # B, A written


def test_si_from_audio_and_wavs_beside_the_midi(workdirs: dict[str, Path], tiny_synthetic_dataset: Path,
                                                tmp_path: Path) -> None:
    require_soundfont()
    config = protocol.ProtocolConfig(
        models=protocol.parse_model_specs([f"sfs={workdirs['sfs']}"]), dataset_dir=tiny_synthetic_dataset,
        out=tmp_path, num_seeds=1, structures=(STRUCTURE,), samples_per_seed=1, seed=0, plot_examples=0,
        si_source="audio", write_audio=True)
    result = protocol.run_protocol(config)
    for row in result.rows:  # SI from audio, and from notes beside it, for generated and real songs
        for key in protocol.SI_KEYS:
            assert 0.0 <= row[key] < 1.0 and 0.0 <= row[f"{key}_notes"] < 1.0, (row["model"], key)
    wavs = sorted((tmp_path / "midi").rglob("*.wav"))
    assert len(wavs) == 1 and wavs[0].with_suffix(".mid").is_file()
    samples, rate = audio.read_wav(wavs[0])
    song = result.generated[0].composed.song
    assert abs(len(samples) / rate - metrics_lib.song_seconds(song)) < 0.01
    assert "SI here is MusDr's, from audio" in (tmp_path / "results.md").read_text()
    with pytest.raises(ValueError, match="si_source"):
        protocol.prepare(dataclasses.replace(config, si_source="video"))


def test_plots_exist(evaluation) -> None:
    _, out = evaluation
    for name in ("sfs", "flat", protocol.REAL):
        path = out / "plots" / f"{name}.png"
        assert path.is_file() and path.stat().st_size > 10_000, name


def test_t_interval() -> None:
    iv = protocol.t_interval([1.0, 2.0, 3.0, 4.0, 5.0, math.nan])  # NaN is left out
    half = stats.t.ppf(0.975, 4) * np.std([1, 2, 3, 4, 5], ddof=1) / math.sqrt(5)
    assert iv.n == 5 and iv.mean == pytest.approx(3.0)
    assert (iv.low, iv.high) == pytest.approx((3.0 - half, 3.0 + half))
    assert half == pytest.approx(1.9632, abs=1e-4)
    assert protocol.t_interval([0.5, 0.5, 0.5]) == protocol.Interval(0.5, 0.5, 0.5, 3)
    single = protocol.t_interval([0.7])
    assert single.mean == 0.7 and single.n == 1 and math.isnan(single.low) and math.isnan(single.high)
    assert protocol.t_interval([math.nan]).n == 0
    assert protocol.format_cell(single, 1) == "0.7000 (n=1, no CI)"
    assert protocol.format_cell(iv, 6) == f"3.0000 ± {half:.4f} (n=5)"


def make_song(song_id: str, lengths: list[tuple[str, int]], notes_per_bar: int = 4) -> Song:
    segments = segments_from_lengths(lengths)
    n_bars = segments[-1].end_bar
    notes = scale_notes(n_bars, notes_per_bar, seed=len(song_id))
    return Song(song_id, notes, n_bars, 90.0, segments, "human")


def test_seed_rule_takes_the_first_long_segment_or_the_song_start() -> None:
    song = make_song("a", [("A", 4), ("B", 8), ("C", 8)])
    seed = protocol.seed_from_song(song)
    assert (seed.start_bar, seed.n_bars, seed.tempo_bpm) == (4, 8, 90.0)
    np.testing.assert_array_equal(seed.notes_Nx4, notes_lib.notes_in_bars(song.notes_Nx4, 4, 12))
    assert protocol.seed_from_song(make_song("b", [("A", 4), ("B", 4), ("A", 4)])).start_bar == 0
    # a note ringing past the seed's last bar line is cut there
    long_note = np.array([[11 * 32 + 8, 50, 80, 100]])  # pitch below scale_notes' 60..71
    held = Song("c", np.concatenate([song.notes_Nx4, long_note]), 20, 90.0, song.segments, "human")
    seed = protocol.seed_from_song(held)
    last = seed.notes_Nx4[(seed.notes_Nx4[:, 0] == 7 * 32 + 8) & (seed.notes_Nx4[:, 1] == 50)]
    assert last[0, notes_lib.DURATION] == 24
    assert (seed.notes_Nx4[:, 0] + seed.notes_Nx4[:, 3]).max() <= 8 * 32
    four = seed.fitted(4)  # an A4 segment takes the seed's first 4 bars
    assert len(four) and four[:, 0].max() < 4 * 32 and (four[:, 0] + four[:, 3]).max() <= 4 * 32


def with_notes(song: Song, notes_Nx4: np.ndarray) -> Song:
    return Song(song.song_id, notes_Nx4, song.n_bars, song.tempo_bpm, song.segments, song.label_source)


def test_seed_songs_are_drawn_deterministically_from_eligible_songs() -> None:
    songs = [make_song(f"s{i}", [("A", 8), ("B", 8)]) for i in range(8)]
    songs.insert(3, make_song("short", [("A", 4), ("B", 2)]))  # under 8 bars: never a seed
    silent = make_song("silent", [("A", 8), ("B", 8)])
    songs.insert(5, with_notes(silent, silent.notes_Nx4[silent.notes_Nx4[:, 0] >= 4 * 32]))
    first = protocol.choose_seed_songs(songs, 3, seed=0, min_seed_bars=4)
    assert [s.song_id for s in first] == [s.song_id for s in protocol.choose_seed_songs(songs, 3, 0, min_seed_bars=4)]
    assert len({s.song_id for s in first}) == 3
    assert [songs.index(s) for s in first] == sorted(songs.index(s) for s in first)  # dataset order
    every = protocol.choose_seed_songs(songs, 0, seed=0, min_seed_bars=4)
    assert [s.song_id for s in every] == [f"s{i}" for i in range(8)]  # short and silent-seed songs left out
    assert len(protocol.choose_seed_songs(songs, 0, seed=0, min_seed_bars=8)) == 9  # silent only in bars 0-3
    others = [protocol.choose_seed_songs(songs, 3, seed=s, min_seed_bars=4) for s in range(1, 4)]
    assert any([x.song_id for x in o] != [x.song_id for x in first] for o in others)
    with pytest.raises(ValueError, match="only 8 of 10"):
        protocol.choose_seed_songs(songs, 9, seed=0, min_seed_bars=4)


def test_bad_inputs_fail_clearly_before_any_model_is_loaded(tmp_path: Path, tiny_synthetic_dataset: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no such folder"):
        protocol.check_model(protocol.ModelSpec("sfs", tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="no best checkpoint"):
        protocol.check_model(protocol.ModelSpec("sfs", empty))
    assert list(empty.iterdir()) == []  # orbax was never asked to open (and create) it
    with pytest.raises(ValueError, match="unique"):
        protocol.parse_model_specs(["a=x", "a=y"])
    with pytest.raises(ValueError, match="reserved"):
        protocol.parse_model_specs(["real=x"])
    with pytest.raises(StructureError, match="no segment labelled 'A'"):
        protocol.parse_structures(["B4C4"])
    with pytest.raises(StructureError, match="longer than the 8-bar seed"):
        protocol.parse_structures(["A16B8"])
    with pytest.raises(StructureError):
        protocol.parse_structures(["A8B"])
    assert [s.name for s in protocol.parse_structures(protocol.PAPER_STRUCTURES)] == list(protocol.PAPER_STRUCTURES)
    with pytest.raises(ValueError, match="no 'validation' split"):
        tasks.load_songs(tiny_synthetic_dataset, "validation")


def test_checkpoint_saved_with_a_label_for_model_name_passes_the_checks_as_sfs(tmp_path: Path) -> None:
    """Older code trained SFS for any model_name but flat; such runs must stay evaluable."""
    config = sfs_configs.get_config("size=tiny")
    config.model_name = "sfs_segment_4k"
    config.model.use_global_view = False
    checkpoints = Checkpoints(tmp_path / "old")
    try:
        checkpoints.save_best(1, {"w": np.zeros(2, np.float32)}, {}, {"config": config.to_dict(), "step": 1}, 1.0)
    finally:
        checkpoints.close()
    checked = protocol.check_model(protocol.ModelSpec("old", tmp_path / "old"))
    assert checked.model_name == "sfs" and tasks.model_config_from(checked).use_cross_attention


def test_cli_turns_bad_inputs_into_usage_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(shipped.CACHE_ENV, str(tmp_path / "shipped"))
    args = SimpleNamespace(models=[f"sfs={tmp_path / 'missing'}"], dataset_dir="", split="test", num_seeds=1,
                           structures=list(protocol.PAPER_STRUCTURES), top_p=1.0, samples_per_seed=1,
                           seed_bars=protocol.SEED_BARS, plot_examples=1, out=str(tmp_path / "out"), seed=0,
                           workers=1, si_source="notes", audio=False)
    with pytest.raises(app.UsageError, match="no such folder"):
        evaluate.make_plan(args)
    # No --models: the shipped model is accepted, and the next check (the dataset) speaks.
    with pytest.raises(app.UsageError, match=r"--dataset_dir .*nowhere is not a folder"):
        evaluate.make_plan(SimpleNamespace(**{**vars(args), "models": [], "dataset_dir": str(tmp_path / "nowhere")}))
    assert not (tmp_path / "out").exists()


def test_protocol_rows_pair_with_the_baseline(evaluation) -> None:
    """The in-memory rows of a run and its per_song.csv give the same paired table (experiments.evaluate
    writes the first, experiments.paired reads the second)."""
    result, out = evaluation
    in_memory = paired.write_paired(out / "paired_memory", result.rows, "flat")
    from_file = paired.write_paired(out / "paired_file", paired.read_per_song([out / "per_song.csv"]), "flat")
    assert in_memory == from_file
    assert f"| sfs | {SAMPLES} |" in in_memory


def test_context_use_scores_flat_on_sfs_windows_and_refuses_what_cannot_be_scored(workdirs) -> None:
    """``experiments.context_use --window_scope``: the song-window Flat scored on SFS's segment windows;
    SFS on song windows (no contexts to attend to) and Flat with inputs to hide are usage errors."""
    def context_use(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "experiments.context_use", *args], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=300)

    scored = context_use(f"--workdir={workdirs['flat']}", "--variants=none", "--window_scope=segment")
    assert scored.returncode == 0, scored.stderr[-2000:]
    row = next(line for line in scored.stdout.splitlines() if line.startswith("| nothing |"))
    assert math.isfinite(float(row.split("|")[2])) and math.isfinite(float(row.split("|")[3]))  # loss, bits
    refused = context_use(f"--workdir={workdirs['sfs']}", "--window_scope=song")
    assert refused.returncode != 0 and "builds no contexts" in refused.stderr
    refused = context_use(f"--workdir={workdirs['flat']}")
    assert refused.returncode != 0 and "--variants=none" in refused.stderr


def test_left_to_right_flat_refuses_the_app_and_out_of_order_generation(workdirs, tmp_path: Path) -> None:
    """The app composes in any order and ``--order`` picks one: a song-window Flat can do neither, and says so
    before writing anything; an SFS checkpoint loads for the app."""
    from experiments import composers

    with pytest.raises(ValueError, match="left to right"):
        composers.app_composer(workdirs["flat"], 32)
    assert not composers.app_composer(workdirs["sfs"], 32).left_to_right
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "experiments.generate", "--structure=A2 B2 A2", "--order=2,0,1",
                             f"--checkpoint={workdirs['flat']}", f"--out={out}"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "left to right" in result.stderr
    assert not out.exists()
