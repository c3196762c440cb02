"""Generation [6]: one target window at a time (segment.py), with a KV cache in one jitted loop."""

from sfs_jax.sampling.segment import (
    HeadSampling,
    SamplerState,
    SamplingConfig,
    SegmentSampler,
    sample_window,
    sample_window_no_cache,
    tokens_and_lengths,
    window_notes,
)

__all__ = [
    "HeadSampling",
    "SamplerState",
    "SamplingConfig",
    "SegmentSampler",
    "sample_window",
    "sample_window_no_cache",
    "tokens_and_lengths",
    "window_notes",
]
