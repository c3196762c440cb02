"""Orbax checkpoints that make resume exact: model+optimizer state and the data iterator together.

Two managers under a workdir:
- ``checkpoints/``: periodic saves, the newest ``keep`` kept; resume reads the latest;
- ``best/``: the single best checkpoint by validation loss (what ``generate`` and
  ``evaluate`` load by default).
Each save holds ``state`` (the split (model, optimizer) state), ``data`` (the grain
iterator's state, so the batch order continues exactly) and ``meta`` (step,
config, metrics). Saves are atomic (orbax writes a temporary folder and renames),
so a run killed mid-save keeps its previous checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

CHECKPOINTS, BEST = "checkpoints", "best"


def _manager(folder: Path, keep: int, best: bool) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=False,
        best_fn=(lambda metrics: metrics["validation_loss"]) if best else None, best_mode="min",
        keep_checkpoints_without_metrics=not best)
    return ocp.CheckpointManager(folder.absolute(), options=options, item_names=("state", "data", "meta"))


class Checkpoints:
    """The periodic and best-by-validation managers of one workdir."""

    def __init__(self, workdir: str | Path, keep: int = 3) -> None:
        self.workdir = Path(workdir)
        self.latest = _manager(self.workdir / CHECKPOINTS, keep, best=False)
        self.best = _manager(self.workdir / BEST, 1, best=True)

    @staticmethod
    def _args(state: Any, data_state: dict, meta: dict) -> ocp.args.Composite:
        return ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
                                  meta=ocp.args.JsonSave(meta))

    def save(self, step: int, state: Any, data_state: dict, meta: dict) -> None:
        self.latest.save(step, args=self._args(state, data_state, meta), force=True)

    def save_best(self, step: int, state: Any, data_state: dict, meta: dict, validation_loss: float) -> bool:
        """Saves if this is the best validation loss so far; returns whether it did."""
        saved = self.best.save(step, args=self._args(state, data_state, meta),
                               metrics={"validation_loss": float(validation_loss)}, force=True)
        return bool(saved)

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def _chosen(self, best: bool, step: int | None = None) -> tuple[ocp.CheckpointManager, int]:
        """(manager, step): the given step, else the latest or the best one."""
        manager = self.best if best else self.latest
        step = step if step is not None else (manager.best_step() if best else manager.latest_step())
        if step is None:
            raise FileNotFoundError(f"no checkpoint under {manager.directory}")
        return manager, step

    def restore(self, abstract_state: Any, step: int | None = None, best: bool = False
                ) -> tuple[Any, dict, dict]:
        """(state, data iterator state, meta) of a step (default: latest, or the best one)."""
        manager, step = self._chosen(best, step)
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
            meta=ocp.args.JsonRestore()))
        return restored.state, restored.data, restored.meta

    def meta(self, best: bool = False) -> dict:
        """The ``meta`` item (config, step, metrics) of the latest (or best) checkpoint, without the state."""
        manager, step = self._chosen(best)
        return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def read_meta(workdir: str | Path, best: bool = True) -> dict:
    """The ``meta`` item (config, step, metrics) of a workdir's best (or latest) checkpoint."""
    checkpoints = Checkpoints(workdir)
    try:
        return checkpoints.meta(best)
    finally:
        checkpoints.close()
