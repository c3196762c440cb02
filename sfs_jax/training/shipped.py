"""The trained model that ships with the project: written from a run, read back as a run.

Place in the data flow: [5]->[6]. A shipped model is a folder of parameters only (no
optimizer state, no fixed tables): ``sfs.npz`` and ``bar_vae.npz`` (float32, one array
per parameter path), ``sfs_config.json`` and ``bar_vae_config.json`` (the training
configs), and ``model_card.json`` (what it was trained on, for how long, how good it
is). ``export`` writes one from a training workdir and its bar VAE; ``materialize``
turns one back into an ordinary run (``restore.write_run``: SFS in DIR, its VAE in
DIR/bar_vae) under the user's cache, once per content digest, so every reader of runs
(``generate``, ``serve``, ``evaluate``, ``context_use``) loads it unchanged.

The fixed tables (position codes, rotary frequencies) are computed again from the
config, as a fresh model computes them, so the folder stays small and no state is
stored twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from sfs_jax.model import bar_vae
from sfs_jax.training.restore import VAE_SUBDIR, load_trained, make_model, write_run

SHIPPED_ROOT = Path(__file__).resolve().parent.parent / "pretrained"
DEFAULT_MODEL = "pop909_small"
CACHE_ENV = "SFS_JAX_SHIPPED_DIR"  # where materialized runs go (default ~/.cache/sfs_jax/shipped)
PARTS = ("sfs", "bar_vae")


class ShippedModelError(ValueError):
    """A shipped-model folder that is missing a file or does not fit its config."""


def shipped_dir(name: str = DEFAULT_MODEL) -> Path:
    """The folder of a model shipped in the repository."""
    return SHIPPED_ROOT / name


def _param_arrays(model: nnx.Module) -> dict[str, np.ndarray]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))
    return {jax.tree_util.keystr(path): np.asarray(leaf, np.float32) for path, leaf in leaves}


def export(workdir: str | Path, out: str | Path, card: dict[str, Any],
           data: dict[str, str] | None = None) -> dict[str, Any]:
    """Writes a shipped-model folder from an SFS training workdir (best checkpoint) and the VAE it names.

    ``card`` (what it was trained on, its validation numbers, attribution) goes into
    ``model_card.json`` beside the sizes. ``data`` replaces fields of the configs' data
    block: a run's ``dataset_dir`` is a path on the machine that trained it, so it is
    always cleared, and ``builder``/``manual_dir`` say how another machine builds the
    same songs. Refuses a non-empty ``out``.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; exporting would mix two models")
    model, config, meta = load_trained(workdir)
    if config.get("task") != "sfs":
        raise ValueError(f"{workdir} holds a {config.get('task')!r} run, not an SFS model")
    vae, vae_config, vae_meta = load_trained(config.vae_workdir)
    if bar_vae.vae_fingerprint(vae) != config.get("vae_fingerprint", ""):
        raise ValueError(f"the bar VAE in {config.vae_workdir} is not the one {workdir} was trained with")
    config.vae_workdir = VAE_SUBDIR  # read relative to the materialized run
    for part_config in (config, vae_config):
        part_config.data.update({"dataset_dir": "", **(data or {})})
    out.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for part, part_model, part_config in (("sfs", model, config), ("bar_vae", vae, vae_config)):
        arrays = _param_arrays(part_model)
        np.savez_compressed(out / f"{part}.npz", **arrays)
        (out / f"{part}_config.json").write_text(json.dumps(part_config.to_dict(), indent=1, sort_keys=True))
        sizes[part] = int(sum(a.size for a in arrays.values()))
    card = {**card, "parameters": sizes, "sfs_step": meta["step"], "bar_vae_step": vae_meta["step"],
            "sfs_validation": meta.get("validation", {}), "bar_vae_validation": vae_meta.get("validation", {})}
    (out / "model_card.json").write_text(json.dumps(card, indent=1, sort_keys=True))
    return card


