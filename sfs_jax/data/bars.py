"""Bars as the bar VAE and the global view G see them (SFS.md sections 1 and 3).

Place in the data flow: [4] for the frozen bar VAE (``sfs_jax.model.bar_vae``).

- ``bar_tokens``: every bar of a song in the target form of SFS.md section 2 cut to
  one bar (``encode_target(notes_of_bar, 32)``: 32 FRAME tokens, the bar's notes,
  END), zero (PAD) padded to ``max_bar_tokens``. One ``encode_target`` call per song,
  then a scatter, so it runs over all bars of ~900 songs in seconds.
- ``make_bar_loader``: seeded grain batches of random bars for VAE training. All
  ``(song, bar)`` pairs are indexed once (only ``n_bars`` is read per song), shuffled
  per epoch, and each batch element re-reads its song and tokenizes its one bar, so
  every bar of every song is seen once per epoch (the original VAE saw only the first
  eighth of each song, SFS.md section 6).
- ``compute_bar_embeddings``: the frozen mean ``mu`` of every bar of every song, in
  fixed-size batches (jit compiles once), for G's inputs.
- ``save_bar_embeddings`` / ``load_bar_embeddings``: one .npz tagged with the VAE's
  fingerprint, since embeddings are only meaningful with the VAE that made them.

A bar with more than ``max_bar_tokens`` tokens keeps its first ``max_bar_tokens - 1``
tokens and then END (so every row still ends with END and decodes to a prefix of
the bar); such bars are counted in ``truncated``.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grain
import numpy as np

from sfs_jax.data.process_rows import process_rows
from sfs_jax.music.notes import FRAMES_PER_BAR, notes_in_bars
from sfs_jax.music.song import Song
from sfs_jax.music.tokenizer import FRAME, TOKEN_FIELDS, TYPE, TokenType, encode_target

EMBEDDINGS_FORMAT_VERSION = 1
# Bar tokenization is light numpy work: a few threads keep a VAE step fed.
DEFAULT_READ_THREADS = 4
DEFAULT_PREFETCH_BATCHES = 8


def _tokenize_bars(notes_Nx4: np.ndarray, n_bars: int, max_bar_tokens: int) -> tuple[np.ndarray, int]:
    """Token fields [5, n_bars, max_bar_tokens] (``TOKEN_FIELDS`` order) of bars [0, n_bars), and truncations.

    Encodes the whole span once: in the song's target form the tokens of bar b run
    from the FRAME of frame 32 b up to the next bar's FRAME, and duration codes are
    bar-local (SFS.md section 2), so each such run with frames taken mod 32 and an END
    appended is exactly ``encode_target(notes_in_bars(notes, b, b + 1), 32)``.
    """
    if max_bar_tokens < FRAMES_PER_BAR + 1:
        raise ValueError(f"max_bar_tokens {max_bar_tokens} cannot hold an empty bar "
                         f"({FRAMES_PER_BAR} FRAME tokens + END)")
    out_5xBxT = np.zeros((len(TOKEN_FIELDS), n_bars, max_bar_tokens), np.int32)
    if n_bars == 0:
        return out_5xBxT, 0
    tokens_Tx5, _ = encode_target(notes_Nx4, n_bars * FRAMES_PER_BAR)
    body_Tx5 = tokens_Tx5[:-1]  # the span's END is replaced by one END per bar
    song_frame_T = body_Tx5[:, FRAME]  # FRAME and NOTE rows carry their song frame
    bar_T = song_frame_T // FRAMES_PER_BAR
    is_bar_line_T = (body_Tx5[:, TYPE] == TokenType.FRAME) & (song_frame_T % FRAMES_PER_BAR == 0)
    bar_start_G = np.flatnonzero(is_bar_line_T)
    bar_length_G = np.diff(np.append(bar_start_G, len(body_Tx5)))  # tokens before END
    index_in_bar_T = np.arange(len(body_Tx5)) - bar_start_G[bar_T]
    keep_T = index_in_bar_T < max_bar_tokens - 1
    rows_5xT = body_Tx5.T.copy()
    rows_5xT[FRAME] %= FRAMES_PER_BAR
    out_5xBxT[:, bar_T[keep_T], index_in_bar_T[keep_T]] = rows_5xT[:, keep_T]
    end_G = np.minimum(bar_length_G, max_bar_tokens - 1)
    out_5xBxT[TYPE, np.arange(n_bars), end_G] = TokenType.END
    out_5xBxT[FRAME, np.arange(n_bars), end_G] = FRAMES_PER_BAR
    return out_5xBxT, int(np.sum(bar_length_G + 1 > max_bar_tokens))


def _as_fields(out_5xBxT: np.ndarray, truncated: int) -> dict[str, np.ndarray]:
    fields = {name: out_5xBxT[i] for i, name in enumerate(TOKEN_FIELDS)}
    fields["truncated"] = np.asarray(truncated, np.int32)
    return fields


def bar_tokens(song: Song, max_bar_tokens: int) -> dict[str, np.ndarray]:
    """Every bar of ``song`` as int32 [n_bars, max_bar_tokens] arrays per ``TOKEN_FIELDS`` name.

    ``truncated`` (int32 scalar) counts the bars cut to fit (module docstring).
    """
    return _as_fields(*_tokenize_bars(np.asarray(song.notes_Nx4), song.n_bars, max_bar_tokens))


def as_song(element: Song | Mapping[str, Any]) -> Song:
    """A data-source element as a ``Song``: TFDS ``sfs_songs`` feature dicts and Songs both work."""
    return element if isinstance(element, Song) else Song.from_features(element)


def _n_bars(element: Song | Mapping[str, Any]) -> int:
    return element.n_bars if isinstance(element, Song) else int(element["n_bars"])


@dataclasses.dataclass(frozen=True, eq=False)
class BarAt:
    """grain ``map`` transform: flat bar index -> that bar's tokens ([max_bar_tokens] per field).

    Module level (not a closure) so it pickles into grain workers; ``eq=False``
    because the index arrays make dataclass equality ambiguous.
    """

    data_source: Any
    song_index_N: np.ndarray
    bar_N: np.ndarray
    max_bar_tokens: int

    def __call__(self, index: int) -> dict[str, np.ndarray]:
        song = as_song(self.data_source[int(self.song_index_N[index])])
        bar = int(self.bar_N[index])
        out_5x1xT, truncated = _tokenize_bars(notes_in_bars(np.asarray(song.notes_Nx4), bar, bar + 1), 1,
                                              self.max_bar_tokens)
        return _as_fields(out_5x1xT[:, 0], truncated)


def collate_bars(elements: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stacks ``BarAt`` outputs into [B, max_bar_tokens] fields; ``truncated`` is summed over the batch."""
    batch = {name: np.stack([element[name] for element in elements]) for name in TOKEN_FIELDS}
    batch["truncated"] = np.asarray(sum(int(element["truncated"]) for element in elements), np.int32)
    return batch


