"""sfs_jax/evaluation/reliance.py: scoring a model with context slots or G hidden from the target."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from sfs_jax.evaluation import reliance
from sfs_jax.model.sfs import SFSModel
from sfs_jax.music.contexts import ContextSlot
from sfs_jax.training import tasks
from sfs_jax.training.train import model_inputs
from tests.test_train import random_bar_embeddings, tiny_sfs_config


@pytest.fixture(scope="module")
def model_and_batches(tiny_synthetic_dataset: Path):
    """A random-init tiny SFS model (it depends on every input) and two validation batches, one jit shape."""
    config = tiny_sfs_config(eval_batches=2)
    config.model.zero_init_paths = ()  # contexts and G reach the logits at init
    task = tasks.sfs_task(config, tiny_synthetic_dataset, random_bar_embeddings(tiny_synthetic_dataset))
    model = SFSModel(tasks.model_config_from(config), rngs=nnx.Rngs(params=0))
    return model, [model_inputs(batch) for batch in task.make_eval_iterator()]


def test_hide_inputs_masks_only_what_is_named(model_and_batches) -> None:
    _, batches = model_and_batches
    batch = batches[0]
    before = {k: v.copy() for k, v in batch.items()}
    hidden = reliance.hide_inputs(batch, ("seed", "G"))
    slots = batch["context_slot"]
    assert np.any(slots == int(ContextSlot.SEED))
    assert not np.any(hidden["context_slot"] == int(ContextSlot.SEED))
    keep = slots != int(ContextSlot.SEED)
    np.testing.assert_array_equal(hidden["context_slot"][keep], slots[keep])
    assert not hidden["bar_known"].any() and batch["bar_known"].any()
    for name in batch:  # the input batch is untouched
        np.testing.assert_array_equal(batch[name], before[name])


def test_reliance_rows(model_and_batches) -> None:
    """Nothing hidden is the baseline (change 0); a slot no example has changes nothing, bit for bit;
    hiding every context and G changes the (random) model's likelihood."""
    model, batches = model_and_batches
    rows = reliance.reliance(model, batches, [("previous",), ("left", "right", "seed", "ref", "G")])
    assert [r.hidden for r in rows] == [(), ("previous",), ("left", "right", "seed", "ref", "G")]
    assert rows[0].delta_bits_per_beat == 0.0
    assert rows[1].bits_per_beat == rows[0].bits_per_beat
    assert abs(rows[2].delta_bits_per_beat) > 1e-3
    presence = reliance.slot_presence(batches)
    assert presence["previous"] == 0.0 and 0.0 < presence["seed"] <= 1.0
    table = reliance.reliance_markdown(rows, presence)
    assert "| nothing |" in table and "left+right+seed+ref+G" in table


def test_parse_variant() -> None:
    assert reliance.parse_variant("none") == ()
    assert reliance.parse_variant("seed+ref") == ("seed", "ref")
    with pytest.raises(ValueError, match="unknown input"):
        reliance.parse_variant("seed+chorus")
