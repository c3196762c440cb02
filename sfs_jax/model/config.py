"""Frozen model configuration: the authors' architecture by default, this project's ablations as values.

The default of every field is the authors' model (``../shared/reference/README.md``,
SFS.md section 3): partial rotary positions (the first 32 of each head's 64 dims,
adjacent pairs), a fixed 96-dim position table added to N(0,1) token embeddings,
LayerNorm without bias (eps 1e-5, gain 1 + gamma), exact GELU, PyTorch's default
initialisation, the context-type embedding added after the context encoder, G with a
latent "unknown bar" vector and bar sinusoids, 2-class type head with END a FRAME-type
token. ``ARCHITECTURES["v1"]`` holds the values of this project's own first design
(sessions before reference parity), so every earlier result stays reproducible:
``model_config(size, arch="v1")`` or one field at a time from the command line.

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
# The reference has one context-type row per SFS slot; "previous" (the all_previous ablation) adds a fifth.
REFERENCE_SLOT_NAMES = CONTEXT_SLOT_NAMES[:4]
# The paths that carry structure into the decoder, which ``ModelConfig.zero_init_paths`` may start at zero.
STRUCTURE_PATHS = ("cross_attention", "global_view")
# The reference's fixed position code: song start/end sinusoids, segment start/end sinusoids, beat one-hot.
POSITION_CODE_DIMS = 96

CHOICES: Mapping[str, tuple[str, ...]] = {
    "rotary_pairs": ("adjacent", "halves"),
    "cross_attention_positions": ("song", "segment"),
    "context_positions": ("token_index", "frame"),
    "slot_embedding": ("output", "input"),
    "position_code": ("fixed", "learned"),
    "global_view_form": ("reference", "v1"),
    "token_layout": ("reference", "v1"),
    "norm": ("unit_offset", "flax"),
    "gelu": ("exact", "tanh"),
    "init": ("torch", "flax"),
    "compute_dtype": ("float32", "bfloat16", "float16", "float64"),
    "attention_implementation": ("auto", "xla", "cudnn", "reference"),
}


@dataclasses.dataclass(frozen=True)
class BarVAEConfig:
    """The bar VAE whose frozen encoder feeds G (paper: 5+5 layers, latent 256).

    Block style (norm, GELU, rotary pairs, init, token layout) follows the SFS model's
    ``ModelConfig``; attention width is ``n_heads * head_dim`` whatever ``d_model``.
    """

    d_model: int = 512
    n_heads: int = 8
    head_dim: int = 64
    rotary_dims: int = 32
    d_ff: int = 2048
    n_encoder_layers: int = 5
    n_decoder_layers: int = 5
    latent_dim: int = 256
    max_bar_tokens: int = 160  # the reference VAE's max_tokens: 32 FRAMEs + the notes of one bar (+ END in v1)
    # The reference sizes its decoder apart (equal in the paper); 0 means "as the encoder".
    decoder_d_model: int = 0
    decoder_d_ff: int = 0

    @property
    def decoder_width(self) -> int:
        return self.decoder_d_model or self.d_model

    @property
    def decoder_ff(self) -> int:
        return self.decoder_d_ff or self.d_ff

    def __post_init__(self) -> None:
        _check_heads(self.head_dim, self.rotary_dims, "vae")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """SFS model hyper-parameters; presets in ``PRESETS``, the earlier design in ``ARCHITECTURES['v1']``."""

    d_model: int = 512
    n_heads: int = 8
    head_dim: int = 64  # attention inner width is n_heads * head_dim (the reference: 8 x 64 whatever d_model)
    d_ff: int = 2048
    n_encoder_layers: int = 4
    n_decoder_layers: int = 8
    n_global_layers: int = 3
    # Hidden width of the velocity and duration head MLPs (the reference: 256 at every size).
    head_hidden_dim: int = 256
    # v1 only: hidden width of G's condition MLP (the reference's is a residual MLP of width d_model).
    global_mlp_dim: int = 512
    # Ablations: what the target may see.
    context_slots: tuple[str, ...] = ("left", "right", "seed", "ref")
    use_cross_attention: bool = True
    use_global_view: bool = True
    use_segment_positions: bool = True
    # Fixed code: rows of the sinusoid / beat tables (frames; bars for G), as the reference's
    # max_song_duration (6400 frames = 200 bars). Learned code (v1): the longest sinusoid period.
    max_position_frames: int = 6400
    rope_base: float = 10_000.0
    # Rotary positions rotate the first ``rotary_dims`` of each head's dims (the reference: 32 of 64,
    # so the other 32 can match absolute position codes); head_dim rotates every dim (v1). Pairs are
    # adjacent dims (0,1),(2,3)... (the reference) or the first and second half of the rotated dims (v1).
    rotary_dims: int = 32
    rotary_pairs: str = "adjacent"
    # Rotary positions of cross-attention: "song" (SFS.md section 3: queries and keys by their song
    # frame, measured from the target window's start) or "segment" (by their frame within their own
    # segment, so a target bar and the same bar of its Ref or Seed sit at relative offset 0).
    cross_attention_positions: str = "song"
    # Rotary positions inside the context encoder: token index in its slot (the reference) or song frame (v1).
    context_positions: str = "token_index"
    # The context-type embedding: added after the encoder's final norm (the reference) or at its input (v1).
    slot_embedding: str = "output"
    # "fixed": the reference's 96-dim table (no parameters) added to the token embedding;
    # "learned" (v1): sinusoids through a learned projection plus a learned frame-in-bar vector.
    position_code: str = "fixed"
    # G: "reference" (unknown bars get a latent vector, bar sinusoids added, residual condition MLP)
    # or "v1" (a model-space unknown vector, no bar code, a plain MLP of width global_mlp_dim).
    global_view_form: str = "reference"
    # "reference": no START token (the first FRAME is the first input), 2-class type head
    # (FRAME/NOTE; END is a FRAME-type token at position 0); "v1": a START input and a 4-class
    # head (PAD/FRAME/NOTE/END) predicting every token.
    token_layout: str = "reference"
    norm: str = "unit_offset"  # LayerNorm without bias, eps 1e-5, gain 1 + gamma; "flax": nnx.LayerNorm
    gelu: str = "exact"  # erf GELU; "tanh": its tanh approximation
    # "torch": PyTorch's defaults (Linear U(+-1/sqrt(fan_in)), Embedding N(0, 1)); "flax": flax's.
    init: str = "torch"
    # Structure paths (``STRUCTURE_PATHS``) whose last projection starts at zero: every
    # cross-attention output projection ("cross_attention") and the last layer of G's condition
    # MLP ("global_view"). With both, an untrained SFS ignores its contexts and G and they are
    # learned in (Flamingo's zero-init gates do the same). The reference initialises nothing at zero.
    zero_init_paths: tuple[str, ...] = ()
    compute_dtype: str = "float32"  # "bfloat16" on accelerators; parameters stay float32 ("float64": tests)
    attention_implementation: str = "auto"  # "auto" | "xla" | "cudnn" | "reference"
    vae: BarVAEConfig = dataclasses.field(default_factory=BarVAEConfig)

    @property
    def attention_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def n_slot_embeddings(self) -> int:
        """Rows of the context-type embedding: the reference's four, five with the ``previous`` slot."""
        return len(CONTEXT_SLOT_NAMES) if "previous" in self.context_slots else len(REFERENCE_SLOT_NAMES)

    def __post_init__(self) -> None:
        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        _check_heads(self.head_dim, self.rotary_dims, "model")
        if self.position_code == "fixed" and self.d_model < POSITION_CODE_DIMS:
            raise ValueError(f"position_code='fixed' writes {POSITION_CODE_DIMS} dims, more than d_model "
                             f"{self.d_model}: use d_model >= {POSITION_CODE_DIMS} or position_code='learned'")
        if self.global_view_form == "reference" and self.d_model % 4:
            raise ValueError(f"G's bar sinusoids need d_model divisible by 4, got {self.d_model}")
        unknown = set(self.context_slots) - set(CONTEXT_SLOT_NAMES)
        if unknown:
            raise ValueError(f"unknown context slots {sorted(unknown)}; choose from {CONTEXT_SLOT_NAMES}")
        unknown = set(self.zero_init_paths) - set(STRUCTURE_PATHS)
        if unknown:
            raise ValueError(f"unknown zero_init_paths {sorted(unknown)}; choose from {STRUCTURE_PATHS}")


