"""The grain input pipeline: TFDS songs -> seeded examples -> bucketed batches (STYLE.md section 9).

Place in the data flow: [4] between the ``sfs_songs`` data source ([3]) and the train
step ([5]). ``make_loader`` shuffles songs, draws one example per song with grain's
per-element generator (``random_map``), and pads each batch to one of a few lengths
(``collate``) so jit compiles a bounded set of shapes. The iterator it returns is a
grain ``DatasetIterator``: ``get_state``/``set_state`` make training resume exactly
(STYLE.md section 4), and the same seed gives the same batches in the same order.

Batch keys (B = batch size; T, C, G = a target, context and bar bucket; E = the
bar-embedding width, 1 without a bar VAE):

- ``target_*`` (``examples.TARGET_KEYS``): int32 [B, T], zero padded (type PAD);
- ``context_*`` (``examples.CONTEXT_KEYS``): int32 [B, C], zero padded (slot PAD);
- ``bar_embedding`` float32 [B, G, E]; ``bar_known`` and ``bar_valid`` bool [B, G];
- scalars (``examples.SCALAR_KEYS``) [B], int32 except ``n_beats`` float32;
- ``truncated_*`` (``examples.FLAG_KEYS``): int32 [], how many examples of the
  batch were cut to fit; to be summed into the training log, not fed to the model.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from sfs_jax.data import examples as examples_lib
from sfs_jax.data.examples import ExampleConfig
from sfs_jax.data.process_rows import process_rows
from sfs_jax.music.song import Song

# Example construction is light numpy work; a few threads and a short buffer keep the
# accelerator fed without grain's defaults (16 threads, 500 batches) hogging the host.
DEFAULT_READ_THREADS = 4
DEFAULT_PREFETCH_BATCHES = 8


def pad_to_bucket(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket holding ``length``; an error if none does (examples are bounded)."""
    for bucket in buckets:
        if length <= bucket:
            return int(bucket)
    raise ValueError(f"length {length} exceeds the largest bucket {buckets[-1]}")


def _pad_stack(arrays: Sequence[np.ndarray], length: int) -> np.ndarray:
    """Stacks arrays along a new axis 0, zero-padding their axis 0 to ``length``."""
    first = arrays[0]
    out = np.zeros((len(arrays), length, *first.shape[1:]), first.dtype)
    for row, array in enumerate(arrays):
        if array.shape[1:] != first.shape[1:] or array.dtype != first.dtype:
            raise ValueError(f"examples disagree: {array.shape}/{array.dtype} vs {first.shape}/{first.dtype}")
        out[row, : len(array)] = array
    return out


def collate(examples: Sequence[Mapping[str, np.ndarray]],
            config: ExampleConfig | None = None) -> dict[str, np.ndarray]:
    """Pads a list of ``make_example`` outputs into one batch (keys: module docstring).

    Each group is padded to the smallest of its buckets fitting the batch's longest
    member: target keys to ``config.target_buckets``, context keys to
    ``config.context_buckets``, bar keys to ``config.bar_buckets``. Padding is zero
    everywhere (TokenType.PAD, ContextSlot.PAD, bar_known False); ``bar_valid`` marks
    real bars. Scalars are stacked; truncation flags are summed over the batch.
    """
    config = config or ExampleConfig()
    if not examples:
        raise ValueError("collate needs at least one example")
    groups = ((examples_lib.TARGET_KEYS, config.target_buckets),
              (examples_lib.CONTEXT_KEYS, config.context_buckets),
              (examples_lib.BAR_KEYS, config.bar_buckets))
    batch: dict[str, np.ndarray] = {}
    for keys, buckets in groups:
        length = pad_to_bucket(max(len(ex[keys[0]]) for ex in examples), buckets)
        for key in keys:
            batch[key] = _pad_stack([ex[key] for ex in examples], length)
    n_bars_B = np.array([len(ex["bar_known"]) for ex in examples])
    batch["bar_valid"] = np.arange(batch["bar_known"].shape[1])[None, :] < n_bars_B[:, None]
    for key in examples_lib.SCALAR_KEYS:
        batch[key] = np.stack([ex[key] for ex in examples])
    for key in examples_lib.FLAG_KEYS:
        batch[key] = np.asarray(sum(int(ex[key]) for ex in examples), np.int32)
    return batch


def batch_shape(batch: Mapping[str, np.ndarray]) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """The (key, shape) pairs of a batch: what decides whether jit recompiles."""
    return tuple(sorted((key, tuple(np.shape(value))) for key, value in batch.items()))


