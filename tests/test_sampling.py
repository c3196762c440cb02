"""The segment sampler: cached decoding equals the full pass, and samples obey the grammar.

Inputs are real examples (synthetic songs through ``make_example`` and ``collate``)
for the tiny model with random bar embeddings; three windows of two bars (64
frames) with different target lengths and contexts (one row has none).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from data_pipeline.synthetic import generate_song
from sfs_jax.data.examples import ExampleConfig, make_example
from sfs_jax.data.loader import collate
from sfs_jax.model import token_layout as layout_lib
from sfs_jax.model.config import model_config
from sfs_jax.model.flat import flat_config
from sfs_jax.model.sfs import SFSModel
from sfs_jax.music import tokenizer
from sfs_jax.music.notes import MAX_PITCH, MIN_PITCH
from sfs_jax.music.song import Song
from sfs_jax.music.tokenizer import DUR, FRAME, PITCH, TYPE, VEL, TokenType
from sfs_jax.sampling import segment
from sfs_jax.sampling.segment import HeadSampling, SamplingConfig, SegmentSampler
from tests.conftest import live_tiny_config

EXAMPLE_CONFIG = ExampleConfig(window_bars=2, context_bars=2, target_buckets=(96, 128, 192, 256),
                               context_buckets=(32, 64, 128, 256), previous_token_budget=256)
# (synthetic song index, example seed): contexts {left, seed, ref}, all four, none.
EXAMPLE_SOURCES = ((0, 1), (4, 1), (2, 1))
N_FRAMES = 64
EQUIVALENCE_ATOL = 1e-4  # fp32; measured max |difference| about 6e-6


@pytest.fixture(scope="module")
def batch() -> dict[str, np.ndarray]:
    latent_dim = model_config("tiny").vae.latent_dim
    examples = []
    for index, seed in EXAMPLE_SOURCES:
        synthetic = generate_song(0, index)
        song = Song(synthetic.song_id, synthetic.notes_Nx4, synthetic.n_bars, synthetic.tempo_bpm,
                    synthetic.segments, "synthetic")
        embeddings = np.random.default_rng(index).normal(size=(song.n_bars, latent_dim)).astype(np.float32)
        examples.append(make_example(song, np.random.default_rng(seed), EXAMPLE_CONFIG, embeddings))
    return collate(examples, EXAMPLE_CONFIG)


@pytest.fixture(scope="module")
def model() -> SFSModel:
    return SFSModel(live_tiny_config(), rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def default_samples(model, batch) -> segment.SamplerState:
    return SegmentSampler(model, SamplingConfig()).sample_window(batch, jax.random.key(0), N_FRAMES)


def _lengths(batch) -> np.ndarray:
    return np.sum(batch["target_type"] != int(TokenType.PAD), axis=1)


def _target_tokens(batch, row: int) -> np.ndarray:
    """Row's real target tokens Tx5 in the tokenizer's column order."""
    fields = ("type", "pitch", "velocity", "duration", "frame")
    tokens = np.stack([batch[f"target_{name}"][row] for name in fields], axis=-1)
    return tokens[: _lengths(batch)[row]]


def test_batch_is_varied(batch):
    """The premises of the tests below: real windows of 64 frames, lengths and contexts differ."""
    assert np.all(batch["n_beats"] * 8 == N_FRAMES)
    assert len(set(_lengths(batch).tolist())) == 3
    n_context = np.sum(batch["context_slot"] > 0, axis=1)
    assert n_context[0] > 0 and n_context[1] > 0 and n_context[2] == 0


# ---------------------------------------------------------------------------
# Cached decoding equals the teacher-forced pass
# ---------------------------------------------------------------------------


@jax.jit
def _stepwise_logits(graphdef, params, batch):
    """The four heads' logits from ``Decoder.step``, one token at a time over the target (lax.scan)."""
    model = nnx.merge(graphdef, params)
    decoder = model.decoder
    batch_size, n_tokens = batch["target_type"].shape
    context = model.encode_context(batch)
    context_kv = decoder.context_caches(context, batch)
    cross_mask = None if context is None else decoder.cross_mask(batch, model.visible_slots,
                                                                 jnp.ones((batch_size, 1), bool))
    per_bar = model.global_bars(batch)
    inputs_TxB = {name: value.T for name, value in layout_lib.decoder_inputs(batch, decoder.layout).items()}

    def one_token(cache, t_and_inputs):
        t, inputs_B = t_and_inputs
        inputs_Bx1 = {name: value[:, None] for name, value in inputs_B.items()}
        h_Bx1xD, cache = decoder.step(inputs_Bx1, batch, cache, t, context_kv, cross_mask, per_bar)
        return cache, h_Bx1xD[:, 0]

    _, h_TxBxD = jax.lax.scan(one_token, decoder.init_cache(batch_size, n_tokens),
                              (jnp.arange(n_tokens), inputs_TxB))
    h = jnp.swapaxes(h_TxBxD, 0, 1)
    return decoder.heads.teacher_forced(h, layout_lib.predicted_tokens(batch, decoder.layout))


