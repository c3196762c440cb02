"""Frozen model configuration with the paper's sizes and small presets (SFS.md section 3).

Every ablation of the paper is a value here, not a fork of the model: which context
slots the decoder may see (``context_slots``), whether the global view G is on,
whether cross-attention exists at all (the Flat baseline), and whether segment
positional codes are used.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

CONTEXT_SLOT_NAMES = ("left", "right", "seed", "ref", "previous")
# The paths that carry structure into the decoder, which ``ModelConfig.zero_init_paths`` may start at zero.
STRUCTURE_PATHS = ("cross_attention", "global_view")


@dataclasses.dataclass(frozen=True)
class BarVAEConfig:
    """The bar VAE whose frozen encoder feeds G (paper: 5+5 layers, latent 256)."""

    d_model: int = 512
    n_heads: int = 8
    d_ff: int = 2048
    n_encoder_layers: int = 5
    n_decoder_layers: int = 5
    latent_dim: int = 256
    max_bar_tokens: int = 128  # FRAME tokens (32) + notes of one bar + END


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """SFS model hyper-parameters; presets in ``PRESETS``."""

    d_model: int = 512
    n_heads: int = 8
    d_ff: int = 2048
    n_encoder_layers: int = 4
    n_decoder_layers: int = 8
    n_global_layers: int = 3
    global_mlp_dim: int = 512
    # Ablations: what the target may see.
    context_slots: tuple[str, ...] = ("left", "right", "seed", "ref")
    use_cross_attention: bool = True
    use_global_view: bool = True
    use_segment_positions: bool = True
    # Positions: sinusoid periods and rotary base, in frames (bars for G).
    max_position_frames: int = 8192
    rope_base: float = 10_000.0
    # Rotary positions of cross-attention: "song" (SFS.md section 3: queries and keys by their song
    # frame) or "segment" (by their frame within their own segment, so a target bar and the same
    # bar of its Ref or Seed sit at relative offset 0 in every song).
    cross_attention_positions: str = "song"
    # Structure paths (``STRUCTURE_PATHS``) whose last projection starts at zero: every
    # cross-attention output projection ("cross_attention") and the last layer of G's condition
    # MLP ("global_view"). With both, an untrained SFS is a Flat-shaped decoder that ignores its
    # contexts and G (its own random weights, and its segment codes, still differ from Flat's),
    # and the contexts and G are learned in instead of entering as noise the decoder must first
    # learn to suppress (Flamingo's zero-init gates do the same).
    # SFS.md does not say how the original initialises them; () is plain random init.
    # Measured on POP909 (small, 1500 steps): validation bits per beat 65.59 with both, 67.06 with ().
    zero_init_paths: tuple[str, ...] = STRUCTURE_PATHS
    compute_dtype: str = "float32"  # "bfloat16" on accelerators; parameters stay float32
    attention_implementation: str = "auto"  # "auto" | "xla" | "cudnn" | "reference"
    vae: BarVAEConfig = dataclasses.field(default_factory=BarVAEConfig)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.cross_attention_positions not in ("song", "segment"):
            raise ValueError(f"cross_attention_positions must be 'song' or 'segment', "
                             f"got {self.cross_attention_positions!r}")
        unknown = set(self.context_slots) - set(CONTEXT_SLOT_NAMES)
        if unknown:
            raise ValueError(f"unknown context slots {sorted(unknown)}; choose from {CONTEXT_SLOT_NAMES}")
        unknown = set(self.zero_init_paths) - set(STRUCTURE_PATHS)
        if unknown:
            raise ValueError(f"unknown zero_init_paths {sorted(unknown)}; choose from {STRUCTURE_PATHS}")


PRESETS: Mapping[str, dict[str, Any]] = {
    "paper": {},
    # Sized for a CPU run that learns in minutes (with 4-bar windows, experiments/configs/sfs.py).
    "small": dict(d_model=128, n_heads=4, d_ff=512, n_encoder_layers=1, n_decoder_layers=3,
                  n_global_layers=1, global_mlp_dim=128,
                  vae=BarVAEConfig(d_model=96, n_heads=4, d_ff=384, n_encoder_layers=1,
                                   n_decoder_layers=2, latent_dim=32)),
    "tiny": dict(d_model=32, n_heads=2, d_ff=64, n_encoder_layers=1, n_decoder_layers=2,
                 n_global_layers=1, global_mlp_dim=32,
                 vae=BarVAEConfig(d_model=32, n_heads=2, d_ff=64, n_encoder_layers=1,
                                  n_decoder_layers=1, latent_dim=16)),
}


def model_config(size: str = "paper", **overrides: Any) -> ModelConfig:
    """A preset with field overrides (``vae`` may be given as a dict of VAE overrides)."""
    if size not in PRESETS:
        raise ValueError(f"unknown model size {size!r}; choose from {sorted(PRESETS)}")
    fields = dict(PRESETS[size])
    vae_overrides = overrides.pop("vae", None)
    fields.update(overrides)
    if isinstance(vae_overrides, Mapping):
        fields["vae"] = dataclasses.replace(fields.get("vae", BarVAEConfig()), **vae_overrides)
    elif vae_overrides is not None:
        fields["vae"] = vae_overrides
    for name in ("context_slots", "zero_init_paths"):
        if name in fields:
            fields[name] = tuple(fields[name])
    return ModelConfig(**fields)
