"""Each process's rows of every global batch, and batches of one shape on every process.

Place in the data flow: [4], between the element stream and ``batch``. With several
processes (``jax.distributed``, one per host), every process reads only its own rows:
row ``r`` of global batch ``k`` is element ``k * B + r`` of the one global stream
(shuffled, repeated and turned into examples from ``seed`` alone, so an element's
content never depends on the process count), and process ``p`` of ``P`` holds rows
``p * B/P .. (p + 1) * B/P - 1``. Every element is read once per epoch by exactly one
process, and the global batches are the single-process ones row for row: losses of a
2-process run equal a 1-process run's, and a checkpoint of either resumes in the other
(the data iterator's saved position counts batches, the same number on every process).

A process's batch is padded to its own buckets; ``pad_to_shapes`` brings every
process's batch to the largest shape among them (the single-process batch's shape),
since the processes' local arrays must agree to form one global array.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grain
import numpy as np


class ProcessRows(grain.MapDataset):
    """The elements of ``parent`` that fall in process ``process_index``'s rows of batches of ``batch_size``."""

    def __init__(self, parent: grain.MapDataset, batch_size: int, process_index: int, process_count: int) -> None:
        super().__init__(parent)
        if process_count < 1 or not 0 <= process_index < process_count:
            raise ValueError(f"process {process_index} of {process_count} does not exist")
        if batch_size % process_count:
            raise ValueError(f"batch_size {batch_size} must divide by the {process_count} processes")
        self._global, self._local = batch_size, batch_size // process_count
        self._first = process_index * self._local

    def __len__(self) -> int:
        return (len(self._parent) // self._global) * self._local

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        batch, row = divmod(index, self._local)
        return self._parent[batch * self._global + self._first + row]

    def __str__(self) -> str:
        return f"ProcessRows(rows {self._first}..{self._first + self._local - 1} of {self._global})"


def process_rows(dataset: grain.MapDataset, batch_size: int, process_index: int = 0,
                 process_count: int = 1) -> grain.MapDataset:
    """``dataset`` restricted to a process's rows (itself for one process), ready for ``batch(batch_size / P)``."""
    return dataset if process_count == 1 else ProcessRows(dataset, batch_size, process_index, process_count)


def pad_to_shapes(batch: Mapping[str, np.ndarray], shapes: Mapping[str, Sequence[int]]) -> dict[str, np.ndarray]:
    """Zero-pads every array of a batch to ``shapes`` (batches pad with zeros: PAD tokens, unknown bars)."""
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        target = tuple(shapes.get(key, value.shape))
        if target != value.shape:
            if len(target) != value.ndim or any(t < s for t, s in zip(target, value.shape, strict=True)):
                raise ValueError(f"{key}: cannot pad shape {value.shape} to {target}")
            value = np.pad(value, [(0, t - s) for t, s in zip(target, value.shape, strict=True)])
        out[key] = value
    return out