@jax.jit
def _teacher_forced_logits(graphdef, params, batch):
    return nnx.merge(graphdef, params).logits(batch)


def _scored(batch, layout: str) -> np.ndarray:
    """BxT: decoder positions whose predicted token is real (what the loss scores)."""
    return np.asarray(layout_lib.predicted_tokens(batch, layout)["type"]) != int(TokenType.PAD)


@pytest.mark.parametrize("variant", ["sfs", "flat", "segment_positions", "v1"])
def test_forward_equivalence(model, batch, variant):
    """Decoder.step token by token gives the teacher-forced logits at every real position.

    Covers every frame boundary of three rows of different lengths, the contexts
    (cross-attention keys/values computed once) and G; the Flat model has neither;
    ``segment_positions`` rotates cross-attention by frames within each segment; ``v1``
    is this project's first design (START input, 4-class type head).
    """
    if variant == "flat":
        model = SFSModel(flat_config(model_config("tiny")), rngs=nnx.Rngs(1))
    elif variant == "v1":
        model = SFSModel(model_config("tiny", "v1", zero_init_paths=()), rngs=nnx.Rngs(1))
    elif variant == "segment_positions":
        model = SFSModel(live_tiny_config(cross_attention_positions="segment"), rngs=nnx.Rngs(0))
        song_mode = _teacher_forced_logits(*nnx.split(SFSModel(live_tiny_config(), rngs=nnx.Rngs(0))),
                                           {k: jnp.asarray(v) for k, v in batch.items()})
    jbatch = {k: jnp.asarray(v) for k, v in batch.items()}
    expected = _teacher_forced_logits(*nnx.split(model), jbatch)
    got = _stepwise_logits(*nnx.split(model), jbatch)
    valid = _scored(batch, model.config.token_layout)
    for head in ("type", "pitch", "velocity", "duration"):
        np.testing.assert_allclose(np.asarray(got[head])[valid], np.asarray(expected[head])[valid],
                                   atol=EQUIVALENCE_ATOL, rtol=0, err_msg=head)
    # Not vacuous: the logits vary along the sequence.
    assert np.std(np.asarray(expected["pitch"])[valid], axis=0).max() > 1e-2
    if variant == "segment_positions":  # same weights, other rotary positions: other logits
        assert np.abs(np.asarray(song_mode["pitch"]) - np.asarray(expected["pitch"]))[valid].max() > 1e-4


@pytest.mark.parametrize("prefill, positions", [(False, "song"), (True, "song"), (True, "segment")],
                         ids=["stepwise", "prefill", "prefill_segment_positions"])
