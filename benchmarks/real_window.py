"""One real 8-bar window with its contexts, the input every generation benchmark decodes.

Why one shared window: the generation benchmark and the decoding-step profile
compare samplers on the same tokens and contexts; a synthetic song (nothing to
download) through ``make_example`` and ``collate`` gives a window with the real
token counts and context layout of the data pipeline.
"""

from __future__ import annotations

import numpy as np

from data_pipeline.synthetic import generate_song
from sfs_jax.data.examples import CONTEXT_KEYS, ExampleConfig, make_example
from sfs_jax.data.loader import collate
from sfs_jax.music.song import Song


def window_batch(window_bars: int, max_tokens: int, latent_dim: int) -> dict[str, np.ndarray]:
    """One real full-length window with contexts from the first synthetic song that has one."""
    config = ExampleConfig(window_bars=window_bars, context_bars=8, target_buckets=(max_tokens,))
    for index in range(100):
        synthetic = generate_song(0, index)
        song = Song(synthetic.song_id, synthetic.notes_Nx4, synthetic.n_bars, synthetic.tempo_bpm,
                    synthetic.segments, "synthetic")
        embeddings = np.random.default_rng(index).normal(size=(song.n_bars, latent_dim)).astype(np.float32)
        for seed in range(4):
            example = make_example(song, np.random.default_rng(seed), config, embeddings)
            if example["n_beats"] == window_bars * 4 and np.count_nonzero(example["context_slot"]) > 0:
                return collate([example], config)
    raise RuntimeError(f"no synthetic song has a {window_bars}-bar window with contexts")


def replicate(batch: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
    return {k: np.repeat(v, batch_size, axis=0) if np.ndim(v) else v for k, v in batch.items()}


def pad_contexts(batch: dict[str, np.ndarray], length: int) -> dict[str, np.ndarray]:
    """The batch with its context keys padded (or cut) to ``length``, as the composer pads them."""
    out = dict(batch)
    for key in CONTEXT_KEYS:
        width = length - batch[key].shape[1]
        out[key] = np.pad(batch[key], ((0, 0), (0, width))) if width >= 0 else batch[key][:, :length]
    return out