def _check_heads(head_dim: int, rotary_dims: int, what: str) -> None:
    if head_dim < 2 or head_dim % 2:
        raise ValueError(f"{what} head_dim must be even and >= 2, got {head_dim}")
    if not 2 <= rotary_dims <= head_dim or rotary_dims % 2:
        raise ValueError(f"{what} rotary_dims must be even and in 2..head_dim ({head_dim}), got {rotary_dims}")


PRESETS: Mapping[str, dict[str, Any]] = {
    "paper": {},
    # Sized for a CPU run that learns in minutes (with 4-bar windows, experiments/configs/sfs.py).
    "small": dict(d_model=128, n_heads=4, head_dim=32, rotary_dims=16, d_ff=512, n_encoder_layers=1,
                  n_decoder_layers=3, n_global_layers=1, global_mlp_dim=128, head_hidden_dim=128,
                  vae=BarVAEConfig(d_model=96, n_heads=4, head_dim=24, rotary_dims=12, d_ff=384,
                                   n_encoder_layers=1, n_decoder_layers=2, latent_dim=32)),
    # Tests. 96 wide: the fixed position code needs 96 dims.
    "tiny": dict(d_model=96, n_heads=2, head_dim=16, rotary_dims=8, d_ff=128, n_encoder_layers=1,
                 n_decoder_layers=2, n_global_layers=1, global_mlp_dim=32, head_hidden_dim=32,
                 vae=BarVAEConfig(d_model=32, n_heads=2, head_dim=16, rotary_dims=8, d_ff=64,
                                  n_encoder_layers=1, n_decoder_layers=1, latent_dim=16)),
}