def test_forced_target_scores_like_teacher_forcing(model, batch, prefill, positions):
    """Forcing the whole real target through the sampler reproduces it and its teacher-forced log-probs.

    Step by step this checks the sampler's own inputs (song frame, bar, START)
    against ``shift_right``; with prefill, the one-pass prefix and its replay (also
    with segment-relative cross-attention positions, whose keys need each context's
    segment start inside the sampler's window).
    """
    if positions == "segment":
        model = SFSModel(live_tiny_config(cross_attention_positions="segment"), rngs=nnx.Rngs(0))
    lengths = _lengths(batch)
    sampler = SegmentSampler(model, SamplingConfig())
    state = sampler.start(batch, jax.random.key(3), N_FRAMES, lengths, prefill=prefill)
    lead, layout = model.decoder.lead, model.config.token_layout
    assert int(state.step) == (lengths.min() if prefill else lead)
    state = sampler.sample_chunk(state, N_FRAMES * 4)
    tokens, out_lengths = segment.tokens_and_lengths(state)
    np.testing.assert_array_equal(out_lengths, lengths)
    logits = _teacher_forced_logits(*nnx.split(model), {k: jnp.asarray(v) for k, v in batch.items()})
    log_p = {head: np.asarray(jax.nn.log_softmax(value, axis=-1)) for head, value in logits.items()}
    for row, length in enumerate(lengths):
        target = _target_tokens(batch, row)
        np.testing.assert_array_equal(tokens[row, :length], target)
        assert np.all(tokens[row, length:] == 0)
        # Token t is predicted at decoder position t - lead; the reference layout's token 0 is given.
        t = np.arange(lead, length)
        scored = target[lead:]
        note = scored[:, TYPE] == int(TokenType.NOTE)
        type_class = np.asarray(layout_lib.type_class(jnp.asarray(scored[:, TYPE]), layout))
        expected = log_p["type"][row, t - lead, type_class] + np.where(
            note, log_p["pitch"][row, t - lead, np.clip(scored[:, PITCH] - MIN_PITCH, 0, None)]
            + log_p["velocity"][row, t - lead, scored[:, VEL]] + log_p["duration"][row, t - lead, scored[:, DUR]],
            0.0)
        np.testing.assert_allclose(np.asarray(state.logprob_BxT)[row, lead:length], expected, atol=1e-4)
        assert np.all(np.asarray(state.logprob_BxT)[row, :lead] == 0)


# ---------------------------------------------------------------------------
# The grammar of SFS.md section 4
# ---------------------------------------------------------------------------


def _assert_grammatical(tokens_Tx5: np.ndarray, length: int, n_frames: int, max_tokens: int) -> np.ndarray:
    """Checks one sampled row and returns its decoded notes."""
    types = tokens_Tx5[:, TYPE]
    assert tokenizer.count_token_errors(tokens_Tx5) == 0
    assert length <= max_tokens
    assert types[0] == int(TokenType.FRAME)
    assert np.sum(types == int(TokenType.FRAME)) == n_frames
    assert types[length - 1] == int(TokenType.END) and np.sum(types == int(TokenType.END)) == 1
    assert np.all(types[length:] == int(TokenType.PAD)) and np.all(types[:length] != int(TokenType.PAD))
    np.testing.assert_array_equal(tokens_Tx5[:length, FRAME], tokenizer.frames_from_types(types[:length]))
    notes = tokens_Tx5[:length][types[:length] == int(TokenType.NOTE)]
    assert np.all((notes[:, PITCH] >= MIN_PITCH) & (notes[:, PITCH] <= MAX_PITCH))
    frames = tokens_Tx5[:length][types[:length] == int(TokenType.NOTE), FRAME]
    same_frame = frames[1:] == frames[:-1]
    assert np.all(notes[1:, PITCH][same_frame] > notes[:-1, PITCH][same_frame])
    decoded = segment.window_notes(tokens_Tx5)
    assert len(decoded) == len(notes) and np.all(decoded[:, 0] < n_frames)
    return decoded


def test_samples_obey_grammar(default_samples, batch):
    tokens, lengths = segment.tokens_and_lengths(default_samples)
    max_tokens = batch["target_type"].shape[1]
    n_notes = [len(_assert_grammatical(tokens[row], lengths[row], N_FRAMES, max_tokens)) for row in range(3)]
    assert min(n_notes) > 0  # the random model does write notes
    assert len(set(lengths.tolist())) > 1  # rows end independently


def test_per_row_frames_and_tight_budget(model, batch):
    """Rows with their own n_frames; 120 frames in the 128-token budget leave room for 7 notes only.

    (n_frames may run past the real window: the model reads positions, nothing more.)
    """
    n_frames = np.array([120, 23, 1])
    max_tokens = batch["target_type"].shape[1]
    tokens, lengths = segment.sample_window(model, batch, n_frames, SamplingConfig(), jax.random.key(5))
    for row in range(3):
        _assert_grammatical(tokens[row], lengths[row], n_frames[row], max_tokens)
    assert lengths[0] == max_tokens  # 120 FRAMEs + END + 7 notes: the budget binds and is used to the last token
    assert lengths[1] > 24  # a short row has room for notes (that its last frame may hold notes: the mask test)


