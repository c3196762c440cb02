"""Composing whole songs: structure, seed placement, regeneration, streaming, cancellation, CLI checks."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import symusic
from flax import nnx

from data_pipeline import synthetic
from experiments import generate
from sfs_jax.data.examples import ExampleConfig
from sfs_jax.model.bar_vae import BarVAE
from sfs_jax.model.config import model_config
from sfs_jax.model.flat import flat_config
from sfs_jax.model.sfs import SFSModel
from sfs_jax.music import midi_io, tokenizer
from sfs_jax.music import notes as notes_lib
from sfs_jax.music.structure import StructureError, parse_structure
from sfs_jax.sampling.composer import (
    Callbacks,
    Composer,
    ComposeRequest,
    CompositionCancelled,
    context_summary,
    fit_seed,
    window_steps,
)
from sfs_jax.sampling.segment import SamplingConfig
from tests.conftest import REPO_ROOT, live_tiny_config, scale_notes

STRUCTURE = "A2 B3 A2 C1"  # B is longer than the 2-bar window: it slides one bar at a time
TINY_EXAMPLES = ExampleConfig(window_bars=2, context_bars=2, target_buckets=(96, 128, 192, 256),
                              context_buckets=(32, 64, 128, 256), previous_token_budget=256)


@pytest.fixture(scope="module")
def composer() -> Composer:
    config = live_tiny_config()
    model = SFSModel(config, rngs=nnx.Rngs(0))
    vae = BarVAE(config.vae, rngs=nnx.Rngs(1))
    return Composer(model, TINY_EXAMPLES, vae, SamplingConfig(max_tokens=256), chunk_tokens=64)


@pytest.fixture(scope="module")
def seed_notes() -> np.ndarray:
    return notes_lib.notes_in_bars(synthetic.generate_song(0, 1).notes_Nx4, 0, 2)


@pytest.fixture(scope="module")
def composed(composer: Composer, seed_notes: np.ndarray):
    events: list[tuple] = []
    callbacks = Callbacks(on_segment_start=lambda s, c: events.append(("start", s, c)),
                          on_note=lambda i, s, n: events.append(("note", i, s, tuple(n))),
                          on_segment_done=lambda s: events.append(("done", s)))
    request = ComposeRequest(parse_structure(STRUCTURE), 90.0, seed_notes_Nx4=seed_notes)
    results = composer.compose(request, jax.random.key(0), num_samples=2, callbacks=callbacks)
    return request, results, events


def test_songs_match_the_structure_and_keep_the_seed(composed, seed_notes: np.ndarray) -> None:
    request, results, _ = composed
    for result in results:
        song = result.song
        assert song.n_bars == 8 and song.segments == request.segments
        seed = request.segments[result.seed_segment]
        kept = notes_lib.notes_in_bars(song.notes_Nx4, seed.start_bar, seed.end_bar)
        np.testing.assert_array_equal(kept, seed_notes)
        assert result.compose_order[0] == result.seed_segment
        assert sorted(result.compose_order) == list(range(len(request.segments)))
        # every other segment got notes, and the whole song re-tokenizes without grammar errors
        for index, segment in enumerate(request.segments):
            assert len(notes_lib.notes_in_bars(song.notes_Nx4, segment.start_bar, segment.end_bar)) > 0, index
        tokens, _ = tokenizer.encode_target(song.notes_Nx4, song.n_bars * notes_lib.FRAMES_PER_BAR)
        assert tokenizer.count_token_errors(tokens) == 0
    assert not np.array_equal(results[0].song.notes_Nx4, results[1].song.notes_Nx4)


def test_written_midi_has_the_bars_and_markers_of_the_structure(composed, tmp_path: Path) -> None:
    request, results, _ = composed
    song = results[0].song
    path = midi_io.write_midi(tmp_path / "s.mid", song.notes_Nx4, song.tempo_bpm, song.segments,
                              results[0].seed_segment)
    score = symusic.Score(str(path))
    markers = midi_io.read_markers(score)
    expected = [(s.start_bar, f"{s.label}{s.n_bars}" + (" seed" if i == results[0].seed_segment else ""))
                for i, s in enumerate(request.segments)]
    assert markers == expected
    reread = midi_io.read_midi(path)
    assert notes_lib.bars_spanned(reread.notes_Nx4) <= song.n_bars
    assert reread.tempo_bpm == pytest.approx(90.0, abs=0.01)


def test_events_stream_contexts_then_notes_then_done(composed) -> None:
    request, results, events = composed
    starts = [e for e in events if e[0] == "start"]
    assert [e[1] for e in starts] == list(results[0].compose_order[1:])
    for index in range(len(request.segments)):
        if index == results[0].seed_segment:
            continue
        first = events.index(next(e for e in events if e[0] == "start" and e[1] == index))
        done = events.index(("done", index))
        notes = [e for e in events[first:done] if e[0] == "note"]
        assert all(e[2] == index for e in notes)
        streamed = sorted(e[3] for e in notes if e[1] == 0)
        segment = request.segments[index]
        written = notes_lib.notes_in_bars(results[0].song.notes_Nx4, segment.start_bar, segment.end_bar)
        written[:, notes_lib.ONSET] += segment.start_bar * notes_lib.FRAMES_PER_BAR
        assert len(streamed) == len(written)  # every written note was streamed exactly once


def test_same_key_same_songs_and_regeneration_keeps_the_rest(composer: Composer, composed) -> None:
    request, results, _ = composed
    again = composer.compose(request, jax.random.key(0), num_samples=2)
    for first, second in zip(results, again, strict=True):
        np.testing.assert_array_equal(first.song.notes_Nx4, second.song.notes_Nx4)
    song = results[0].song
    redo = ComposeRequest(request.segments, 90.0, existing_notes_Nx4=song.notes_Nx4, regenerate=(1,),
                          seed_segment=results[0].seed_segment)
    new = composer.compose(redo, jax.random.key(5))[0].song
    for index, segment in enumerate(request.segments):
        old_notes = notes_lib.notes_in_bars(song.notes_Nx4, segment.start_bar, segment.end_bar)
        new_notes = notes_lib.notes_in_bars(new.notes_Nx4, segment.start_bar, segment.end_bar)
        if index == 1:
            assert not np.array_equal(old_notes, new_notes)
            continue
        # Kept notes keep onset, pitch and velocity; a note held into the rewritten segment may be cut
        # by a new onset of its pitch (same-pitch notes never overlap), every other note is unchanged.
        np.testing.assert_array_equal(old_notes[:, :3], new_notes[:, :3])
        held_past_end = old_notes[:, 0] + old_notes[:, 3] > segment.n_bars * notes_lib.FRAMES_PER_BAR
        np.testing.assert_array_equal(old_notes[~held_past_end], new_notes[~held_past_end])
        assert (new_notes[:, 3] <= old_notes[:, 3]).all()


def test_cancel_stops_between_chunks(composer: Composer, seed_notes: np.ndarray) -> None:
    calls = []

    def cancel() -> bool:
        calls.append(1)
        return True

    request = ComposeRequest(parse_structure(STRUCTURE), 90.0, seed_notes_Nx4=seed_notes)
    with pytest.raises(CompositionCancelled):
        composer.compose(request, jax.random.key(0), callbacks=Callbacks(should_cancel=cancel))
    assert len(calls) == 1


def test_seed_length_mismatch_is_an_error_unless_asked(seed_notes: np.ndarray) -> None:
    with pytest.raises(StructureError, match="seed has 2 bars but its segment has 4"):
        fit_seed(seed_notes, 4, "error")
    padded = fit_seed(seed_notes, 4, "pad")
    np.testing.assert_array_equal(padded, seed_notes)
    trimmed = fit_seed(seed_notes, 1, "trim")
    assert notes_lib.bars_spanned(trimmed) == 1


@pytest.mark.parametrize("args, message", [
    (dict(structure="A0 B8"), "zero length"),
    (dict(structure="A100 B101"), "more than the limit"),
    (dict(order=["0", "7"]), "index 7"),
    (dict(seed_midi="missing.mid"), "does not exist"),
])
def test_generate_inputs_are_checked_first(args: dict, message: str) -> None:
    kwargs = dict(structure="A8 B8", seed_midi="", seed_segment=None, seed_fit="error", order=[], tempo=0.0)
    kwargs.update(args)
    with pytest.raises((StructureError, FileNotFoundError, ValueError), match=message):
        generate.build_request(**kwargs)


@pytest.mark.parametrize("seed_kind, reason", [("garbage", "not_midi_or_corrupt"), ("three_four", "not_4_4")])
def test_generate_cli_refuses_bad_input_reason_first_without_writing(tmp_path: Path, seed_kind: str,
                                                                     reason: str) -> None:
    """The refusal is the first line of stderr (not after the flag list), and nothing is written."""
    bad_seed = tmp_path / "bad.mid"
    if seed_kind == "garbage":
        bad_seed.write_bytes(b"MThd garbage")
    else:
        score = midi_io.notes_to_score(scale_notes(4), 100.0)
        score.time_signatures.clear()
        score.time_signatures.append(symusic.TimeSignature(0, 3, 4))
        score.dump_midi(bad_seed)
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "experiments.generate", "--structure=A8 B8",
                             f"--seed_midi={bad_seed}", f"--out={out}", f"--runs_dir={tmp_path}"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    first = next(line for line in result.stderr.splitlines() if line.strip())
    assert first.startswith("error:") and reason in first and "is not usable" in first, result.stderr[-1000:]
    assert "--structure:" not in result.stderr  # no flag list
    assert not out.exists()


def test_context_summary_spans_every_window_of_an_aligned_ref() -> None:
    """A12 B4 A12 with 4-bar windows: the second A's windows start 0..8 bars in, so its aligned Ref spans bars 0-12."""
    segments = parse_structure("A12 B4 A12")
    chosen = {"left": 1, "right": None, "seed": None, "ref": 0}
    first = ExampleConfig(window_bars=4, context_bars=4)
    aligned = ExampleConfig(window_bars=4, context_bars=4, ref_crop="aligned")
    assert context_summary(segments, chosen, first, 2)["ref"] == {"segment": 0, "label": "A", "bars": [0, 4]}
    assert context_summary(segments, chosen, aligned, 2)["ref"] == {"segment": 0, "label": "A", "bars": [0, 12]}
    for config in (first, aligned):  # LEFT keeps its last bars, whatever the Ref crop
        summary = context_summary(segments, chosen, config, 2)
        assert summary["left"]["bars"] == [12, 16] and summary["right"] is None
    short = parse_structure("A4 B4 A4")  # one window: aligned and first agree
    assert context_summary(short, chosen, aligned, 2)["ref"]["bars"] == [0, 4]