# This project's first design, before reference parity: the values every earlier README result used.
# Sizes were d_model / n_heads per head, so the head dims below are per preset.
V1_FIELDS: Mapping[str, Any] = dict(
    rotary_pairs="halves", context_positions="frame", slot_embedding="input", position_code="learned",
    global_view_form="v1", token_layout="v1", norm="flax", gelu="tanh", init="flax",
    zero_init_paths=STRUCTURE_PATHS, max_position_frames=8192)
V1_SIZES: Mapping[str, dict[str, Any]] = {
    "paper": dict(head_dim=64, rotary_dims=64, head_hidden_dim=512,
                  vae=dict(head_dim=64, rotary_dims=64, max_bar_tokens=128)),
    "small": dict(head_dim=32, rotary_dims=32, head_hidden_dim=128, d_model=128, n_heads=4,
                  vae=dict(head_dim=24, rotary_dims=24, max_bar_tokens=128)),
    "tiny": dict(d_model=32, head_dim=16, rotary_dims=16, d_ff=64, head_hidden_dim=32,
                 vae=dict(d_model=32, head_dim=16, rotary_dims=16, max_bar_tokens=128)),
}
ARCHITECTURES = ("reference", "v1")


def model_config(size: str = "paper", arch: str = "reference", **overrides: Any) -> ModelConfig:
    """A preset of an architecture with field overrides (``vae`` may be a dict of VAE overrides).

    ``arch="reference"``: the authors' model at the preset's sizes (``paper`` is theirs
    exactly); ``arch="v1"``: this project's earlier design at the same sizes.
    """
    if size not in PRESETS:
        raise ValueError(f"unknown model size {size!r}; choose from {sorted(PRESETS)}")
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose from {ARCHITECTURES}")
    fields = dict(PRESETS[size])
    vae = fields.get("vae", BarVAEConfig())
    if arch == "v1":
        v1 = dict(V1_SIZES[size])
        vae = dataclasses.replace(vae, **v1.pop("vae"))
        fields.update(V1_FIELDS, **v1)
    vae_overrides = overrides.pop("vae", None)
    fields.update(overrides)
    if isinstance(vae_overrides, Mapping):
        vae = dataclasses.replace(vae, **vae_overrides)
    elif vae_overrides is not None:
        vae = vae_overrides
    fields["vae"] = vae
    for name in ("context_slots", "zero_init_paths"):
        if name in fields:
            fields[name] = tuple(fields[name])
    return ModelConfig(**fields)