def _state_for_masks(frames_emitted, last_pitch, n_frames, step, max_tokens) -> segment.SamplerState:
    rows = len(frames_emitted)
    window = segment.Window(batch={}, context_BxSxD=None, context_kv=(), cross_mask_Bx1xS=None, per_bar_BxGxD=None,
                            n_frames_B=jnp.asarray(n_frames), prefix_len_B=jnp.zeros(rows, jnp.int32))
    return segment.SamplerState(step=jnp.asarray(step), tokens_BxTx5=jnp.zeros((rows, max_tokens, 5), jnp.int32),
                                logprob_BxT=jnp.zeros((rows, max_tokens)),
                                frames_emitted_B=jnp.asarray(frames_emitted), last_pitch_B=jnp.asarray(last_pitch),
                                done_B=jnp.zeros(rows, bool), key=jax.random.key(0), cache=(), window=window,
                                row_B=jnp.arange(rows), batch_rows=rows)


def test_type_and_pitch_masks():
    """Rows: first token; mid-frame; top pitch reached; last frame; budget exhausted for notes."""
    state = _state_for_masks(frames_emitted=[0, 3, 3, 8, 5], last_pitch=[20, 60, MAX_PITCH, 70, 20],
                             n_frames=[8, 8, 8, 8, 8], step=10, max_tokens=14)
    allowed = np.asarray(jax.jit(segment.type_mask)(state))  # columns PAD, FRAME, NOTE, END
    np.testing.assert_array_equal(allowed, [[0, 1, 0, 0],   # only FRAME first
                                            [0, 1, 0, 0],   # 5 FRAMEs + END need 6 of the 4 left: no NOTE
                                            [0, 1, 0, 0],   # nothing above 108
                                            [0, 0, 1, 1],   # last frame: its notes or END, never FRAME
                                            [0, 1, 0, 0]])  # 3 FRAMEs + END need all 4 tokens left
    roomy = _state_for_masks([3, 8], [60, 70], [8, 8], step=0, max_tokens=100)
    np.testing.assert_array_equal(np.asarray(jax.jit(segment.type_mask)(roomy)), [[0, 1, 1, 0], [0, 0, 1, 1]])
    pitches = np.asarray(jax.jit(segment.pitch_mask)(jnp.asarray([20, 60, MAX_PITCH])))
    assert pitches[0].all() and not pitches[2].any()
    assert np.flatnonzero(pitches[1])[0] + MIN_PITCH == 61


# ---------------------------------------------------------------------------
# Keys, chunks, prefixes
# ---------------------------------------------------------------------------


def test_same_key_same_samples_and_chunks_match(model, batch, default_samples):
    sampler = SegmentSampler(model, SamplingConfig())
    again = sampler.sample_window(batch, jax.random.key(0), N_FRAMES)
    np.testing.assert_array_equal(np.asarray(again.tokens_BxTx5), np.asarray(default_samples.tokens_BxTx5))
    other = sampler.sample_window(batch, jax.random.key(1), N_FRAMES)
    assert not np.array_equal(np.asarray(other.tokens_BxTx5), np.asarray(default_samples.tokens_BxTx5))
    state = sampler.start(batch, jax.random.key(0), N_FRAMES)
    steps = []
    for chunk_state, new_tokens in sampler.stream(state, 7):
        steps.append(int(chunk_state.step))
        assert new_tokens.shape[1] <= 7
        state = chunk_state
    assert len(steps) > 2 and steps[0] == model.decoder.lead + 7  # the reference layout starts after its FRAME
    np.testing.assert_array_equal(np.asarray(state.tokens_BxTx5), np.asarray(default_samples.tokens_BxTx5))
    np.testing.assert_allclose(np.asarray(state.logprob_BxT), np.asarray(default_samples.logprob_BxT))


def test_prefix_is_kept(model, batch):
    """A teacher-forced beginning (e.g. the bars already in a sliding window) appears unchanged."""
    prefix_len = np.array([40, 0, 25])
    tokens, lengths = segment.sample_window(model, batch, N_FRAMES, SamplingConfig(), jax.random.key(2),
                                            prefix_len)
    for row in range(3):
        np.testing.assert_array_equal(tokens[row, : prefix_len[row]], _target_tokens(batch, row)[: prefix_len[row]])
        _assert_grammatical(tokens[row], lengths[row], N_FRAMES, batch["target_type"].shape[1])