def test_window_steps_stay_in_the_segment_or_reach_back_across_it() -> None:
    """SFS's windows start at their segment; a left-to-right model's reach back up to window - 1 bars."""
    b = parse_structure(STRUCTURE)[1]  # bars 2-5, 2-bar windows
    assert window_steps(b, 2, b.start_bar) == [(2, 2), (3, 4)]
    assert window_steps(b, 2, 0) == [(1, 2), (2, 3), (3, 4)]
    assert window_steps(parse_structure(STRUCTURE)[0], 2, 0) == [(0, 0)]
    assert window_steps(parse_structure("A1 B6")[1], 4, 0) == [(0, 1), (1, 4), (2, 5), (3, 6)]


def flat_composer(window_scope: str) -> Composer:
    model = SFSModel(flat_config(model_config("tiny")), rngs=nnx.Rngs(0))
    examples = dataclasses.replace(TINY_EXAMPLES, window_scope=window_scope)
    return Composer(model, examples, None, SamplingConfig(max_tokens=256), chunk_tokens=64)


def test_song_scope_flat_writes_left_to_right_and_hears_only_its_window(seed_notes: np.ndarray) -> None:
    """Regenerating segment 2 (bars 5-6): the song-scope Flat's first window starts at bar 4, so
    changing bar 4 changes what it writes and changing bar 3 does not; segment-scope Flat hears neither."""
    song_flat, segment_flat = flat_composer("song"), flat_composer("segment")
    segments = parse_structure(STRUCTURE)
    request = ComposeRequest(segments, 90.0, seed_notes_Nx4=seed_notes, seed_segment=0, compose_order=(0, 3, 1, 2))
    with pytest.raises(StructureError, match="left to right"):
        song_flat.compose(request, jax.random.key(0))
    composed = song_flat.compose(dataclasses.replace(request, compose_order=None), jax.random.key(0))[0]
    assert composed.compose_order == (0, 1, 2, 3)
    assert all(v is None for c in composed.contexts.values() for v in c.values())
    np.testing.assert_array_equal(notes_lib.notes_in_bars(composed.song.notes_Nx4, 0, 2), seed_notes)
    base = composed.song.notes_Nx4

    def bar_changed(bar: int) -> np.ndarray:
        in_bar = base[:, notes_lib.ONSET] // notes_lib.FRAMES_PER_BAR == bar
        changed = base.copy()
        changed[in_bar, notes_lib.PITCH] = np.clip(changed[in_bar, notes_lib.PITCH] + 7, 0, 127)
        return changed

    def segment_2(composer: Composer, notes: np.ndarray) -> np.ndarray:
        redo = ComposeRequest(segments, 90.0, existing_notes_Nx4=notes, regenerate=(2,))
        return notes_lib.notes_in_bars(composer.compose(redo, jax.random.key(3))[0].song.notes_Nx4, 5, 7)

    assert ((base[:, notes_lib.ONSET] // notes_lib.FRAMES_PER_BAR)[:, None] == [3, 4]).any(0).all()
    written = segment_2(song_flat, base)
    assert len(written)
    assert not np.array_equal(segment_2(song_flat, bar_changed(4)), written)
    np.testing.assert_array_equal(segment_2(song_flat, bar_changed(3)), written)
    np.testing.assert_array_equal(segment_2(segment_flat, bar_changed(4)), segment_2(segment_flat, base))


def test_a_model_with_contexts_refuses_song_scope_windows(composer: Composer) -> None:
    song_scope = dataclasses.replace(TINY_EXAMPLES, window_scope="song")
    with pytest.raises(ValueError, match="builds no contexts"):
        Composer(composer.model, song_scope, composer.vae, SamplingConfig(max_tokens=256))


def test_a_prefix_over_the_token_budget_is_cut_from_the_front(seed_notes: np.ndarray) -> None:
    """Bar 1 holds 200 notes: with it as prefix, the song-scope window over bars 1-2 would pass the 256-token
    budget, so the step starts at bar 2 with no prefix, exactly as the segment-scope Flat writes B."""
    segments = parse_structure("A2 B1")
    onsets = np.arange(200) % notes_lib.FRAMES_PER_BAR + notes_lib.FRAMES_PER_BAR
    dense = np.stack([onsets, 40 + np.arange(200) // notes_lib.FRAMES_PER_BAR, np.full(200, 80),
                      np.full(200, 1)], 1).astype(np.int32)
    existing = np.concatenate([seed_notes[seed_notes[:, notes_lib.ONSET] < notes_lib.FRAMES_PER_BAR], dense])
    redo = ComposeRequest(segments, 90.0, existing_notes_Nx4=existing, regenerate=(1,))
    written = {scope: notes_lib.notes_in_bars(flat_composer(scope).compose(redo, jax.random.key(1))[0].song.notes_Nx4,
                                              2, 3) for scope in ("song", "segment")}
    assert len(written["song"])
    np.testing.assert_array_equal(written["song"], written["segment"])
