"""The paper's Flat baseline: a GPT-like decoder over an 8-bar window, no structure or seed inputs.

SFS.md section 5 compares SFS with a GPT-like model that sees only the previous
bars of the same window. Here it is the SFS model with cross-attention, the
global view and segment positions switched off, so any difference in results
comes from those parts and not from two code bases. What makes it GPT-like is the
data, not the network: ``model=flat`` trains on song-scope windows
(``ExampleConfig.window_scope="song"``, anywhere in the song, across segment
boundaries) and composes left to right, each window reaching back over earlier
segments (``sampling.composer.window_steps``), so the bars after a seed hear it as a
prompt, as a GPT's would. ``window_scope="segment"`` gives the
same decoder on SFS's own windows, which starts every segment from an empty window.
"""

from __future__ import annotations

import dataclasses

from sfs_jax.model.config import ModelConfig


def flat_config(config: ModelConfig) -> ModelConfig:
    """The same sizes with every structure input removed."""
    return dataclasses.replace(config, context_slots=(), use_cross_attention=False,
                               use_global_view=False, use_segment_positions=False, n_encoder_layers=0,
                               n_global_layers=0)