def test_prefill_continues_like_stepwise_forcing(model, batch):
    """A prefilled prefix (one parallel pass) leaves the cache and state that forcing step by step does."""
    prefix_len = np.array([40, 30, 25])
    sampler = SegmentSampler(model, SamplingConfig())
    prefilled = sampler.start(batch, jax.random.key(8), N_FRAMES, prefix_len, prefill=True)
    assert int(prefilled.step) == 25
    prefilled = sampler.sample_chunk(prefilled, 1000)
    stepwise = sampler.sample_chunk(sampler.start(batch, jax.random.key(8), N_FRAMES, prefix_len, prefill=False), 1000)
    np.testing.assert_array_equal(np.asarray(prefilled.tokens_BxTx5), np.asarray(stepwise.tokens_BxTx5))
    np.testing.assert_allclose(np.asarray(prefilled.logprob_BxT), np.asarray(stepwise.logprob_BxT), atol=1e-4)
    # Slots past the last input hold the prefill's padding keys/values: never read. Input t - 1 is in slot t - lead.
    written = int(stepwise.step) - model.decoder.lead
    for layer_p, layer_s in zip(prefilled.cache, stepwise.cache, strict=True):
        np.testing.assert_allclose(np.asarray(layer_p.kT_BxHxKxL)[..., :written],
                                   np.asarray(layer_s.kT_BxHxKxL)[..., :written], atol=1e-4)
        np.testing.assert_allclose(np.asarray(layer_p.v_BxHxLxK)[:, :, :written],
                                   np.asarray(layer_s.v_BxHxLxK)[:, :, :written], atol=1e-4)


def test_greedy_is_the_argmax_path(model, batch):
    """top_k 1 and temperature 0 take the same path whatever the key (draws: test_top_p_top_k_and_masks)."""
    greedy, lengths = segment.sample_window(model, batch, N_FRAMES, SamplingConfig(temperature=0.0),
                                            jax.random.key(0))
    for key in (0, 9):
        top1, _ = segment.sample_window(model, batch, N_FRAMES, SamplingConfig(top_k=1), jax.random.key(key))
        np.testing.assert_array_equal(top1, greedy)
    for row in range(3):
        _assert_grammatical(greedy[row], lengths[row], N_FRAMES, batch["target_type"].shape[1])


def test_no_cache_sampler_draws_the_same_samples(model, batch, default_samples):
    """Same key, same masks and draws: the original's method gives the cached sampler's tokens."""
    state = SegmentSampler(model, SamplingConfig()).sample_window_no_cache(batch, jax.random.key(0), N_FRAMES,
                                                                          max_steps=48)
    assert int(state.step) == 48
    np.testing.assert_array_equal(np.asarray(state.tokens_BxTx5)[:, :48],
                                  np.asarray(default_samples.tokens_BxTx5)[:, :48])
    np.testing.assert_allclose(np.asarray(state.logprob_BxT)[:, :48], np.asarray(default_samples.logprob_BxT)[:, :48],
                               atol=1e-4)


# ---------------------------------------------------------------------------
# Drawing from one head
# ---------------------------------------------------------------------------


def _draws(logits_V, head: HeadSampling, allowed_V=None, n: int = 4000) -> np.ndarray:
    logits_BxV = jnp.broadcast_to(jnp.asarray(logits_V, jnp.float32), (n, len(logits_V)))
    allowed = None if allowed_V is None else jnp.broadcast_to(jnp.asarray(allowed_V), logits_BxV.shape)
    draws = segment.sample_logits(jax.random.key(0), logits_BxV, allowed, head)
    return np.bincount(np.asarray(draws), minlength=len(logits_V)) / n


