"""The bar VAE (sfs_jax/model/bar_vae.py) and its bar data (sfs_jax/data/bars.py).

Properties, not snapshots: the decoder is causal given z, the sample depends only on
the key, the VAE can overfit a few real bars, bar tokens equal the per-bar tokenizer
and decode back to the bar, embeddings are batch-size independent and tied to their
VAE by fingerprint, and the bar loader is seeded and resumes exactly.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from data_pipeline.synthetic import generate_song
from sfs_jax.data import bars
from sfs_jax.model import bar_vae
from sfs_jax.model.config import model_config
from sfs_jax.music import notes as notes_lib
from sfs_jax.music.song import Song
from sfs_jax.music.tokenizer import TOKEN_FIELDS, TokenType, decode_target, encode_target

MAX_BAR_TOKENS = 96  # synthetic bars hold at most ~45 notes: 32 + 45 + 1 fits
VAE_CONFIG = dataclasses.replace(model_config("tiny").vae, max_bar_tokens=MAX_BAR_TOKENS)
BARS = 4  # one batch shape for every eager call: eager ops compile once per shape, which dominates CPU time


def _song(index: int) -> Song:
    synthetic = generate_song(0, index)
    return Song(synthetic.song_id, synthetic.notes_Nx4, synthetic.n_bars, synthetic.tempo_bpm,
                synthetic.segments, "synthetic")


@pytest.fixture(scope="module")
def songs() -> list[Song]:
    return [_song(i) for i in range(3)]


@pytest.fixture(scope="module")
def model() -> bar_vae.BarVAE:
    return bar_vae.BarVAE(VAE_CONFIG, rngs=nnx.Rngs(0))


def _batch(song: Song, first_bar: int, n_bars: int = BARS) -> dict[str, jax.Array]:
    tokens = bars.bar_tokens(song, MAX_BAR_TOKENS)
    return {name: jnp.asarray(tokens[name][first_bar:first_bar + n_bars]) for name in TOKEN_FIELDS}


def test_shapes_and_embedding_is_mu(model, songs):
    batch = _batch(songs[0], 0)
    out = model(batch, jax.random.key(1))
    latent = VAE_CONFIG.latent_dim
    # The reference's type head: FRAME (END included) or NOTE.
    expected = {"type": 2, "pitch": notes_lib.NUM_PITCHES, "velocity": 128, "duration": 65}
    for name, classes in expected.items():
        assert out[name].shape == (BARS, MAX_BAR_TOKENS, classes), name
    assert out["mu"].shape == out["logvar"].shape == (BARS, latent)
    # Trained on END-terminated bars, G's embedding reads a bar without END (the reference's two forms).
    np.testing.assert_array_equal(model.embed_bars(batch), model.encode(bar_vae.without_end(batch))[0])
    assert not np.allclose(model.embed_bars(batch), out["mu"])
    assert bool(jnp.all(jnp.isfinite(out["pitch"])))


def test_decoder_is_causal_given_z(model, songs):
    batch = _batch(songs[0], 0)
    z = jax.random.normal(jax.random.key(2), (BARS, VAE_CONFIG.latent_dim))
    note_positions = np.flatnonzero(np.asarray(batch["type"][0]) == TokenType.NOTE)
    k = int(note_positions[len(note_positions) // 2])
    changed = dict(batch)
    changed["pitch"] = batch["pitch"].at[0, k].set(batch["pitch"][0, k] + 1)
    changed["velocity"] = batch["velocity"].at[0, k].set(5)
    before, after = model.decode(batch, z), model.decode(changed, z)
    p = k - 1  # the reference layout: the position reading token k - 1 predicts token k
    for name in bar_vae.HEAD_NAMES:
        np.testing.assert_array_equal(before[name][:, :p], after[name][:, :p], err_msg=name)
        np.testing.assert_array_equal(before[name][1:], after[name][1:], err_msg=name)  # other bars untouched
    np.testing.assert_array_equal(before["type"][0, p], after["type"][0, p])
    # The change is visible from the next position on (and at p itself for the conditioned heads).
    assert not np.allclose(before["type"][0, p + 1], after["type"][0, p + 1])
    assert not np.allclose(before["velocity"][0, p], after["velocity"][0, p])


def test_sample_depends_only_on_the_key(model, songs):
    batch = _batch(songs[1], 0)
    first, again = model(batch, jax.random.key(7)), model(batch, jax.random.key(7))
    other = model(batch, jax.random.key(8))
    for name in (*bar_vae.HEAD_NAMES, "mu", "logvar"):
        np.testing.assert_array_equal(first[name], again[name])
    np.testing.assert_array_equal(first["mu"], other["mu"])
    assert not np.allclose(first["pitch"], other["pitch"])


def test_overfits_a_small_batch_of_real_bars(songs):
    """Adam on 8 real bars for 60 steps: the loss (beta 0.1) must fall below half its start."""
    model = bar_vae.BarVAE(VAE_CONFIG, rngs=nnx.Rngs(3))
    parts = [_batch(songs[0], 4, 3), _batch(songs[1], 4, 3), _batch(songs[2], 4, 2)]
    batch = {name: jnp.concatenate([part[name] for part in parts]) for name in TOKEN_FIELDS}
    optimizer = optax.adam(3e-3)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, key):
        def loss_fn(params):
            return bar_vae.vae_loss(nnx.merge(graphdef, params, rest), batch, key, 0.1)
        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, metrics

    key = jax.random.key(0)
    losses = []
    for i in range(60):
        params, opt_state, metrics = step(params, opt_state, jax.random.fold_in(key, i))
        losses.append(float(metrics["loss"]))
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.5 * losses[0], (losses[0], losses[-5:])
    head_metrics = {f"{head}_{kind}" for head in bar_vae.HEAD_NAMES for kind in ("nll", "ce")}
    assert set(metrics) >= head_metrics | {"kl", "recon", "loss"}


def test_cyclic_beta_at_known_steps():
    expected = {0: 0.0, 25: 0.05, 50: 0.1, 75: 0.1, 99: 0.1, 100: 0.0, 110: 0.02, 250: 0.1}
    for step, beta in expected.items():
        assert bar_vae.cyclic_beta(step, cycle_steps=100) == pytest.approx(beta)
    traced = jax.jit(lambda s: bar_vae.cyclic_beta(s, cycle_steps=100))(jnp.asarray(list(expected)))
    np.testing.assert_allclose(traced, list(expected.values()), atol=1e-7)
    assert bar_vae.cyclic_beta(30, max_beta=1.0, cycle_steps=40, ramp_fraction=1.0) == pytest.approx(0.75)


def test_bar_tokens_equal_per_bar_tokenizer_and_decode(songs):
    for song in songs:
        tokens = bars.bar_tokens(song, MAX_BAR_TOKENS)
        assert int(tokens["truncated"]) == 0
        for bar in range(song.n_bars):
            notes_Nx4 = notes_lib.notes_in_bars(song.notes_Nx4, bar, bar + 1)
            rows_Tx5 = np.stack([tokens[name][bar] for name in TOKEN_FIELDS], axis=1)
            reference_Tx5, _ = encode_target(notes_Nx4, notes_lib.FRAMES_PER_BAR)
            np.testing.assert_array_equal(rows_Tx5[:len(reference_Tx5)], reference_Tx5)
            assert np.all(rows_Tx5[len(reference_Tx5):] == 0)
            expected = notes_Nx4.copy()
            expected[:, notes_lib.DURATION] = np.minimum(expected[:, notes_lib.DURATION],
                                                         notes_lib.MAX_DURATION_FRAMES)
            np.testing.assert_array_equal(decode_target(rows_Tx5), expected)


def test_truncated_bars_keep_a_prefix_then_end(songs):
    song, limit = songs[0], 48
    tokens = bars.bar_tokens(song, limit)
    onset_bar = song.notes_Nx4[:, notes_lib.ONSET] // notes_lib.FRAMES_PER_BAR
    notes_per_bar = np.bincount(onset_bar, minlength=song.n_bars)
    too_long = notes_per_bar + notes_lib.FRAMES_PER_BAR + 1 > limit
    assert too_long.any() and int(tokens["truncated"]) == int(too_long.sum())
    for bar in np.flatnonzero(too_long):
        assert tokens["type"][bar, limit - 1] == TokenType.END
        full_Tx5, _ = encode_target(notes_lib.notes_in_bars(song.notes_Nx4, bar, bar + 1), 32)
        rows_Tx5 = np.stack([tokens[name][bar] for name in TOKEN_FIELDS], axis=1)
        np.testing.assert_array_equal(rows_Tx5[:limit - 1], full_Tx5[:limit - 1])


def test_compute_bar_embeddings_is_batch_size_independent(model, songs):
    embed = bar_vae.make_embed_fn(model)
    by_3 = bars.compute_bar_embeddings(embed, songs, MAX_BAR_TOKENS, batch_size=3)
    by_64 = bars.compute_bar_embeddings(embed, songs, MAX_BAR_TOKENS, batch_size=64)
    assert list(by_3) == [song.song_id for song in songs]
    for song in songs:
        assert by_3[song.song_id].shape == (song.n_bars, VAE_CONFIG.latent_dim)
        assert by_3[song.song_id].dtype == np.float32
        np.testing.assert_allclose(by_3[song.song_id], by_64[song.song_id], rtol=1e-5, atol=1e-6)
    direct = model.embed_bars(_batch(songs[1], 8))
    np.testing.assert_allclose(by_64[songs[1].song_id][8:8 + BARS], direct, rtol=1e-5, atol=1e-6)


def test_embeddings_round_trip_and_fingerprint(tmp_path, model):
    rng = np.random.default_rng(0)
    embeddings = {"song-a": rng.normal(size=(5, 16)).astype(np.float32),
                  "song/b": rng.normal(size=(1, 16)).astype(np.float32)}
    fingerprint = bar_vae.vae_fingerprint(model)
    assert fingerprint == bar_vae.vae_fingerprint(model)
    path = tmp_path / "embeddings" / "bars.npz"
    bars.save_bar_embeddings(path, embeddings, fingerprint)
    assert [p.name for p in path.parent.iterdir()] == ["bars.npz"]  # no temp file left behind
    loaded = bars.load_bar_embeddings(path, fingerprint)
    assert list(loaded) == list(embeddings)
    for song_id, rows in embeddings.items():
        np.testing.assert_array_equal(loaded[song_id], rows)
    other = bar_vae.vae_fingerprint(bar_vae.BarVAE(VAE_CONFIG, rngs=nnx.Rngs(1)))
    assert other != fingerprint
    with pytest.raises(ValueError, match="tied to one VAE"):
        bars.load_bar_embeddings(path, other)


def test_bar_loader_is_seeded_complete_and_resumable(songs):
    source = [song.to_features() for song in songs]
    total_bars = sum(song.n_bars for song in songs)
    make = lambda seed, epochs=None: bars.make_bar_loader(source, batch_size=8, seed=seed,
                                                          max_bar_tokens=MAX_BAR_TOKENS, num_epochs=epochs)
    first, same = make(0), make(0)
    batches = [next(first) for _ in range(3)]
    for batch in batches:
        np.testing.assert_array_equal(batch["pitch"], next(same)["pitch"])
        assert batch["type"].shape == (8, MAX_BAR_TOKENS) and batch["type"].dtype == np.int32
    assert not np.array_equal(batches[0]["pitch"], next(make(1))["pitch"])
    state = first.get_state()
    expected = next(first)
    resumed = make(0)
    resumed.set_state(state)
    np.testing.assert_array_equal(next(resumed)["pitch"], expected["pitch"])
    # One epoch yields real bars, all but the dropped remainder.
    all_rows = {tuple(np.stack([bars.bar_tokens(s, MAX_BAR_TOKENS)[f][b] for f in TOKEN_FIELDS]).ravel())
                for s in songs for b in range(s.n_bars)}
    seen = [tuple(np.stack([batch[f][i] for f in TOKEN_FIELDS]).ravel())
            for batch in make(0, epochs=1) for i in range(8)]
    assert len(seen) == total_bars // 8 * 8
    assert set(seen) <= all_rows


class _PosteriorMeanVAE(bar_vae.BarVAE):
    """The same VAE decoding from mu: no sampled noise, so a batch and its halves see the same z."""

    def __call__(self, tokens, key):
        del key
        mu_BxL, logvar_BxL = self.encode(tokens)
        return {**self.decode(tokens, mu_BxL), "mu": mu_BxL, "logvar": logvar_BxL}


def test_loss_shares_with_whole_batch_normalizers_add_up_to_the_whole_batch(songs):
    """Halves with 2 and 1 real bars (plus one empty bar): with the whole batch's normalizers, every
    value of ``vae_loss`` (loss, recon, kl, per-head nll and ce, beta) of the halves sums to the whole
    batch's, which is what makes gradient accumulation exact. Without them the naive mean of the two
    halves' losses differs."""
    model = _PosteriorMeanVAE(VAE_CONFIG, rngs=nnx.Rngs(0))
    whole = _batch(songs[0], 0)
    whole = {name: value.at[3].set(0) for name, value in whole.items()}  # bar 3: padding only
    halves = [{name: value[:2] for name, value in whole.items()}, {name: value[2:] for name, value in whole.items()}]
    key = jax.random.key(0)
    _, expected = bar_vae.vae_loss(model, whole, key, 0.1)
    normalizers = bar_vae.vae_normalizers(whole)
    assert int(normalizers["n_bars"]) == 3
    shares = [bar_vae.vae_loss(model, half, key, 0.1, normalizers)[1] for half in halves]
    for name, value in expected.items():
        np.testing.assert_allclose(float(shares[0][name] + shares[1][name]), float(value), rtol=1e-5, err_msg=name)
    naive = [float(bar_vae.vae_loss(model, half, key, 0.1)[0]) for half in halves]
    assert abs(sum(naive) / 2 - float(expected["loss"])) > 1e-3 * float(expected["loss"])
