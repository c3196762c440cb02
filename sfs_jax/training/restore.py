"""Load a trained model back from a workdir, for generation, evaluation and bar embeddings.

The checkpoint's ``meta`` holds the experiment config, so a workdir alone is enough
to rebuild the model; the abstract state comes from ``nnx.eval_shape`` so nothing
is initialized just to be overwritten.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx

from sfs_jax.model import bar_vae
from sfs_jax.model.initializers import Buffer
from sfs_jax.model.sfs import SFSModel
from sfs_jax.training.checkpoint import Checkpoints, read_meta
from sfs_jax.training.tasks import model_config_from, upgrade_saved_config
from sfs_jax.training.train import make_optimizer

# Where a run keeps the bar VAE it was trained with, when the VAE travels inside it (an imported or
# shipped model): its config names it relative to the run, and ``saved_config`` resolves it.
VAE_SUBDIR = "bar_vae"


def make_model(config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
    """The model a training config describes (SFS/Flat or the bar VAE)."""
    model_cfg = model_config_from(config)
    if config.task == "bar_vae":
        return bar_vae.make_bar_vae(model_cfg, rngs)
    return SFSModel(model_cfg, rngs=rngs)


def saved_config(workdir: str | Path, best: bool = True) -> ml_collections.ConfigDict:
    """The experiment config of a workdir's best (or latest) checkpoint, as today's code reads it.

    Every reader of a trained run (loading, the evaluation's up-front checks) goes
    through here, so an upgrade of old configs applies to all of them.
    """
    workdir = Path(workdir)
    config = upgrade_saved_config(ml_collections.ConfigDict(read_meta(workdir, best=best)["config"]), workdir)
    vae_dir = config.get("vae_workdir", "")
    if vae_dir and not Path(vae_dir).is_absolute() and (workdir / vae_dir).is_dir():
        # A VAE kept inside the run (an imported checkpoint's bar_vae/) travels with it.
        config.vae_workdir = str(workdir / vae_dir)
    return config


def load_trained(workdir: str | Path, best: bool = True, compute_dtype: str | None = None
                 ) -> tuple[nnx.Module, ml_collections.ConfigDict, dict[str, Any]]:
    """(model, config, meta) of a workdir's best (or latest) checkpoint."""
    workdir = Path(workdir)
    config = saved_config(workdir, best=best)
    if compute_dtype:
        config.model.compute_dtype = compute_dtype
    tx: optax.GradientTransformation = make_optimizer(config.train)[0]

    def fresh() -> tuple[nnx.Module, nnx.Optimizer]:
        model = make_model(config, nnx.Rngs(params=0))
        return model, nnx.Optimizer(model, tx, wrt=nnx.Param)

    graphdef, abstract_state = nnx.split(nnx.eval_shape(fresh))
    checkpoints = Checkpoints(workdir)
    try:
        try:
            state, _, meta = checkpoints.restore(_shapes(abstract_state), best=best)
            model, _ = nnx.merge(graphdef, state)
        except ValueError as err:
            if "inv_freq" not in str(err):  # only the missing tables of a run saved before they were state
                raise
            model, meta = _restore_without_buffers(checkpoints, fresh, best, workdir)
    finally:
        checkpoints.close()
    return model, config, meta


def _shapes(state: nnx.State) -> nnx.State:
    """Restore targets on this process's first device: with several processes (``jax.distributed``)
    orbax would otherwise place them on a global device that another process owns."""
    local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=local) if hasattr(x, "shape")
                        else x, state)


def _restore_without_buffers(checkpoints: Checkpoints, fresh: Any, best: bool,
                             workdir: Path) -> tuple[nnx.Module, dict[str, Any]]:
    """A run saved before the fixed tables were state: its variables, with the tables computed again.

    Those runs (this project's v1 design) had no tables but the rotary frequencies,
    which a model of the same config computes exactly as it did then, so the model is
    the one that was trained. Costs one real initialisation (logged).
    """
    logging.warning("%s was saved before position tables were checkpointed; computing them again", workdir)
    graphdef, buffers, rest = nnx.split(fresh(), Buffer, ...)
    restored, _, meta = checkpoints.restore(_shapes(rest), best=best)
    model, _ = nnx.merge(graphdef, buffers, restored)
    return model, meta


def write_run(workdir: str | Path, model: nnx.Module, config: ml_collections.ConfigDict, meta: dict) -> None:
    """Writes ``model`` as step 0 of a run, the inverse of ``load_trained`` (an imported checkpoint).

    The state is saved as training saves it (model with a fresh optimizer of
    ``config.train``), in both the periodic and the best manager, so every reader of
    trained runs loads it and ``experiments.train`` can fine-tune from it.
    """
    tx = make_optimizer(config.train)[0]
    state = nnx.state((model, nnx.Optimizer(model, tx, wrt=nnx.Param)))
    meta = {"task": config.task, "config": config.to_dict(), "step": 0, "train": {}, "validation": {}, **meta}
    checkpoints = Checkpoints(workdir)
    try:
        checkpoints.save(0, state, {}, meta)
        # No validation loss yet: the largest finite one, so any real validation of a fine-tune is better.
        checkpoints.save_best(0, state, {}, meta, validation_loss=float(np.finfo(np.float32).max))
    finally:
        checkpoints.close()
