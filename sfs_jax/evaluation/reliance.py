"""How much a trained model relies on each context slot and on G: validation NLL with inputs hidden.

A model can be given a Seed or a Ref and still ignore it. This measures it directly:
the same validation batches are scored with chosen context slots removed from the
attention mask (their slot id set to PAD, so the target cannot see them, exactly as
if the slot were empty) or with every bar of the global view marked unknown. The
rise in bits per beat is what that input is worth to the model; zero means unused.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import jax
import numpy as np

from sfs_jax.music.contexts import ContextSlot
from sfs_jax.training import steps

Batch = dict[str, np.ndarray]
SLOT_NAMES = {"left": ContextSlot.LEFT, "right": ContextSlot.RIGHT, "seed": ContextSlot.SEED,
              "ref": ContextSlot.REF, "previous": ContextSlot.PREVIOUS}
GLOBAL_VIEW = "G"
DEFAULT_VARIANTS: tuple[tuple[str, ...], ...] = (
    (), ("left",), ("right",), ("seed",), ("ref",), ("seed", "ref"), ("left", "right", "seed", "ref"),
    (GLOBAL_VIEW,), ("left", "right", "seed", "ref", GLOBAL_VIEW))


@dataclass(frozen=True)
class RelianceRow:
    hidden: tuple[str, ...]
    loss: float
    bits_per_beat: float
    delta_bits_per_beat: float  # minus the nothing-hidden row's


def parse_variant(text: str) -> tuple[str, ...]:
    """``"seed+ref"`` -> ("seed", "ref"); ``"none"`` -> (); unknown names are an error naming the known ones."""
    names = () if text in ("", "none") else tuple(text.split("+"))
    known = (*SLOT_NAMES, GLOBAL_VIEW)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown input(s) {unknown} in {text!r}; known: {list(known)} joined with '+'")
    return names


def hide_inputs(batch: Batch, hidden: Sequence[str]) -> Batch:
    """The batch with the named context slots masked out and, for ``G``, every bar unknown."""
    out = dict(batch)
    slot_ids = [int(SLOT_NAMES[name]) for name in hidden if name != GLOBAL_VIEW]
    if slot_ids:
        out["context_slot"] = np.where(np.isin(batch["context_slot"], slot_ids), int(ContextSlot.PAD),
                                       batch["context_slot"]).astype(batch["context_slot"].dtype)
    if GLOBAL_VIEW in hidden:
        out["bar_known"] = np.zeros_like(batch["bar_known"])
    return out


def reliance(model, batches: Iterable[Batch], variants: Sequence[tuple[str, ...]] = DEFAULT_VARIANTS
             ) -> list[RelianceRow]:
    """Validation loss and bits per beat of ``model`` for each set of hidden inputs (first: nothing hidden).

    ``batches`` are model inputs (``train.model_inputs``); they are held in memory so
    every variant scores exactly the same tokens.
    """
    batches = list(batches)
    if not batches:
        raise ValueError("no validation batches to score")
    variants = [()] + [v for v in variants if v != ()]
    score = jax.jit(lambda batch: steps.sfs_loss(model, batch, jax.random.key(0), -1)[1])
    rows: list[RelianceRow] = []
    for hidden in variants:
        totals: dict[str, float] = {}
        for batch in batches:
            for name, value in jax.device_get(score(hide_inputs(batch, hidden))).items():
                totals[name] = totals.get(name, 0.0) + float(value)
        summary = steps.summarize(totals, len(batches))
        base = rows[0].bits_per_beat if rows else summary["bits_per_beat"]
        rows.append(RelianceRow(hidden, summary["loss"], summary["bits_per_beat"], summary["bits_per_beat"] - base))
    return rows


def slot_presence(batches: Iterable[Batch]) -> Mapping[str, float]:
    """Fraction of examples in which each slot holds at least one context token."""
    batches = list(batches)
    n_examples = sum(len(b["context_slot"]) for b in batches)
    return {name: sum(int(np.sum(np.any(b["context_slot"] == int(slot), axis=1))) for b in batches) / n_examples
            for name, slot in SLOT_NAMES.items()}


def reliance_markdown(rows: Sequence[RelianceRow], presence: Mapping[str, float] | None = None) -> str:
    lines = ["| hidden from the target | validation loss | bits per beat | change |", "|---|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {'+'.join(row.hidden) or 'nothing'} | {row.loss:.4f} | {row.bits_per_beat:.3f} | "
                     f"{row.delta_bits_per_beat:+.3f} |")
    if presence:
        lines.append("")
        lines.append("slot present in: " + ", ".join(f"{k} {v:.0%}" for k, v in presence.items()))
    return "\n".join(lines)