def test_top_p_top_k_and_masks():
    logits = np.log([0.5, 0.3, 0.15, 0.05])
    free = _draws(logits, HeadSampling(top_p=1.0))
    assert np.all(free > 0) and np.allclose(free, [0.5, 0.3, 0.15, 0.05], atol=0.03)
    # The reference's rule: a class stays while the mass before it is <= top_p (the crossing class stays).
    nucleus = _draws(logits, HeadSampling(top_p=0.79))  # 0.5 + 0.3 crosses 0.79: the third class is out
    assert np.all(nucleus[2:] == 0) and np.allclose(nucleus[:2], [0.625, 0.375], atol=0.03)
    assert np.all(_draws(logits, HeadSampling(top_p=0.81))[:3] > 0)
    assert _draws(logits, HeadSampling(top_p=0.81))[3] == 0
    assert np.all(_draws(logits, HeadSampling(top_p=1.0, top_k=2))[2:] == 0)
    assert _draws(logits, HeadSampling(top_p=0.4))[0] == 1.0  # the top class always stays
    masked = _draws(logits, HeadSampling(top_p=1.0), allowed_V=[False, True, True, False])
    assert masked[0] == 0 and masked[3] == 0 and np.allclose(masked[1], 0.3 / 0.45, atol=0.03)
    assert _draws(logits, HeadSampling(temperature=0.0), allowed_V=[False, False, True, True])[2] == 1.0
    cold = _draws(logits, HeadSampling(temperature=0.05, top_p=1.0))
    assert cold[0] > 0.99


def test_sampling_config():
    config = SamplingConfig(top_p=0.9, pitch_head=HeadSampling(temperature=0.5, top_p=1.0, top_k=10))
    assert config.head("type") == HeadSampling(1.0, 0.9, 0)
    assert config.head("pitch") == HeadSampling(0.5, 1.0, 10)
    assert SamplingConfig().head("duration").top_p == 0.975
    hash(config)  # a static jit argument
    with pytest.raises(ValueError):
        SamplingConfig(top_p=0.0)
    with pytest.raises(ValueError):
        SamplingConfig(temperature=-1.0)
    with pytest.raises(ValueError):
        config.head("tempo")
    assert dataclasses.replace(config, max_tokens=10).max_tokens == 10


def test_start_refuses_impossible_windows(model, batch):
    sampler = SegmentSampler(model, SamplingConfig(max_tokens=64))
    with pytest.raises(ValueError, match="n_frames"):
        sampler.start(batch, jax.random.key(0), 64)  # 64 FRAMEs + END do not fit in 64 tokens
    with pytest.raises(ValueError, match="prefix_len"):
        sampler.start(batch, jax.random.key(0), 32, prefix_len_B=65)
    with pytest.raises(ValueError, match="remaining FRAMEs"):  # 63 FRAMEs + END fit, not after 40 real tokens
        sampler.start(batch, jax.random.key(0), 63, prefix_len_B=40)


def test_sampling_settings_are_values_not_compilations(model, batch):
    """Ten settings in a row run on one compiled sampler; the settings still change what is drawn."""
    sampler = SegmentSampler(model, SamplingConfig())
    sampler.sample_window(batch, jax.random.key(4), N_FRAMES)  # compiled here (or earlier in the session)
    compiled = segment.sample_chunk._cache_size()
    outputs = []
    for i, (temperature, top_p, top_k) in enumerate([(0.5, 0.9, 0), (0.55, 0.95, 5), (0.0, 1.0, 0), (1.3, 1.0, 0),
                                                     (1.0, 0.5, 0), (0.7, 0.8, 3), (1.0, 1.0, 1), (0.9, 0.975, 0),
                                                     (2.0, 1.0, 20), (0.05, 1.0, 0)]):
        settings = SamplingConfig(temperature=temperature, top_p=top_p, top_k=top_k)
        state = sampler.start(batch, jax.random.key(4), N_FRAMES)
        outputs.append(np.asarray(sampler.sample_chunk(state, 1000, settings).tokens_BxTx5))
        assert segment.sample_chunk._cache_size() == compiled, f"setting {i} compiled the sampler again"
    np.testing.assert_array_equal(outputs[2], outputs[6])  # temperature 0 and top_k 1: both the argmax path
    assert not np.array_equal(outputs[0], outputs[3])


def test_cache_grows_as_the_window_needs_and_gives_the_full_caches_tokens(model, batch, monkeypatch):
    """A window longer than its first cache grows it (512 -> the budget) and samples what a cache of the
    whole budget samples: 520 frames need at least 521 tokens."""
    n_frames = 520
    sampler = SegmentSampler(model, SamplingConfig(max_tokens=600))
    start = sampler.start(batch, jax.random.key(3), n_frames)
    assert start.cache_tokens == 512 and start.max_tokens == 600
    grown = sampler.sample_chunk(start, 600)
    assert grown.cache_tokens == 600 and int(np.min(segment.tokens_and_lengths(grown)[1])) > 520
    monkeypatch.setattr(segment, "CACHE_LENGTHS", (4096,))  # one cache of the whole budget from the start
    whole_start = sampler.start(batch, jax.random.key(3), n_frames)
    assert whole_start.cache_tokens == 600
    whole = sampler.sample_chunk(whole_start, 600)
    np.testing.assert_array_equal(np.asarray(grown.tokens_BxTx5), np.asarray(whole.tokens_BxTx5))
    np.testing.assert_allclose(np.asarray(grown.logprob_BxT), np.asarray(whole.logprob_BxT), atol=1e-4)