def bar_index(data_source: Any) -> tuple[np.ndarray, np.ndarray]:
    """(song_index_N, bar_N): every bar of every song of the source, in source order."""
    n_bars_S = np.array([_n_bars(data_source[i]) for i in range(len(data_source))], np.int64)
    song_index_N = np.repeat(np.arange(len(n_bars_S)), n_bars_S).astype(np.int32)
    first_row_S = np.cumsum(n_bars_S) - n_bars_S
    bar_N = (np.arange(len(song_index_N)) - np.repeat(first_row_S, n_bars_S)).astype(np.int32)
    return song_index_N, bar_N


def make_bar_loader(data_source: Any, *, batch_size: int, seed: int, max_bar_tokens: int,
                    num_epochs: int | None = None, read_options: grain.ReadOptions | None = None,
                    process_index: int = 0, process_count: int = 1) -> grain.DatasetIterator:
    """A checkpointable iterator of batches of random bars for VAE training.

    ``data_source``: random access to ``sfs_songs`` feature dicts (e.g. a TFDS data
    source) or to ``Song`` objects. Batches: ``TOKEN_FIELDS`` int32 [batch_size,
    max_bar_tokens] and ``truncated`` int32 [] (for the log, not the model). Bars are
    shuffled over the whole corpus, reshuffled every epoch, from ``seed`` alone;
    ``num_epochs`` None repeats forever; the incomplete last batch is dropped so every
    batch has one shape. Save ``get_state()`` and ``set_state`` it on a fresh loader to
    resume exactly (STYLE.md section 4).
    """
    song_index_N, bar_N = bar_index(data_source)
    if len(bar_N) == 0:
        raise ValueError("the data source holds no bars")
    dataset = (grain.MapDataset.range(len(bar_N)).seed(seed).shuffle().repeat(num_epochs)
               .map(BarAt(data_source, song_index_N, bar_N, max_bar_tokens)))
    # With several processes each reads its rows of every global batch (data/process_rows.py).
    dataset = process_rows(dataset, batch_size, process_index, process_count).batch(
        batch_size // process_count, batch_fn=collate_bars, drop_remainder=True)
    read_options = read_options or grain.ReadOptions(num_threads=DEFAULT_READ_THREADS,
                                                     prefetch_buffer_size=DEFAULT_PREFETCH_BATCHES)
    return iter(dataset.to_iter_dataset(read_options))


def compute_bar_embeddings(model_apply: Callable[[dict[str, np.ndarray]], np.ndarray], songs: Iterable[Song],
                           max_bar_tokens: int, batch_size: int) -> dict[str, np.ndarray]:
    """song_id -> float32 [n_bars, latent]: the frozen bar vectors of G (SFS.md section 1).

    ``model_apply`` maps ``TOKEN_FIELDS`` arrays [batch_size, max_bar_tokens] to
    [batch_size, latent] (``bar_vae.make_embed_fn``). Bars of consecutive songs share
    batches and every call has exactly ``batch_size`` rows (the last batch is padded
    by repeating a real bar, never with empty rows), so a jitted model compiles once
    and the result does not depend on ``batch_size``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    song_ids: list[str] = []
    seen: set[str] = set()
    n_bars: list[int] = []
    outputs: list[np.ndarray] = []
    pending: list[np.ndarray] = []  # token blocks [5, n, T] not yet run

    def run(block_5xBxT: np.ndarray) -> None:
        n_real = block_5xBxT.shape[1]
        padded = np.pad(block_5xBxT, ((0, 0), (0, batch_size - n_real), (0, 0)), mode="edge")
        out_BxL = np.asarray(model_apply({name: padded[i] for i, name in enumerate(TOKEN_FIELDS)}))
        if out_BxL.ndim != 2 or out_BxL.shape[0] != batch_size:
            raise ValueError(f"model_apply returned shape {out_BxL.shape}, expected ({batch_size}, latent)")
        outputs.append(out_BxL[:n_real].astype(np.float32))

    for song in songs:
        if song.song_id in seen:
            raise ValueError(f"song id {song.song_id!r} appears twice")
        seen.add(song.song_id)
        out_5xBxT, _ = _tokenize_bars(np.asarray(song.notes_Nx4), song.n_bars, max_bar_tokens)
        song_ids.append(song.song_id)
        n_bars.append(song.n_bars)
        pending.append(out_5xBxT)
        if sum(block.shape[1] for block in pending) >= batch_size:
            tokens_5xNxT = np.concatenate(pending, axis=1)
            n_full = tokens_5xNxT.shape[1] // batch_size * batch_size
            for start in range(0, n_full, batch_size):
                run(tokens_5xNxT[:, start:start + batch_size])
            pending = [tokens_5xNxT[:, n_full:]]
    remainder_5xNxT = np.concatenate(pending, axis=1) if pending else None
    if remainder_5xNxT is not None and remainder_5xNxT.shape[1]:
        run(remainder_5xNxT)
    if not outputs:
        return {song_id: np.zeros((0, 0), np.float32) for song_id in song_ids}
    all_NxL = np.concatenate(outputs)
    return dict(zip(song_ids, np.split(all_NxL, np.cumsum(n_bars)[:-1]), strict=True))


def save_bar_embeddings(path: str | os.PathLike, embeddings: Mapping[str, np.ndarray],
                        vae_fingerprint: str) -> None:
    """Writes all songs' bar embeddings and the VAE fingerprint to one .npz, atomically.

    The file is written next to ``path`` and renamed over it, so a crash never
    leaves a half-written file that a training run could pick up. Layout: song ids,
    bars per song, the concatenated float32 rows, the fingerprint, a format version.
    """
    path = Path(path)
    song_ids = list(embeddings)
    arrays = [np.asarray(embeddings[song_id], np.float32) for song_id in song_ids]
    widths = {array.shape[1] for array in arrays if array.ndim == 2}
    if any(array.ndim != 2 for array in arrays) or len(widths) > 1:
        raise ValueError(f"embeddings must all be [n_bars, latent] with one latent size, got widths {widths}")
    width = widths.pop() if widths else 0
    payload = {
        "format_version": np.asarray(EMBEDDINGS_FORMAT_VERSION, np.int32),
        "fingerprint": np.asarray(vae_fingerprint),
        "song_ids": np.asarray(song_ids, dtype=str),
        "n_bars": np.asarray([len(array) for array in arrays], np.int64),
        "embeddings": np.concatenate(arrays) if arrays else np.zeros((0, width), np.float32),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            np.savez(file, **payload)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def load_bar_embeddings(path: str | os.PathLike, expected_fingerprint: str) -> dict[str, np.ndarray]:
    """song_id -> float32 [n_bars, latent] from ``save_bar_embeddings``; refuses another VAE's vectors."""
    with np.load(Path(path), allow_pickle=False) as data:
        version = int(data["format_version"])
        if version != EMBEDDINGS_FORMAT_VERSION:
            raise ValueError(f"{path}: bar-embedding format {version}, this code reads "
                             f"{EMBEDDINGS_FORMAT_VERSION}")
        stored = str(data["fingerprint"])
        if stored != expected_fingerprint:
            raise ValueError(f"{path} holds bar embeddings of VAE {stored[:16]}, but the expected VAE is "
                             f"{expected_fingerprint[:16]}: embeddings are tied to one VAE checkpoint, "
                             "recompute them with compute_bar_embeddings")
        song_ids = [str(song_id) for song_id in data["song_ids"]]
        rows_NxL = data["embeddings"]
        splits = np.split(rows_NxL, np.cumsum(data["n_bars"])[:-1]) if song_ids else []
    return dict(zip(song_ids, splits, strict=True))
