"""Mask correctness of the SFS model by perturbation, on a real batch of the tiny TFDS build.

SFS.md section 1: "a missing context is empty and must have no effect". Every input the
model must not see is changed here and the logits are compared bit for bit
(``np.array_equal``, one jitted function per model so the same XLA program runs on
both inputs); every input it must see is changed too, to show each check has power.

Properties:
- context slots left out of ``ModelConfig.context_slots`` have no effect; chosen ones do;
- padded context tokens, padded target tokens and bar embeddings of unknown or padded
  bars have no effect (on the logits of real tokens and on the loss);
- causality: target token t (any field) affects no hidden state at positions <= t, and
  the factorized heads at t read only what they condition on; proved by perturbation
  and by gradients (nanodo's test), which also prove rows of a batch are independent;
- without G the bar embeddings have no effect; the Flat model ignores contexts, G and
  segment positions entirely;
- the XLA and (FastPath) cuDNN attention paths give the same model as the reference path;
- the ``paper`` preset has the paper's parameter counts (about 57M + a 33M bar VAE).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sfs_jax.data import loader
from sfs_jax.data.examples import ExampleConfig
from sfs_jax.model import attention, bar_vae, token_layout
from sfs_jax.model.config import STRUCTURE_PATHS, ModelConfig, model_config
from sfs_jax.model.decoder import Decoder
from sfs_jax.model.flat import flat_config
from sfs_jax.model.sfs import SFSModel
from sfs_jax.music.contexts import ContextSlot
from sfs_jax.music.song import Song
from sfs_jax.music.tokenizer import TokenType
from sfs_jax.training import steps
from sfs_jax.training.train import parameter_count
from tests.conftest import live_tiny_config

EXAMPLES = ExampleConfig(window_bars=2, context_bars=2, target_buckets=(96, 128, 192, 256),
                         context_buckets=(32, 64, 128, 256), previous_token_budget=256)
BATCH_SIZE = 4
LATENT = model_config("tiny").vae.latent_dim
Batch = dict[str, np.ndarray]
Outputs = dict[str, np.ndarray]


@pytest.fixture(scope="module")
def batch(tiny_synthetic_dataset: Path) -> Batch:
    """The first batch of the tiny loader, with random bar embeddings of the tiny VAE's latent size.

    It must hold what the tests perturb: a row with RIGHT and REF contexts, context
    padding, target padding and unknown bars (asserted, so a data change cannot make
    the tests vacuous).
    """
    import tensorflow_datasets as tfds

    source = tfds.builder_from_directory(str(tiny_synthetic_dataset)).as_data_source()["train"]
    rng = np.random.default_rng(0)
    embeddings = {}
    for i in range(len(source)):
        song = Song.from_features(source[i])
        embeddings[song.song_id] = rng.normal(size=(song.n_bars, LATENT)).astype(np.float32)
    iterator = loader.make_loader(source, batch_size=BATCH_SIZE, seed=0, example_config=EXAMPLES,
                                  bar_embeddings=embeddings)
    batch = {k: v for k, v in next(iterator).items() if np.ndim(v) >= 1}
    slot = batch["context_slot"]
    assert any({ContextSlot.LEFT, ContextSlot.RIGHT, ContextSlot.SEED, ContextSlot.REF} <= set(row) for row in slot)
    assert np.any(slot == 0) and np.any(batch["target_type"] == int(TokenType.PAD))
    assert np.any(~batch["bar_known"] & batch["bar_valid"]) and np.any(batch["bar_known"])
    assert np.any(~batch["bar_valid"])
    return batch


class Forward:
    """A model's jitted teacher-forced pass: hidden states, the four heads' logits and the loss."""

    def __init__(self, config: ModelConfig, model: SFSModel | None = None) -> None:
        self.model = SFSModel(config, rngs=nnx.Rngs(0)) if model is None else model
        graphdef, state = nnx.split(self.model)

        def forward(state: nnx.State, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
            # One decoder pass; the heads are wired as in SFSModel.logits (teacher forcing).
            model = nnx.merge(graphdef, state)
            hidden, layout = model(batch), model.config.token_layout
            logits = model.decoder.heads.teacher_forced(hidden, token_layout.predicted_tokens(batch, layout))
            loss, _ = steps.factorized_nll(logits, steps.head_labels(batch, layout),
                                           n_examples=steps.example_count(batch))
            return {"hidden": hidden, **logits, "loss": loss}

        self._state, self._forward = state, jax.jit(forward)

    def __call__(self, batch: Batch) -> Outputs:
        return {k: np.asarray(v) for k, v in self._forward(self._state, batch).items()}


@pytest.fixture(scope="module")
def full() -> Forward:
    return Forward(live_tiny_config())


def _random_like(values: np.ndarray, low: int, high: int, rng: np.random.Generator) -> np.ndarray:
    """Values in [low, high) that differ from ``values`` everywhere."""
    new = rng.integers(low, high, values.shape).astype(values.dtype)
    return np.where(new == values, np.where(values + 1 < high, values + 1, low), new).astype(values.dtype)


def perturb_context(batch: Batch, where_BxS: np.ndarray, seed: int = 0) -> Batch:
    """The batch with the notes (pitch, velocity, duration, frame, segment span) changed where asked."""
    rng = np.random.default_rng(seed)
    out = dict(batch)
    ranges = {"context_pitch": (21, 109), "context_velocity": (1, 128), "context_duration": (0, 65),
              "context_song_frame": (0, 2048), "context_segment_start_frame": (0, 2048),
              "context_segment_end_frame": (0, 2048)}
    for key, (low, high) in ranges.items():
        out[key] = np.where(where_BxS, _random_like(batch[key], low, high, rng), batch[key])
    return out


def perturb_global_view(batch: Batch, seed: int = 0) -> Batch:
    """The batch with every bar embedding (what G reads) redrawn."""
    out = dict(batch)
    out["bar_embedding"] = np.random.default_rng(seed).normal(size=batch["bar_embedding"].shape).astype(np.float32)
    return out


def assert_same(a: Outputs, b: Outputs, keys: tuple[str, ...] = ("hidden", "type", "pitch", "velocity",
                                                                   "duration", "loss")) -> None:
    """Bit-for-bit equal outputs, every position (padded ones included) and the loss."""
    for key in keys:
        assert np.array_equal(a[key], b[key]), f"{key} changed"


def assert_changed(a: Outputs, b: Outputs, row: int) -> None:
    """The perturbation reached row ``row`` (the check it accompanies has power)."""
    assert not np.array_equal(a["hidden"][row], b["hidden"][row]), "the perturbation had no effect"


def _row_with(batch: Batch, slot: ContextSlot) -> int:
    return int(np.flatnonzero(np.any(batch["context_slot"] == int(slot), axis=1))[0])


def test_hidden_context_slots_have_no_effect_chosen_ones_do(batch: Batch, full: Forward) -> None:
    """With ``context_slots=('left', 'seed')`` the RIGHT and REF notes do not change any output bit.

    Changing LEFT notes does change that model, and RIGHT notes change the full model,
    so the selection, not a dead cross-attention, is what hides them.
    """
    hidden = Forward(live_tiny_config(context_slots=("left", "seed")))
    base = hidden(batch)
    slot = batch["context_slot"]
    right_ref = (slot == int(ContextSlot.RIGHT)) | (slot == int(ContextSlot.REF))
    assert right_ref.sum() > 0
    assert_same(base, hidden(perturb_context(batch, right_ref)))
    # Moving notes between hidden slots changes nothing either.
    swapped = dict(batch, context_slot=np.where(slot == int(ContextSlot.RIGHT), int(ContextSlot.REF), slot)
                   .astype(np.int32))
    assert_same(base, hidden(swapped))

    left = slot == int(ContextSlot.LEFT)
    row = _row_with(batch, ContextSlot.LEFT)
    assert_changed(base, hidden(perturb_context(batch, left)), row)
    row = _row_with(batch, ContextSlot.RIGHT)
    assert_changed(full(batch), full(perturb_context(batch, slot == int(ContextSlot.RIGHT))), row)


def test_padding_and_unknown_bars_have_no_effect(batch: Batch, full: Forward) -> None:
    """Padded context tokens, padded target tokens and embeddings of unknown/padded bars change nothing.

    Padded target tokens keep type PAD (a non-PAD type is a real token by definition);
    every other field changes, and the real tokens' outputs and the loss stay bit-equal.
    A known bar's embedding does matter.
    """
    base = full(batch)
    assert_same(base, full(perturb_context(batch, batch["context_slot"] == 0, seed=1)))

    rng = np.random.default_rng(2)
    pad_BxT = batch["target_type"] == int(TokenType.PAD)
    padded = dict(batch)
    ranges = {"target_pitch": (21, 109), "target_velocity": (1, 128), "target_duration": (0, 65),
              "target_frame": (0, 64), "target_song_frame": (0, 2048), "target_bar": (0, 64)}
    for key, (low, high) in ranges.items():
        padded[key] = np.where(pad_BxT, _random_like(batch[key], low, high, rng), batch[key])
    out = full(padded)
    real_BxT = ~pad_BxT
    for key in ("hidden", "type", "pitch", "velocity", "duration"):
        assert np.array_equal(base[key][real_BxT], out[key][real_BxT]), key
    assert np.array_equal(base["loss"], out["loss"])

    unknown_BxG = ~batch["bar_known"]  # includes the padded bars (bar_valid False)
    noisy = rng.normal(size=batch["bar_embedding"].shape).astype(np.float32) * 10
    changed = dict(batch, bar_embedding=np.where(unknown_BxG[..., None], noisy, batch["bar_embedding"]))
    assert_same(base, full(changed))
    known = dict(batch, bar_embedding=np.where(batch["bar_known"][..., None], noisy, batch["bar_embedding"]))
    row = int(np.flatnonzero(batch["bar_known"].any(1))[0])
    assert_changed(base, full(known), row)


@pytest.mark.parametrize("field", ["type", "pitch", "velocity", "duration", "song_frame", "bar"])
def test_causality_by_perturbation(batch: Batch, full: Forward, field: str) -> None:
    """Changing target token t of one row leaves the positions up to the one predicting it (and other rows) unchanged.

    Token t is predicted at decoder position p = t - lead (the reference layout: the
    position reading token t - 1). Hidden states and the type/pitch heads at positions
    <= p are bit-equal. At p itself the velocity head reads the true pitch and the
    duration head the true pitch and velocity (teacher forcing, SFS.md section 3), so
    those, and only those, may change there. Some later position must change.
    """
    row = 1
    length = int(np.sum(batch["target_type"][row] != int(TokenType.PAD)))
    # A NOTE token in the middle: FRAME tokens carry no pitch, velocity or duration.
    t = length // 2 + int(np.argmax(batch["target_type"][row, length // 2:] == int(TokenType.NOTE)))
    assert batch["target_type"][row, t] == int(TokenType.NOTE) and t + 1 < length
    key = f"target_{field}"
    changed = {k: v.copy() if k == key else v for k, v in batch.items()}
    old = int(batch[key][row, t])
    if field == "type":
        new = int(TokenType.FRAME) if old == int(TokenType.NOTE) else int(TokenType.NOTE)
    elif field == "pitch":
        new = 21 + (old - 21 + 30) % 88
    else:
        new = old + 7 if field in ("song_frame", "bar") else (old + 13) % (65 if field == "duration" else 128)
    changed[key][row, t] = new
    base, out = full(batch), full(changed)
    p = t - full.model.decoder.lead

    others = np.arange(BATCH_SIZE) != row
    for name in ("hidden", "type", "pitch", "velocity", "duration"):
        assert np.array_equal(base[name][others], out[name][others]), f"row leak in {name}"
    for name in ("hidden", "type", "pitch"):
        assert np.array_equal(base[name][row, : p + 1], out[name][row, : p + 1]), f"{name} saw token {t}"
    for name in ("velocity", "duration"):
        assert np.array_equal(base[name][row, :p], out[name][row, :p]), f"{name} saw token {t}"
    # A NOTE turned FRAME conditions the heads on no pitch: everything at p may change then.
    assert np.array_equal(base["velocity"][row, p], out["velocity"][row, p]) == (field not in ("pitch", "type"))
    if field not in ("pitch", "velocity", "type"):
        assert np.array_equal(base["duration"][row, p], out["duration"][row, p])
    assert not np.array_equal(base["hidden"][row, p + 1:], out["hidden"][row, p + 1:])


def test_causality_by_gradient(batch: Batch, full: Forward) -> None:
    """d hidden[r, t] / d input embedding[s] is exactly 0 for s > t and for every other row.

    The input embeddings get an offset (zeros) through ``Decoder.embed_inputs``; the
    gradient of a random projection of hidden state (r, t) with respect to that offset
    must vanish after t and outside row r, and be non-zero at t and before.
    """
    row, model = 2, full.model
    length = int(np.sum(batch["target_type"][row] != int(TokenType.PAD)))
    t = length // 2
    n_tokens, d_model = batch["target_type"].shape[1], model.config.d_model
    projection = jax.random.normal(jax.random.key(1), (d_model,))
    embed_inputs = Decoder.embed_inputs

    def probe(offset_BxTxD: jax.Array) -> jax.Array:
        with mock.patch.object(Decoder, "embed_inputs",
                               lambda self, inputs, b: embed_inputs(self, inputs, b) + offset_BxTxD):
            return model(batch)[row, t] @ projection

    grad = np.asarray(jax.jit(jax.grad(probe))(jnp.zeros((BATCH_SIZE, n_tokens, d_model))))
    assert np.all(grad[row, t + 1:] == 0.0), "a later token reached an earlier position"
    assert np.all(np.delete(grad, row, axis=0) == 0.0), "another row reached this one"
    assert np.any(grad[row, t] != 0.0) and np.any(grad[row, 0] != 0.0)
    assert all(np.any(grad[row, s] != 0.0) for s in range(t + 1))


def test_no_global_view_ignores_bars_and_flat_ignores_all_structure(batch: Batch) -> None:
    """``use_global_view=False``: bar embeddings and ``bar_known`` have no effect.

    Flat (``flat_config``): contexts (every field, slot ids included), bar embeddings,
    bar_known and the segment span have no effect; it has no encoder and no G.
    """
    rng = np.random.default_rng(3)
    bars_changed = dict(batch, bar_embedding=rng.normal(size=batch["bar_embedding"].shape).astype(np.float32),
                        bar_known=~batch["bar_known"])
    no_g = Forward(live_tiny_config(use_global_view=False))
    assert no_g.model.global_view is None
    assert_same(no_g(batch), no_g(bars_changed))

    flat = Forward(flat_config(model_config("tiny")))
    assert flat.model.encoder is None and flat.model.global_view is None
    base = flat(batch)
    everything = perturb_context(bars_changed, np.ones_like(batch["context_slot"], bool), seed=4)
    everything["context_slot"] = rng.integers(1, 6, batch["context_slot"].shape).astype(np.int32)
    everything["segment_start_frame"] = batch["segment_start_frame"] - 32
    everything["segment_end_frame"] = batch["segment_end_frame"] + 64
    assert_same(base, flat(everything))
    # Power: the target itself still matters to Flat.
    target_changed = dict(batch, target_pitch=_random_like(batch["target_pitch"], 21, 109, rng))
    assert not np.array_equal(base["hidden"], flat(target_changed)["hidden"])


@pytest.mark.parametrize("implementation", ["xla", "cudnn"])
def test_attention_paths_give_the_same_model(implementation: str, batch: Batch, full: Forward,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole model with ``attention_implementation`` "xla" or "cudnn" matches the reference path (1e-4).

    "cudnn" runs here on CPU with the kernel swapped for XLA's implementation of the same
    fast form (``is_causal`` + per-row lengths): the decoder's ``FastPath`` must describe
    its explicit mask exactly, and the masks without a fast form (context encoder, G,
    cross-attention) must still run (through XLA).
    """
    real_attention, fast_calls = jax.nn.dot_product_attention, []

    def kernel(*args: Any, implementation: str | None = None, **kwargs: Any) -> jax.Array:
        if implementation == "cudnn":
            fast_calls.append(kwargs["is_causal"])
            implementation = "xla"
        return real_attention(*args, implementation=implementation, **kwargs)

    monkeypatch.setattr(attention.jax.nn, "dot_product_attention", kernel)
    other = Forward(live_tiny_config(attention_implementation=implementation))
    reference_out, other_out = full(batch), other(batch)
    # Only the decoder's causal self-attention has the fast form.
    assert (len(fast_calls) > 0 and all(fast_calls)) if implementation == "cudnn" else not fast_calls
    real_BxT = batch["target_type"] != int(TokenType.PAD)
    for key in ("hidden", "type", "pitch", "velocity", "duration"):
        np.testing.assert_allclose(other_out[key][real_BxT], reference_out[key][real_BxT], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(other_out["loss"], reference_out["loss"], rtol=1e-5)


def _parameter_count(make: Callable[[], Any]) -> int:
    """Parameters of a module built abstractly (nnx.eval_shape: nothing is allocated)."""
    return parameter_count(nnx.state(nnx.eval_shape(make)))


@pytest.mark.parametrize("arch, sfs_expected, vae_expected", [("reference", 57_313_563, 33_171_995),
                                                                ("v1", 57_555_741, 33_007_901)])
def test_paper_preset_parameter_counts(arch: str, sfs_expected: int, vae_expected: int) -> None:
    """The ``paper`` preset has exactly the authors' parameter counts (``../shared/reference/paper_state_dict.tsv``).

    Reference: 57,313,563 trained SFS parameters and 33,171,995 in the bar VAE; v1 (this
    project's first design) keeps the counts its results were measured with.
    """
    config = model_config("paper", arch)
    assert (config.d_model, config.n_heads, config.head_dim, config.d_ff) == (512, 8, 64, 2048)
    assert (config.n_encoder_layers, config.n_decoder_layers, config.n_global_layers) == (4, 8, 3)
    vae = config.vae
    assert (vae.n_encoder_layers, vae.n_decoder_layers, vae.latent_dim) == (5, 5, 256)
    sfs_count = _parameter_count(lambda: SFSModel(config, rngs=nnx.Rngs(0)))
    vae_count = _parameter_count(lambda: bar_vae.make_bar_vae(config, nnx.Rngs(0)))
    print(f"paper preset ({arch}): SFS {sfs_count:,} parameters, bar VAE {vae_count:,}")
    assert (sfs_count, vae_count) == (sfs_expected, vae_expected)
    # The Flat baseline of the same size is the decoder alone.
    flat_count = _parameter_count(lambda: SFSModel(flat_config(config), rngs=nnx.Rngs(0)))
    print(f"paper preset ({arch}): Flat {flat_count:,} parameters")
    assert flat_count < sfs_count - 20e6


def test_segment_cross_attention_positions(batch: Batch) -> None:
    """``cross_attention_positions='segment'``: queries at frames within the target segment, keys within their
    own context segment, so the same bar of a Ref and of the target meet at offset 0; unknown values are refused."""
    model = SFSModel(live_tiny_config(cross_attention_positions="segment"), rngs=nnx.Rngs(0))
    frames = jnp.asarray(batch["target_song_frame"])
    jbatch = {k: jnp.asarray(v) for k, v in batch.items()}
    angles = lambda m, positions: np.asarray(m.decoder.rotary.angles(jnp.asarray(positions)).cos)
    got = np.asarray(model.decoder.cross_query_rope(frames, jbatch).cos)
    within_segment = batch["target_song_frame"] - batch["segment_start_frame"][:, None]
    np.testing.assert_array_equal(got, angles(model, within_segment))
    song = SFSModel(live_tiny_config(), rngs=nnx.Rngs(0))  # song frames, counted from the window's start
    window_frames = batch["target_song_frame"] - batch["window_start_bar"][:, None] * 32
    np.testing.assert_array_equal(np.asarray(song.decoder.cross_query_rope(frames, jbatch).cos),
                                  angles(song, window_frames))
    with pytest.raises(ValueError, match="cross_attention_positions"):
        model_config("tiny", cross_attention_positions="bar")


def test_zero_init_paths_start_as_flat_and_learn_the_paths(batch: Batch) -> None:
    """``zero_init_paths`` (v1's default: both): at step 0 contexts and G have no effect, yet their paths get gradient.

    Every cross-attention output projection and G's last condition layer (with the first,
    whose residual path would carry G, in the reference form) start at zero, so changing
    every context token and every bar embedding leaves the logits bit-equal; the loss's
    gradient reaches those zeroed kernels, and one gradient step on them is enough for
    the contexts to matter (the check has power). The reference zeroes nothing.
    """
    assert model_config("tiny").zero_init_paths == () and model_config("tiny", "v1").zero_init_paths == STRUCTURE_PATHS
    config = model_config("tiny", zero_init_paths=STRUCTURE_PATHS)
    zeroed = Forward(config)
    changed = perturb_global_view(perturb_context(batch, batch["context_slot"] > 0, seed=6), seed=5)
    changed["bar_known"] = ~batch["bar_known"]
    assert_same(zeroed(batch), zeroed(changed))

    graphdef, state = nnx.split(zeroed.model)

    def loss(state: nnx.State) -> jax.Array:
        return steps.sfs_loss(nnx.merge(graphdef, state), batch, jax.random.key(0), 0)[0]

    grads = jax.grad(loss)(state)
    decoder_grads = grads["decoder"]
    cross_out = [decoder_grads["blocks"][i]["cross_attention"]["out"]["kernel"].value
                 for i in range(config.n_decoder_layers)]
    condition_out = decoder_grads["condition"]["output"]["kernel"].value
    assert all(np.any(np.asarray(g) != 0) for g in cross_out) and np.any(np.asarray(condition_out) != 0)

    stepped = jax.tree.map(lambda p, g: p - 0.1 * g, state, grads)
    after = Forward(config, nnx.merge(graphdef, stepped))
    assert_changed(after(batch), after(changed), row=int(np.argmax((batch["context_slot"] > 0).any(axis=1))))


@pytest.mark.parametrize("zeroed_path", ["cross_attention", "global_view"])
def test_zero_init_of_one_path_leaves_the_other_live(batch: Batch, zeroed_path: str) -> None:
    """Naming one structure path zeroes that path only: the other moves the logits from step 0."""
    forward = Forward(model_config("tiny", zero_init_paths=(zeroed_path,)))
    contexts_changed = perturb_context(batch, batch["context_slot"] > 0, seed=6)
    g_changed = perturb_global_view(batch, seed=5)
    base = forward(batch)
    context_row = int(np.argmax((batch["context_slot"] > 0).any(axis=1)))
    if zeroed_path == "cross_attention":
        assert_same(base, forward(contexts_changed))
        assert_changed(base, forward(g_changed), row=0)
    else:
        assert_same(base, forward(g_changed))
        assert_changed(base, forward(contexts_changed), row=context_row)
