"""Parity with the authors' SFS, number for number (``../shared/reference``).

The golden cases hold the authors' own model (random weights in their checkpoint
format), one forward batch and every intermediate output. Nothing about a case is
hard-coded here: the model's sizes come from the weights' shapes.

- the forward (logits of the four heads, encoded contexts, G, decoder features,
  losses, bar-VAE latents) matches in float32 (1e-5) and float64 (3e-6);
- a porting mistake of the size the reference README lists (tanh GELU) fails the check;
- our ``paper`` preset has every name and shape of the authors' paper checkpoint;
- our tokenizer and context crops give the authors' token sequences for the same notes;
- the fixed tables we compute match their stored buffers;
- the KV-cached sampler scores a forced target as their forward does;
- ``import_reference`` converts a checkpoint that ``generate`` then composes with, and
  refuses a truncated, renamed or mis-shaped one before writing anything.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from experiments.import_reference import import_checkpoint
from sfs_jax.data import bars
from sfs_jax.model.attention import rotary_frequencies
from sfs_jax.model.config import model_config
from sfs_jax.model.embeddings import beat_table, sinusoid_table
from sfs_jax.music import tokenizer
from sfs_jax.music.contexts import context_bars
from sfs_jax.music.notes import FRAMES_PER_BAR, MIN_PITCH, notes_in_bars
from sfs_jax.music.song import Song
from sfs_jax.music.structure import Segment
from sfs_jax.reference import batch as batch_lib
from sfs_jax.reference import parity
from sfs_jax.reference import weights as weights_lib
from sfs_jax.sampling.segment import SamplingConfig, SegmentSampler
from tests.conftest import REPO_ROOT

REFERENCE_DIR = REPO_ROOT.parent / "shared" / "reference"
CASES = ("tiny_a", "tiny_b")
COMPARED = {"logits.token_type", "logits.pitch", "logits.velocity", "logits.duration", "context.feature",
            "global.feature_per_bar", "global.feature_per_token", "decoder.feature", "loss.total",
            "vae.single.mu", "vae.batched.mu"}


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The authors' numbers, or a skip that says why (a fresh clone has no ../shared)."""
    if not (REFERENCE_DIR / "tiny_a" / "weights.safetensors").is_file():
        pytest.skip(f"the reference cases are not at {REFERENCE_DIR} (../shared/reference is absent here)")
    return REFERENCE_DIR


def _failures(results: list[parity.Comparison]) -> list[str]:
    return [f"{r.name}: {r.difference:.3g} > {r.tolerance:.1g}" for r in results if not r.ok]


@pytest.mark.parametrize("x64", [False, True], ids=["float32", "float64"])
@pytest.mark.parametrize("case", CASES)
def test_golden_case(reference_dir: Path, case: str, x64: bool) -> None:
    results = parity.compare_case(reference_dir / case, x64=x64)
    assert COMPARED <= {r.name for r in results}
    for r in results:
        print(f"{case} {'float64' if x64 else 'float32'} {r.name}: {r.difference:.3g}")
    assert not _failures(results)