class BatchShapeLog:
    """Distinct batch shapes seen so far, to log the number of jit compilations."""

    def __init__(self) -> None:
        self._seen: set[tuple[tuple[str, tuple[int, ...]], ...]] = set()

    def record(self, batch: Mapping[str, np.ndarray]) -> bool:
        """Adds the batch's shape; True if it was new (the step will compile)."""
        shape = batch_shape(batch)
        new = shape not in self._seen
        self._seen.add(shape)
        return new

    def __len__(self) -> int:
        return len(self._seen)

    @property
    def shapes(self) -> frozenset[tuple[tuple[str, tuple[int, ...]], ...]]:
        return frozenset(self._seen)


@dataclasses.dataclass(frozen=True, eq=False)
class SongToExample:
    """grain ``random_map`` transform: TFDS feature dict + grain's generator -> example.

    A module-level class rather than a closure so ``mp_prefetch`` workers can pickle it.
    ``bar_embeddings`` maps song ids to [n_bars, E] frozen bar-VAE vectors.
    """

    config: ExampleConfig
    bar_embeddings: Mapping[str, np.ndarray] | None = None

    def __call__(self, features: Mapping[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
        song = Song.from_features(features)
        embeddings_GxE = None
        if self.bar_embeddings is not None:
            if song.song_id not in self.bar_embeddings:
                raise KeyError(f"no bar embeddings for song {song.song_id!r}")
            embeddings_GxE = self.bar_embeddings[song.song_id]
        return examples_lib.make_example(song, rng, self.config, embeddings_GxE)


def make_dataset(data_source: Any, *, batch_size: int, seed: int, example_config: ExampleConfig,
                 num_epochs: int | None = None, shuffle: bool = True,
                 bar_embeddings: Mapping[str, np.ndarray] | None = None,
                 read_options: grain.ReadOptions | None = None, process_index: int = 0,
                 process_count: int = 1) -> grain.IterDataset:
    """The batched ``IterDataset`` behind ``make_loader`` (same arguments).

    ``seed`` seeds both the shuffle and the per-example generators (grain derives one
    seed per transformation and folds in the element index and epoch), so batches
    depend on nothing but the arguments. Incomplete last batches are dropped so every
    batch has ``batch_size`` rows. With ``process_count`` > 1 this process gets its
    ``batch_size / process_count`` rows of each global batch (``process_rows``).
    """
    dataset = grain.MapDataset.source(data_source).seed(seed)
    if shuffle:
        dataset = dataset.shuffle()
    dataset = dataset.repeat(num_epochs)
    dataset = dataset.random_map(SongToExample(example_config, bar_embeddings))
    dataset = process_rows(dataset, batch_size, process_index, process_count)
    dataset = dataset.batch(batch_size // process_count, batch_fn=functools.partial(collate, config=example_config),
                            drop_remainder=True)
    read_options = read_options or grain.ReadOptions(num_threads=DEFAULT_READ_THREADS,
                                                     prefetch_buffer_size=DEFAULT_PREFETCH_BATCHES)
    return dataset.to_iter_dataset(read_options)


def make_loader(data_source: Any, *, batch_size: int, seed: int, example_config: ExampleConfig,
                num_epochs: int | None = None, shuffle: bool = True,
                bar_embeddings: Mapping[str, np.ndarray] | None = None, worker_count: int = 0,
                read_options: grain.ReadOptions | None = None, process_index: int = 0,
                process_count: int = 1) -> grain.DatasetIterator:
    """A checkpointable iterator of padded batches (keys: module docstring).

    ``data_source`` is a random-access source of ``sfs_songs`` feature dicts, e.g.
    ``tfds.builder_from_directory(folder).as_data_source()["train"]``. ``num_epochs``
    None repeats forever. ``worker_count`` > 0 builds examples in that many processes
    (``mp_prefetch``); the batches are the same either way, but the saved state's
    layout depends on it, so resume with the same ``worker_count``. grain's worker
    processes read absl flags: call this after ``app.run`` has parsed them. Save
    ``get_state()`` with the model and ``set_state`` it on a fresh loader to resume
    exactly.
    """
    dataset = make_dataset(data_source, batch_size=batch_size, seed=seed, example_config=example_config,
                           num_epochs=num_epochs, shuffle=shuffle, bar_embeddings=bar_embeddings,
                           read_options=read_options, process_index=process_index, process_count=process_count)
    if worker_count > 0:
        dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return iter(dataset)
