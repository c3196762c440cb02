"""Our forward against the authors' stored numbers, output by output (``../shared/reference``).

A case folder holds ``weights.safetensors`` (their state_dict), ``inputs.npz`` (one
collated batch and VAE bars), ``outputs.npz`` (their eval forward) and optionally
``case.json``. ``compare_case`` builds our model from the weights alone (sizes read
from the shapes, ``weights.infer_config``), runs the batch and reports the largest
difference per output at the positions the reference README says are defined, next
to the tolerance: 1e-5 in float32, 3e-6 in float64 with the stored buffers (the
reference's own float32-vs-float64 spread is 1.2e-6), losses to relative 1e-6.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from sfs_jax.model import token_layout as layout_lib
from sfs_jax.reference import batch as batch_lib
from sfs_jax.reference import weights as weights_lib
from sfs_jax.training import steps

FEATURE_TOLERANCE = {"float32": 1e-5, "float64": 3e-6}
LOSS_RELATIVE_TOLERANCE = 1e-6
HEAD_NAMES = {"type": "token_type", "pitch": "pitch", "velocity": "velocity", "duration": "duration"}


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One output: its largest difference (absolute, or relative for losses) and the bound it must meet."""

    name: str
    difference: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.difference)) and self.difference <= self.tolerance


@contextlib.contextmanager
def precision(x64: bool) -> Iterator[str]:
    """float64 everywhere (jax_enable_x64) for the tight check, else float32; yields the dtype name."""
    if not x64:
        yield "float32"
        return
    with jax.enable_x64(True):
        yield "float64"


def load_case(case_dir: str | Path) -> tuple[dict, dict, dict, dict | None]:
    """(weights, inputs, outputs, case.json or None) of a golden case folder; names what is missing."""
    case_dir = Path(case_dir)
    needed = ("weights.safetensors", "inputs.npz", "outputs.npz")
    absent = [name for name in needed if not (case_dir / name).is_file()]
    if absent:
        raise FileNotFoundError(f"{case_dir} is not a reference case: missing {', '.join(absent)}")
    weights = weights_lib.read_checkpoint(case_dir / "weights.safetensors")
    with np.load(case_dir / "inputs.npz") as data:
        inputs = {k: data[k] for k in data.files}
    with np.load(case_dir / "outputs.npz") as data:
        outputs = {k: data[k] for k in data.files}
    case_file = case_dir / "case.json"
    case = json.loads(case_file.read_text()) if case_file.is_file() else None
    return weights, inputs, outputs, case


def _max_diff(ours: np.ndarray, theirs: np.ndarray, where: np.ndarray | None = None) -> float:
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    if ours.shape != theirs.shape:
        return float("inf")
    diff = np.abs(ours - theirs)
    if where is not None:
        diff = diff[np.broadcast_to(where.reshape(where.shape + (1,) * (diff.ndim - where.ndim)), diff.shape)]
    return float(diff.max()) if diff.size else 0.0


def compare_case(case_dir: str | Path, x64: bool = False) -> list[Comparison]:
    """Every stored output of a case against our forward (see the module docstring)."""
    weights, inputs, outputs, case = load_case(case_dir)
    with precision(x64) as dtype:
        config = weights_lib.infer_config({k: v.shape for k, v in weights.items()}, case, compute_dtype=dtype)
        sfs, vae = weights_lib.load_models(weights, config)
        batch = {k: jnp.asarray(v) for k, v in batch_lib.to_batch(inputs, np.dtype(dtype)).items()}
        ours = jax.tree.map(np.asarray, jax.jit(lambda b: sfs.features(b))(batch))
        labels = steps.head_labels(batch, config.token_layout)
        n_examples = steps.example_count(batch)
        total, metrics = steps.factorized_nll(jax.tree.map(jnp.asarray, ours["logits"]), labels,
                                              reduction="sum_per_example", n_examples=n_examples)
        losses = {head: float(metrics[f"{head}_nll_sum"]) / float(n_examples) for head in steps.HEADS}
        losses["total"] = float(total)
        vae_out = {group: jax.tree.map(np.asarray, vae.encode_features(
            {k: jnp.asarray(v) for k, v in group_tokens.items()}))
            for group, group_tokens in _vae_groups(inputs).items()}
        label_masks = {name: np.asarray(mask) for name, (_, mask) in labels.items()}
        inputs_valid = np.asarray(layout_lib.decoder_inputs(batch, config.token_layout)["type"] != 0)
        key_positions = np.asarray(sfs.decoder.window_frames(batch["context_song_frame"], batch))
    return _comparisons(ours, outputs, losses, vae_out, label_masks, inputs_valid, key_positions,
                        batch_n_bars=np.asarray(batch["n_bars"]), dtype=dtype)