def test_contexts_are_cut_to_their_real_length_without_changing_samples(model, batch):
    """Contexts padded as the composer pads them (to 1536) are cut to ``context_length`` of the real ones."""
    from sfs_jax.data import examples as examples_lib

    padded = {**batch, **{key: np.pad(batch[key], ((0, 0), (0, 1536 - batch[key].shape[1])))
                          for key in examples_lib.CONTEXT_KEYS}}
    real = int(np.max(np.sum(batch["context_slot"] != 0, axis=1)))
    sampler = SegmentSampler(model, SamplingConfig())
    cut = sampler.start(padded, jax.random.key(5), N_FRAMES)
    kept = sampler.start(padded, jax.random.key(5), N_FRAMES, cut_contexts=False)
    assert cut.window.batch["context_slot"].shape[1] == segment.context_length(real, 1536) < 1536
    assert kept.window.batch["context_slot"].shape[1] == 1536
    cut, kept = sampler.sample_chunk(cut, 1000), sampler.sample_chunk(kept, 1000)
    np.testing.assert_array_equal(np.asarray(cut.tokens_BxTx5), np.asarray(kept.tokens_BxTx5))
    np.testing.assert_allclose(np.asarray(cut.logprob_BxT), np.asarray(kept.logprob_BxT), atol=1e-4)
    assert [segment.context_length(n, 1536) for n in (0, 128, 129, 629, 1600)] == [128, 128, 256, 768, 1536]


def test_rows_that_finish_early_leave_the_batch_and_the_others_draw_the_same(model, batch, monkeypatch):
    """Two rows end after ~100 tokens, one writes 300 frames: once it is alone it goes on in a batch of
    one, and every row's tokens are those of the whole batch decoding to the end."""
    n_frames = np.array([N_FRAMES, 300, N_FRAMES])
    sampler = SegmentSampler(model, SamplingConfig(max_tokens=600))
    taken = []
    real_take_rows = segment.take_rows
    monkeypatch.setattr(segment, "take_rows", lambda state, index: taken.append(len(index)) or
                        real_take_rows(state, index))
    compacted = sampler.sample_chunk(sampler.start(batch, jax.random.key(6), n_frames), 600)
    lengths = segment.tokens_and_lengths(compacted)[1]
    assert taken == [1] and lengths[1] > 300 and max(lengths[0], lengths[2]) < 200, (taken, lengths)
    assert compacted.tokens_BxTx5.shape[0] == 3 and np.asarray(compacted.done_B).all()
    whole_batch = SegmentSampler(model, SamplingConfig(max_tokens=600), drop_finished_rows=False)
    whole = whole_batch.sample_chunk(whole_batch.start(batch, jax.random.key(6), n_frames), 600)
    np.testing.assert_array_equal(np.asarray(compacted.tokens_BxTx5), np.asarray(whole.tokens_BxTx5))
    np.testing.assert_allclose(np.asarray(compacted.logprob_BxT), np.asarray(whole.logprob_BxT), atol=1e-4)
    np.testing.assert_array_equal(np.asarray(compacted.frames_emitted_B), np.asarray(whole.frames_emitted_B))
    assert taken == [1]


def test_gumbel_draw_is_categorical_and_follows_its_row():
    """Without rows it is ``jax.random.categorical``; a row taken out of its batch draws what it drew in it."""
    logits = jax.random.normal(jax.random.key(1), (5, 40))
    key = jax.random.key(2)
    np.testing.assert_array_equal(np.asarray(segment.gumbel_draw(key, logits)),
                                  np.asarray(jax.random.categorical(key, logits, axis=-1)))
    rows = jnp.asarray([3, 1])
    np.testing.assert_array_equal(np.asarray(segment.gumbel_draw(key, logits[rows], (rows, 5))),
                                  np.asarray(segment.gumbel_draw(key, logits))[np.asarray(rows)])
