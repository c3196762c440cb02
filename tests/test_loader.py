"""The grain pipeline on a real tiny TFDS build: buckets, determinism, exact resume, rows per process."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sfs_jax.data import examples as E
from sfs_jax.data import loader as L
from sfs_jax.data.process_rows import pad_to_shapes, process_rows
from sfs_jax.music.song import Song

CONFIG = E.ExampleConfig()
BATCH = 4


@pytest.fixture(scope="module")
def train_source(tiny_synthetic_dataset: Path) -> Any:
    import tensorflow_datasets as tfds

    return tfds.builder_from_directory(str(tiny_synthetic_dataset)).as_data_source()["train"]


def take(iterator: Any, n: int) -> list[dict[str, np.ndarray]]:
    return list(itertools.islice(iterator, n))


def same_batches(a: list[dict[str, np.ndarray]], b: list[dict[str, np.ndarray]]) -> bool:
    return len(a) == len(b) and all(x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
                                    for x, y in zip(a, b, strict=True))


def test_pad_to_bucket() -> None:
    assert L.pad_to_bucket(0, (4, 8)) == 4
    assert L.pad_to_bucket(4, (4, 8)) == 4
    assert L.pad_to_bucket(5, (4, 8)) == 8
    with pytest.raises(ValueError, match="largest bucket"):
        L.pad_to_bucket(9, (4, 8))


def test_collate_pads_to_buckets_with_zeros(train_source: Any) -> None:
    songs = [Song.from_features(train_source[i]) for i in range(3)]
    examples = [E.make_example(song, np.random.default_rng(i), CONFIG) for i, song in enumerate(songs)]
    examples[1] = {**examples[1], "truncated_context": np.int32(1), "truncated_target": np.int32(1)}
    batch = L.collate(examples, CONFIG)
    expected_keys = {*E.TARGET_KEYS, *E.CONTEXT_KEYS, *E.BAR_KEYS, *E.SCALAR_KEYS, *E.FLAG_KEYS, "bar_valid"}
    assert set(batch) == expected_keys
    t = L.pad_to_bucket(max(len(ex["target_type"]) for ex in examples), CONFIG.target_buckets)
    c = L.pad_to_bucket(max(len(ex["context_pitch"]) for ex in examples), CONFIG.context_buckets)
    g = L.pad_to_bucket(max(len(ex["bar_known"]) for ex in examples), CONFIG.bar_buckets)
    for i, ex in enumerate(examples):
        n_t, n_c, n_g = len(ex["target_type"]), len(ex["context_pitch"]), len(ex["bar_known"])
        for key in E.TARGET_KEYS:
            assert batch[key].shape == (3, t) and batch[key].dtype == np.int32
            np.testing.assert_array_equal(batch[key][i, :n_t], ex[key])
            assert not batch[key][i, n_t:].any()
        for key in E.CONTEXT_KEYS:
            assert batch[key].shape == (3, c) and batch[key].dtype == np.int32
            np.testing.assert_array_equal(batch[key][i, :n_c], ex[key])
            assert not batch[key][i, n_c:].any()
        assert batch["bar_embedding"].shape == (3, g, 1) and batch["bar_embedding"].dtype == np.float32
        assert batch["bar_valid"][i].tolist() == [True] * n_g + [False] * (g - n_g)
        np.testing.assert_array_equal(batch["bar_known"][i, :n_g], ex["bar_known"])
        assert not batch["bar_known"][i, n_g:].any()
        for key in E.SCALAR_KEYS:
            assert batch[key].shape == (3,) and batch[key][i] == ex[key]
    assert batch["n_beats"].dtype == np.float32
    assert int(batch["truncated_context"]) == 1 and int(batch["truncated_target"]) == 1
    assert batch["truncated_bars"].shape == ()


def test_same_seed_same_batches_different_seed_different(train_source: Any) -> None:
    make = lambda seed: L.make_loader(train_source, batch_size=BATCH, seed=seed, example_config=CONFIG)
    first, again, other = take(make(0), 3), take(make(0), 3), take(make(1), 3)
    assert same_batches(first, again)
    assert not same_batches(first, other)


def test_batch_shapes_come_from_the_buckets(train_source: Any) -> None:
    iterator = L.make_loader(train_source, batch_size=BATCH, seed=0, example_config=CONFIG)
    log = L.BatchShapeLog()
    for batch in take(iterator, 12):
        log.record(batch)
        assert batch["target_type"].shape[1] in CONFIG.target_buckets
        assert batch["context_pitch"].shape[1] in CONFIG.context_buckets
        assert batch["bar_known"].shape[1] in CONFIG.bar_buckets
        assert all(v.shape[0] == BATCH for k, v in batch.items() if k not in E.FLAG_KEYS)
    assert 1 <= len(log) <= len(CONFIG.target_buckets) * len(CONFIG.context_buckets) * len(CONFIG.bar_buckets)
    assert not log.record(batch)  # seen already


def test_resume_from_state_gives_the_same_batches(train_source: Any) -> None:
    make = lambda: L.make_loader(train_source, batch_size=BATCH, seed=5, example_config=CONFIG)
    iterator = make()
    take(iterator, 2)
    state = iterator.get_state()
    expected = take(iterator, 2)
    resumed = make()
    resumed.set_state(state)
    assert same_batches(take(resumed, 2), expected)


def test_one_epoch_without_shuffle_reads_every_song_once(train_source: Any) -> None:
    iterator = L.make_loader(train_source, batch_size=BATCH, seed=0, example_config=CONFIG,
                             num_epochs=1, shuffle=False)
    batches = list(iterator)
    assert len(batches) == len(train_source) // BATCH  # the incomplete last batch is dropped
    n_bars = np.concatenate([b["n_bars"] for b in batches])
    expected = [int(train_source[i]["n_bars"]) for i in range(len(batches) * BATCH)]
    assert n_bars.tolist() == expected


def test_bar_embeddings_reach_the_batch_for_known_bars_only(train_source: Any) -> None:
    rng = np.random.default_rng(0)
    songs = [Song.from_features(train_source[i]) for i in range(len(train_source))]
    embeddings = {s.song_id: rng.normal(size=(s.n_bars, 3)).astype(np.float32) + 10 for s in songs}
    iterator = L.make_loader(train_source, batch_size=BATCH, seed=0, example_config=CONFIG,
                             bar_embeddings=embeddings)
    for batch in take(iterator, 3):
        assert batch["bar_embedding"].shape[2] == 3
        nonzero = np.abs(batch["bar_embedding"]).min(axis=2) > 0
        np.testing.assert_array_equal(nonzero, batch["bar_known"])


@pytest.mark.parametrize("processes", [2, 4])
def test_processes_read_their_rows_of_the_one_process_batches(train_source: Any, processes: int) -> None:
    """Each of P processes gets rows p*B/P.. of every global batch: stacked (after padding to the largest
    shape, as ``shard_batch`` does) they are the single-process batches, and over one epoch every song
    is read once, by one process."""
    global_batch = 8
    single = take(L.make_loader(train_source, batch_size=global_batch, seed=3, example_config=CONFIG), 3)
    per_process = [take(L.make_loader(train_source, batch_size=global_batch, seed=3, example_config=CONFIG,
                                      process_index=p, process_count=processes), 3) for p in range(processes)]
    arrays = lambda batch: {key: value for key, value in batch.items() if np.ndim(value) >= 1}  # what is sharded
    for k, whole in enumerate(single):
        expected, parts = arrays(whole), [arrays(batches[k]) for batches in per_process]
        assert all(len(part["n_bars"]) == global_batch // processes for part in parts)
        largest = {key: np.max([np.shape(part[key]) for part in parts], axis=0) for key in expected}
        stacked = {key: np.concatenate([pad_to_shapes(part, largest)[key] for part in parts]) for key in expected}
        assert same_batches([stacked], [expected])
    epoch = [np.concatenate([b["n_bars"] for b in L.make_loader(
        train_source, batch_size=global_batch, seed=0, example_config=CONFIG, num_epochs=1, shuffle=False,
        process_index=p, process_count=processes)]) for p in range(processes)]
    whole_epoch = [b["n_bars"] for b in L.make_loader(train_source, batch_size=global_batch, seed=0,
                                                      example_config=CONFIG, num_epochs=1, shuffle=False)]
    assert sum(len(rows) for rows in epoch) == len(train_source) // global_batch * global_batch
    interleaved = [rows[k * global_batch // processes:(k + 1) * global_batch // processes]
                   for k in range(len(whole_epoch)) for rows in epoch]
    assert np.concatenate(interleaved).tolist() == np.concatenate(whole_epoch).tolist()


def test_process_rows_refuses_impossible_splits() -> None:
    import grain

    with pytest.raises(ValueError, match="batch_size 6 must divide by the 4 processes"):
        process_rows(grain.MapDataset.range(24), 6, 0, 4)
    with pytest.raises(ValueError, match="process 2 of 2 does not exist"):
        process_rows(grain.MapDataset.range(24), 6, 2, 2)
    rows = process_rows(grain.MapDataset.range(20), 6, 1, 2)
    assert len(rows) == 9 and [rows[i] for i in range(6)] == [3, 4, 5, 9, 10, 11]


def test_pad_to_shapes_pads_with_zeros_and_refuses_to_crop() -> None:
    padded = pad_to_shapes({"tokens": np.ones((2, 3), np.int32)}, {"tokens": (2, 5)})
    np.testing.assert_array_equal(padded["tokens"], [[1, 1, 1, 0, 0]] * 2)
    with pytest.raises(ValueError, match=r"tokens: cannot pad shape \(2, 3\) to \(2, 2\)"):
        pad_to_shapes({"tokens": np.ones((2, 3))}, {"tokens": (2, 2)})