def _vae_groups(inputs: dict) -> dict[str, dict[str, np.ndarray]]:
    groups = sorted({k.split(".")[1] for k in inputs if k.startswith("vae.bar")}, key=lambda g: int(g[3:]))
    out = {f"single.{g}": batch_lib.bar_tokens(inputs, f"vae.{g}") for g in groups}
    if "vae.batched.token_type" in inputs:
        out["batched"] = batch_lib.bar_tokens(inputs, "vae.batched")
    return out


def _comparisons(ours: dict, outputs: dict, losses: dict, vae_out: dict, label_masks: dict,
                 inputs_valid: np.ndarray, key_positions: np.ndarray, batch_n_bars: np.ndarray,
                 dtype: str) -> list[Comparison]:
    tolerance = FEATURE_TOLERANCE[dtype]
    valid = outputs["mask.decoder_input_valid"]
    n = valid.shape[1]  # their decoder positions: the target minus its last token
    result = []
    exact = lambda name, equal: result.append(Comparison(name, 0.0 if equal else float("inf"), 0.0))
    exact("mask.decoder_input_valid", np.array_equal(inputs_valid[:, :n], valid))
    exact("mask.type_loss", np.array_equal(label_masks["type"][:, :n], outputs["mask.type_loss"]))
    exact("mask.note_loss", np.array_equal(label_masks["pitch"][:, :n], outputs["mask.note_loss"]))
    for head, theirs in HEAD_NAMES.items():
        result.append(Comparison(f"logits.{theirs}", _max_diff(ours["logits"][head][:, :n],
                                                                outputs[f"logits.{theirs}"], valid), tolerance))
    for theirs, mine in (("decoder.feature", "decoder"), ("global.feature_per_token", "global_per_token"),
                         ("debug.decoder.transformer_input", "decoder_input")):
        if theirs in outputs:
            result.append(Comparison(theirs, _max_diff(ours[mine][:, :n], outputs[theirs], valid), tolerance))
    context_mask = outputs["context.mask"]
    result.append(Comparison("context.feature", _max_diff(ours["context"], outputs["context.feature"], context_mask),
                             tolerance))
    exact("context.pos", np.array_equal(key_positions[context_mask], outputs["context.pos"][context_mask]))
    per_bar = outputs["global.feature_per_bar"]
    bar_valid = np.arange(per_bar.shape[1])[None, :] < batch_n_bars[:, None]
    result.append(Comparison("global.feature_per_bar", _max_diff(ours["global_per_bar"], per_bar, bar_valid),
                             tolerance))
    for head, theirs in (*HEAD_NAMES.items(), ("total", "total")):
        result.append(Comparison(f"loss.{theirs}", _relative(losses[head], outputs[f"loss.{theirs}"]),
                                 LOSS_RELATIVE_TOLERANCE))
    for variant in ("single", "batched"):
        if f"vae.{variant}.mu" not in outputs:
            continue
        groups = [g for g in vae_out if g.split(".")[0] == variant]
        for index, name in enumerate(("pooled", "mu", "logvar")):
            mine = np.concatenate([vae_out[g][index] for g in groups])
            result.append(Comparison(f"vae.{variant}.{name}", _max_diff(mine, outputs[f"vae.{variant}.{name}"]),
                                     tolerance))
    return result


def _relative(ours: float, theirs: np.ndarray) -> float:
    theirs = float(theirs)
    return abs(ours - theirs) / max(abs(theirs), 1e-30)