def digest(folder: str | Path) -> str:
    """sha256 over the folder's parameter and config files: names a materialized copy."""
    folder = Path(folder)
    hasher = hashlib.sha256()
    for part in PARTS:
        for name in (f"{part}.npz", f"{part}_config.json"):
            path = folder / name
            if not path.is_file():
                raise ShippedModelError(f"{folder} has no {name}: not a shipped model (or an incomplete copy)")
            hasher.update(name.encode())
            hasher.update(path.read_bytes())
    return hasher.hexdigest()


def _load_part(folder: Path, part: str) -> tuple[nnx.Module, ml_collections.ConfigDict]:
    """One model of the folder: built from its config (fixed tables computed), parameters from the npz."""
    config = ml_collections.ConfigDict(json.loads((folder / f"{part}_config.json").read_text()))
    model = make_model(config, nnx.Rngs(params=0))
    state = nnx.state(model, nnx.Param)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
    try:
        with np.load(folder / f"{part}.npz") as stored:
            arrays = {key: stored[key] for key in stored.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:  # a truncated or foreign file
        raise ShippedModelError(f"{folder / (part + '.npz')} cannot be read: {err}") from err
    expected = {jax.tree_util.keystr(path): leaf.shape for path, leaf in leaves}
    missing = sorted(set(expected) - set(arrays))
    unexpected = sorted(set(arrays) - set(expected))
    misshaped = sorted(k for k in set(expected) & set(arrays) if arrays[k].shape != expected[k])
    if missing or unexpected or misshaped:
        raise ShippedModelError(f"{folder / (part + '.npz')} does not fit {part}_config.json: "
                                f"missing {missing[:3]}, unexpected {unexpected[:3]}, mis-shaped {misshaped[:3]}")
    restored = [arrays[jax.tree_util.keystr(path)].astype(np.asarray(leaf).dtype) for path, leaf in leaves]
    nnx.update(model, jax.tree_util.tree_unflatten(treedef, restored))
    return model, config


def cache_root() -> Path:
    """Where materialized runs go: ``$SFS_JAX_SHIPPED_DIR``, else ``~/.cache/sfs_jax/shipped`` (never the repo)."""
    return Path(os.environ.get(CACHE_ENV, "") or "~/.cache/sfs_jax/shipped").expanduser()


def materialize(folder: str | Path | None = None, root: str | Path | None = None) -> Path:
    """The run directory of a shipped model, written on first use (SFS in it, its VAE in ``bar_vae/``).

    The run is named by the content digest, so an updated model gets a new run and a
    copy is never half-written: it is built in a temporary folder and renamed into place.
    """
    folder = Path(folder) if folder is not None else shipped_dir()
    if not folder.is_dir():
        raise ShippedModelError(f"no shipped model at {folder}")
    content = digest(folder)
    run = Path(root or cache_root()) / f"{folder.name}-{content[:16]}"
    if (run / "shipped.json").is_file():
        return run
    run.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{run.name}.", dir=run.parent))
    try:
        sfs_model, sfs_config = _load_part(folder, "sfs")
        vae_model, vae_config = _load_part(folder, "bar_vae")
        if sfs_config.get("vae_fingerprint") and bar_vae.vae_fingerprint(vae_model) != sfs_config.vae_fingerprint:
            raise ShippedModelError(f"{folder}'s bar VAE is not the one its SFS model was trained with")
        card = model_card(folder) if (folder / "model_card.json").is_file() else {}
        source = {"shipped_from": str(folder.resolve())}
        # The meta carries the steps the models were trained for, so reports name the real step.
        write_run(staging / VAE_SUBDIR, vae_model, vae_config,
                  {**source, "step": card.get("bar_vae_step", 0), "validation": card.get("bar_vae_validation", {})})
        write_run(staging, sfs_model, sfs_config,
                  {**source, "step": card.get("sfs_step", 0), "validation": card.get("sfs_validation", {})})
        (staging / "shipped.json").write_text(json.dumps({"from": str(folder.resolve()), "digest": content}))
        try:
            staging.rename(run)
        except OSError:  # another process materialized it first
            if not (run / "shipped.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return run


def model_card(folder: str | Path | None = None) -> dict[str, Any]:
    """The folder's ``model_card.json``: what it was trained on, for how long, its validation numbers."""
    folder = Path(folder) if folder is not None else shipped_dir()
    return json.loads((folder / "model_card.json").read_text())