def test_check_catches_a_porting_mistake(reference_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """tanh GELU moves the reference's logits by ~4e-4 (its README, section 7): the check must fail on it."""
    infer = weights_lib.infer_config
    monkeypatch.setattr(weights_lib, "infer_config",
                        lambda *args, **kwargs: dataclasses.replace(infer(*args, **kwargs), gelu="tanh"))
    failed = _failures(parity.compare_case(reference_dir / "tiny_b"))
    assert any(name.startswith("logits.") for name in failed), failed


def _paper_shapes(reference_dir: Path) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for line in (reference_dir / "paper_state_dict.tsv").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, shape, _ = line.split("\t")
        shapes[name] = tuple(int(x) for x in shape.strip("()").split(",") if x.strip())
    return shapes


def test_paper_preset_is_the_authors_checkpoint(reference_dir: Path) -> None:
    """Every name and shape of their paper checkpoint, and nothing else, is a variable of our ``paper`` preset."""
    shapes = _paper_shapes(reference_dir)
    assert weights_lib.infer_config(shapes) == model_config("paper")
    weights_lib.check_fits(shapes, model_config("paper"))
    with pytest.raises(weights_lib.CheckpointMismatch, match="mis-shaped"):
        weights_lib.check_fits(shapes, model_config("paper", n_heads=16, head_dim=32, rotary_dims=16))


def _song(inputs: dict, row: int) -> tuple[np.ndarray, list[Segment]]:
    """Their source notes (onset, pitch, velocity, offset) as our notes_Nx4, and the segments."""
    notes = inputs[f"song{row}.notes"].astype(np.int64)
    notes_Nx4 = np.stack([notes[:, 0], notes[:, 1], notes[:, 2], notes[:, 3] - notes[:, 0]], axis=1)
    segments = [Segment(int(s) // FRAMES_PER_BAR, int(e) // FRAMES_PER_BAR, str(label))
                for s, e, label in inputs[f"song{row}.segments"]]
    return notes_Nx4, segments


@pytest.mark.parametrize("case", CASES)
def test_tokens_equal_the_reference_tokenizer(reference_dir: Path, case: str) -> None:
    """Targets, context crops (Left's last bars, the others' first) and bars tokenize as theirs, token for token."""
    with np.load(reference_dir / case / "inputs.npz") as data:
        inputs = {k: data[k] for k in data.files}
    theirs = batch_lib.to_batch(inputs)
    fields = ("type", "pitch", "velocity", "duration", "frame")
    for row in range(len(theirs["target_type"])):
        notes_Nx4, segments = _song(inputs, row)
        start = int(inputs["target.shift_from_song_start"][row])
        n_frames = int(np.sum(theirs["target_type"][row] == int(tokenizer.TokenType.FRAME)))
        window = notes_in_bars(notes_Nx4, start // FRAMES_PER_BAR, (start + n_frames) // FRAMES_PER_BAR)
        ours, _ = tokenizer.encode_target(window, n_frames)
        for i, name in enumerate(fields):
            np.testing.assert_array_equal(ours[:, i], theirs[f"target_{name}"][row, :len(ours)], err_msg=name)
        for name, slot in batch_lib.SLOTS.items():
            group = f"context.{name}"
            real = inputs[f"{group}.token_type"][row] != -1
            if not real.any():
                continue
            segment_start = int(inputs[f"{group}.shift_from_song_start"][row]
                                - inputs[f"{group}.shift_from_segment_start"][row])
            segment = next(s for s in segments if s.start_bar * FRAMES_PER_BAR == segment_start)
            first_bar, last_bar = context_bars(segment, slot, 8)
            assert first_bar * FRAMES_PER_BAR == inputs[f"{group}.shift_from_song_start"][row], name
            tokens = tokenizer.encode_context(notes_in_bars(notes_Nx4, first_bar, last_bar))
            column = lambda name: inputs[f"{group}.{name}"][row][real]  # noqa: B023 (used at once)
            expected = np.stack([column("pitch") + MIN_PITCH, column("velocity"), column("duration"), column("pos")],
                                axis=1)
            np.testing.assert_array_equal(tokens[:, 1:], expected, err_msg=name)
    # Bars for the VAE: frame tokens and notes of one bar (their inference form has no END).
    for k, where in enumerate(json.loads((reference_dir / case / "case.json").read_text())["vae_bars"]):
        notes_Nx4, segments = _song(inputs, where["row"])
        n_bars = int(inputs[f"song{where['row']}.duration"]) // FRAMES_PER_BAR
        ours = bars.bar_tokens(Song("s", notes_Nx4, n_bars, 120.0, tuple(segments), "synthetic"), 160)
        expected = batch_lib.bar_tokens(inputs, f"vae.bar{k}")
        length = expected["type"].shape[1]
        for name in fields:
            np.testing.assert_array_equal(ours[name][where["bar"], :length], expected[name][0], err_msg=name)
        assert ours["type"][where["bar"], length] == int(tokenizer.TokenType.END)


@pytest.mark.parametrize("case", CASES)
def test_fixed_tables_match_the_stored_buffers(reference_dir: Path, case: str) -> None:
    """Position tables and rotary frequencies we compute equal theirs (tables: to float32 sin/cos rounding)."""
    weights = weights_lib.read_checkpoint(reference_dir / case / "weights.safetensors")
    for name in ("decoder.start_end_pe.pe", "encoder.start_end_pe.pe", "global_vision.pe.pe"):
        stored = weights[name]
        assert np.abs(sinusoid_table(*stored.shape) - stored).max() < 2e-4, name
    np.testing.assert_array_equal(beat_table(len(weights["decoder.beat_pe"])), weights["decoder.beat_pe"])
    np.testing.assert_array_equal(rotary_frequencies(32, 10_000.0),
                                  weights["decoder.transformer.rotary_pos_emb.inv_freq"])


def test_cached_sampler_scores_like_their_forward(reference_dir: Path) -> None:
    """Forcing their target through our KV-cached sampler gives their per-token log-probabilities (1e-4)."""
    weights, inputs, outputs, case = parity.load_case(reference_dir / "tiny_a")
    config = weights_lib.infer_config({k: v.shape for k, v in weights.items()}, case)
    model, _ = weights_lib.load_models(weights, config)
    batch = batch_lib.to_batch(inputs)
    lengths = np.sum(batch["target_type"] != 0, axis=1)
    sampler = SegmentSampler(model, SamplingConfig())
    state = sampler.start(batch, jax.random.key(0), prefix_len_B=lengths, prefill=False)
    state = sampler.sample_chunk(state, int(lengths.max()))
    np.testing.assert_array_equal(np.asarray(state.tokens_BxTx5)[..., 0], batch["target_type"])
    log_p = {head: np.asarray(jax.nn.log_softmax(jnp.asarray(outputs[f"logits.{name}"]), axis=-1))
             for head, name in parity.HEAD_NAMES.items()}
    predicted = {name: batch[f"target_{name}"][:, 1:] for name in ("type", "pitch", "velocity", "duration")}
    is_note = predicted["type"] == int(tokenizer.TokenType.NOTE)
    type_class = is_note.astype(int)
    for row, length in enumerate(lengths):
        t = np.arange(length - 1)
        expected = log_p["type"][row, t, type_class[row, t]] + np.where(
            is_note[row, t], log_p["pitch"][row, t, np.clip(predicted["pitch"][row, t] - MIN_PITCH, 0, None)]
            + log_p["velocity"][row, t, predicted["velocity"][row, t]]
            + log_p["duration"][row, t, predicted["duration"][row, t]], 0.0)
        np.testing.assert_allclose(np.asarray(state.logprob_BxT)[row, 1:length], expected, atol=1e-4)


def test_import_then_generate(reference_dir: Path, tmp_path: Path) -> None:
    """A golden case's weights import into a run that ``experiments.generate`` composes a valid song with."""
    workdir = tmp_path / "authors"
    summary = import_checkpoint(reference_dir / "tiny_b" / "weights.safetensors", workdir)
    assert summary["config"].d_model == 96 and (workdir / "bar_vae" / "best").is_dir()
    out = tmp_path / "songs"
    result = subprocess.run([sys.executable, "-m", "experiments.generate", f"--checkpoint={workdir}",
                             "--structure=A2 B1 A2", f"--out={out}", "--seed=0"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    import symusic

    score = symusic.Score(str(out / "song_0.mid"), ttype="quarter")
    notes = [note for track in score.tracks for note in track.notes]
    assert notes and max(note.time for note in notes) < 5 * 4  # 5 bars of 4 beats
    assert (out / "song_0.png").is_file() and (out / "report.json").is_file()


def test_import_refuses_what_does_not_fit(reference_dir: Path, tmp_path: Path) -> None:
    """Truncated, renamed and mis-shaped checkpoints are refused with what differs, and nothing is written."""
    source = reference_dir / "tiny_b" / "weights.safetensors"
    weights = weights_lib.read_checkpoint(source)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    renamed = dict(weights)
    to_q = "decoder.transformer.layers.0.1.to_q.weight"
    renamed[to_q.replace("to_q", "to_query")] = renamed.pop(to_q)
    misshaped = dict(weights)
    misshaped["pitch_classifier.bias"] = np.zeros(87, np.float32)
    files = {"truncated": truncated}
    for name, tensors in (("renamed", renamed), ("misshaped", misshaped)):
        files[name] = tmp_path / f"{name}.safetensors"
        save_file(tensors, str(files[name]))
    expected = {"truncated": "truncated", "renamed": "to_query", "misshaped": "pitch_classifier.bias"}
    for name, path in files.items():
        workdir = tmp_path / f"run_{name}"
        with pytest.raises(weights_lib.CheckpointMismatch, match=expected[name]) as error:
            import_checkpoint(path, workdir)
        assert not workdir.exists(), f"{name}: something was written"
        if name == "renamed":
            assert "decoder.transformer.layers.0.1.to_q.weight" in error.value.missing
            assert "decoder.transformer.layers.0.1.to_query.weight" in error.value.unexpected
        if name == "truncated":
            assert error.value.missing  # the tensors whose bytes are gone
