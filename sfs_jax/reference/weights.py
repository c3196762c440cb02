"""The authors' checkpoint format <-> our modules: names, shapes, transposes, the config they imply.

Place in the data flow: beside [5]. The authors save ``SegmentFullSongModel.state_dict()``
(the SFS model and its ``bar_embedder`` VAE, parameters and buffers) as safetensors;
``../shared/reference/README.md`` section 6 lists every name and its role. Here each
of their names is tied to one variable of ``SFSModel`` or ``BarVAE``:

- Linear ``weight`` [out, in] is our ``kernel`` [in, out] (transposed); biases copy;
- embeddings and LayerNorm ``gamma`` (stored as the offset from a gain of 1) copy;
- ``masked_bar_embedding`` [1, 1, latent] is G's ``unknown_bar`` [latent];
- buffers (sinusoid and beat tables, rotary ``inv_freq``) copy into our ``Buffer``s;
- ``bar_embedder.decoder.pe`` is an unused buffer of theirs and is dropped.

``infer_config`` reads the model's sizes from the tensor shapes (heads are not in the
shapes: x-transformers' default of 8 unless a ``case.json`` says otherwise), so a
checkpoint of any size loads without a hand-written config.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sfs_jax.model.bar_vae import BarVAE, make_bar_vae
from sfs_jax.model.config import BarVAEConfig, ModelConfig
from sfs_jax.model.sfs import SFSModel

DEFAULT_HEADS = 8  # x-transformers' default; the authors' factory never passes heads
DEFAULT_VAE_MAX_TOKENS = 160  # the paper config's bar_embedder.max_tokens
UNUSED = ("bar_embedder.decoder.pe",)  # a buffer of theirs that no forward reads
SFS_PREFIX, VAE_PREFIX = "sfs", "vae"


class CheckpointMismatch(ValueError):
    """A checkpoint that does not fit the model; the message lists what differs."""

    def __init__(self, missing: Iterable[str] = (), unexpected: Iterable[str] = (),
                 misshaped: Iterable[tuple[str, tuple, tuple]] = (), note: str = "") -> None:
        self.missing, self.unexpected, self.misshaped = sorted(missing), sorted(unexpected), list(misshaped)
        lines = [note or "the checkpoint does not fit the authors' SFS model"]
        if self.missing:
            lines.append(f"missing ({len(self.missing)}): {', '.join(self.missing)}")
        if self.unexpected:
            lines.append(f"unexpected ({len(self.unexpected)}): {', '.join(self.unexpected)}")
        if self.misshaped:
            lines.append(f"mis-shaped ({len(self.misshaped)}): " + ", ".join(
                f"{name} {tuple(got)} (expected {tuple(want)})" for name, got, want in self.misshaped))
        super().__init__("\n".join(lines))


@dataclasses.dataclass(frozen=True)
class Entry:
    """Where one of the authors' tensors lives in our models, and how it is laid out there."""

    part: str  # SFS_PREFIX or VAE_PREFIX
    path: tuple[str | int, ...]  # attribute path from the model to the variable
    kind: str = "copy"  # "copy", "transpose" (Linear weight -> kernel) or "flatten" ([1, 1, n] -> [n])


# ---------------------------------------------------------------------------
# Reading a checkpoint
# ---------------------------------------------------------------------------


def read_checkpoint(path: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file, by name; a clear error for a file that is not one.

    A file cut short keeps its header, so the error then names the tensors whose bytes are missing.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return dict(load_file(str(path)))
    except (SafetensorError, OSError, ValueError) as err:
        cut = _truncated_tensors(path)
        if cut:
            raise CheckpointMismatch(missing=cut, note=f"{path} is truncated: {len(cut)} tensors end past the "
                                                       "end of the file") from err
        raise CheckpointMismatch(note=f"{path} is not a readable safetensors checkpoint: {err}") from err


def _truncated_tensors(path: Path) -> list[str]:
    """Names whose data lies past the end of a safetensors file (empty when its header is unreadable)."""
    size = path.stat().st_size
    try:
        with path.open("rb") as file:
            header_length = int.from_bytes(file.read(8), "little")
            if header_length <= 0 or 8 + header_length > size:
                return []
            header = json.loads(file.read(header_length))
    except (OSError, ValueError):
        return []
    data_bytes = size - 8 - header_length
    return [name for name, info in header.items()
            if name != "__metadata__" and isinstance(info, dict) and info.get("data_offsets", [0, 0])[1] > data_bytes]


def _leading_int(value: Any) -> int | None:
    match = re.match(r"\s*(\d+)", str(value))
    return int(match.group(1)) if match else None


def heads_from_case(case: Mapping[str, Any] | None) -> tuple[int, int]:
    """(SFS heads, VAE heads) a ``case.json`` states (x-transformers' default 8 when it does not)."""
    heads, vae_heads = DEFAULT_HEADS, DEFAULT_HEADS
    for name, args in (case or {}).get("constructor_args", {}).items():
        if not isinstance(args, Mapping) or "heads" not in args:
            continue
        value = _leading_int(args["heads"])
        if value is None:
            continue
        if "bar_embedder" in name or "VAE" in name:
            vae_heads = value
        else:
            heads = vae_heads = value  # the AttentionLayers entry covers every FeatureExtractor
    return heads, vae_heads


# ---------------------------------------------------------------------------
# The config a checkpoint implies
# ---------------------------------------------------------------------------


def _layers(shapes: Mapping[str, tuple], prefix: str, per_layer: int) -> int:
    sublayers = {int(m.group(1)) for name in shapes if (m := re.fullmatch(re.escape(prefix) + r"\.(\d+)\.0\.0\.gamma",
                                                                          name))}
    if not sublayers or sublayers != set(range(max(sublayers) + 1)) or len(sublayers) % per_layer:
        raise CheckpointMismatch(missing=[f"{prefix}.0.0.0.gamma"] if not sublayers else [],
                                 note=f"cannot read the layers of {prefix} (sublayers {sorted(sublayers)})")
    return len(sublayers) // per_layer


def _shape(shapes: Mapping[str, tuple], name: str, *alternatives: str) -> tuple[int, ...]:
    """The shape of ``name``, else of the first alternative holding the same size (a renamed tensor aside)."""
    for candidate in (name, *alternatives):
        if candidate in shapes:
            return tuple(shapes[candidate])
    raise CheckpointMismatch(missing=[name], note=f"cannot read the model's sizes: {name} is missing")


def infer_config(shapes: Mapping[str, tuple], case: Mapping[str, Any] | None = None,
                 compute_dtype: str = "float32") -> ModelConfig:
    """The reference-architecture ``ModelConfig`` whose variables have these shapes.

    ``shapes``: tensor name -> shape of a checkpoint; ``case``: an optional golden case's
    ``case.json`` (for the head count, which no shape holds, and the VAE's max_tokens).
    """
    heads, vae_heads = heads_from_case(case)
    attention = lambda prefix: [f"{prefix}.layers.0.1.{p}.weight" for p in ("to_q", "to_k", "to_v")]
    d_model = _shape(shapes, "decoder.frame_emb.weight", "decoder.pitch_emb.weight")[1]
    inner = _shape(shapes, *attention("decoder.transformer"))[0]
    rotary = 2 * _shape(shapes, "decoder.transformer.rotary_pos_emb.inv_freq",
                        "encoder.transformer.rotary_pos_emb.inv_freq")[0]
    vae_d = _shape(shapes, "bar_embedder.encoder.frame_emb.weight", "bar_embedder.encoder.pitch_emb.weight")[1]
    vae_decoder_d = _shape(shapes, "bar_embedder.decoder.feature_extractor.frame_emb.weight",
                           "bar_embedder.decoder.feature_extractor.pitch_emb.weight")[1]
    vae_inner = _shape(shapes, *attention("bar_embedder.encoder.transformer"))[0]
    if inner % heads or vae_inner % vae_heads:
        raise CheckpointMismatch(note=f"attention widths {inner} / {vae_inner} do not split into {heads} / "
                                      f"{vae_heads} heads")
    vae_max_tokens = (case or {}).get("create_model_config", {}).get("bar_embedder", {}).get(
        "max_tokens", DEFAULT_VAE_MAX_TOKENS)
    vae = BarVAEConfig(
        d_model=vae_d, n_heads=vae_heads, head_dim=vae_inner // vae_heads,
        rotary_dims=2 * _shape(shapes, "bar_embedder.encoder.transformer.rotary_pos_emb.inv_freq")[0],
        d_ff=_shape(shapes, "bar_embedder.encoder.transformer.layers.1.1.ff.0.0.weight")[0],
        n_encoder_layers=_layers(shapes, "bar_embedder.encoder.transformer.layers", 2),
        n_decoder_layers=_layers(shapes, "bar_embedder.decoder.feature_extractor.transformer.layers", 2),
        latent_dim=_shape(shapes, "bar_embedder.bottleneck.mu_proj.weight")[0],
        max_bar_tokens=int(vae_max_tokens),
        decoder_d_model=vae_decoder_d if vae_decoder_d != vae_d else 0,
        decoder_d_ff=_shape(shapes, "bar_embedder.decoder.feature_extractor.transformer.layers.1.1.ff.0.0.weight")[0])
    if vae.decoder_d_ff == vae.d_ff:
        vae = dataclasses.replace(vae, decoder_d_ff=0)
    return ModelConfig(
        d_model=d_model, n_heads=heads, head_dim=inner // heads,
        d_ff=_shape(shapes, "decoder.transformer.layers.2.1.ff.0.0.weight")[0],
        n_encoder_layers=_layers(shapes, "encoder.transformer.layers", 2),
        n_decoder_layers=_layers(shapes, "decoder.transformer.layers", 3),
        n_global_layers=_layers(shapes, "global_vision.encoder.layers", 2),
        head_hidden_dim=_shape(shapes, "velocity_classifier.input_layer.weight")[0],
        max_position_frames=_shape(shapes, "decoder.start_end_pe.pe")[0],
        rotary_dims=rotary, compute_dtype=compute_dtype, vae=vae)


# ---------------------------------------------------------------------------
# Name <-> variable
# ---------------------------------------------------------------------------


def _stack(out: dict[str, Entry], ref: str, part: str, blocks: tuple, norm: tuple, rotary: tuple, n_layers: int,
           sublayers: tuple[str, ...]) -> None:
    """Entries of an x-transformers AttentionLayers: sublayer j = len(sublayers) * layer + k."""
    norms = {"self": "self_norm", "cross": "cross_norm", "ff": "mlp_norm"}
    attentions = {"self": "self_attention", "cross": "cross_attention"}
    projections = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out": "out"}
    for layer in range(n_layers):
        for k, sub in enumerate(sublayers):
            j = len(sublayers) * layer + k
            here = (*blocks, layer)
            out[f"{ref}.layers.{j}.0.0.gamma"] = Entry(part, (*here, norms[sub], "gamma"))
            if sub == "ff":
                for theirs, ours in (("ff.0.0", "up"), ("ff.2", "down")):
                    out[f"{ref}.layers.{j}.1.{theirs}.weight"] = Entry(part, (*here, "mlp", ours, "kernel"),
                                                                       "transpose")
                    out[f"{ref}.layers.{j}.1.{theirs}.bias"] = Entry(part, (*here, "mlp", ours, "bias"))
            else:
                for theirs, ours in projections.items():
                    out[f"{ref}.layers.{j}.1.{theirs}.weight"] = Entry(
                        part, (*here, attentions[sub], ours, "kernel"), "transpose")
    out[f"{ref}.final_norm.gamma"] = Entry(part, (*norm, "gamma"))
    out[f"{ref}.rotary_pos_emb.inv_freq"] = Entry(part, (*rotary, "inv_freq"))


def _linear(out: dict[str, Entry], ref: str, part: str, path: tuple) -> None:
    out[f"{ref}.weight"] = Entry(part, (*path, "kernel"), "transpose")
    out[f"{ref}.bias"] = Entry(part, (*path, "bias"))


def _embeddings(out: dict[str, Entry], ref: str, part: str, path: tuple) -> None:
    for name in ("frame", "pitch", "velocity", "duration"):
        out[f"{ref}.{name}_emb.weight"] = Entry(part, (*path, name, "embedding"))


def _heads(out: dict[str, Entry], ref: str, part: str, path: tuple) -> None:
    _linear(out, f"{ref}token_type_classifier", part, (*path, "type"))
    _linear(out, f"{ref}pitch_classifier", part, (*path, "pitch"))
    out[f"{ref}out_pitch_emb.weight"] = Entry(part, (*path, "pitch_condition", "embedding"))
    out[f"{ref}out_velocity_emb.weight"] = Entry(part, (*path, "velocity_condition", "embedding"))
    for head in ("velocity", "duration"):
        _linear(out, f"{ref}{head}_classifier.input_layer", part, (*path, head, "up"))
        _linear(out, f"{ref}{head}_classifier.output_layer", part, (*path, head, "down"))


def _residual_mlp(out: dict[str, Entry], ref: str, part: str, path: tuple) -> None:
    for theirs, ours in (("input_layer", "input"), ("hidden_layers.1", "hidden"), ("output_layer", "output")):
        _linear(out, f"{ref}.{theirs}", part, (*path, ours))


def reference_entries(config: ModelConfig) -> dict[str, Entry]:
    """Every state_dict name of the authors' model of this config -> our variable (``UNUSED`` aside)."""
    out: dict[str, Entry] = {}
    s, v = SFS_PREFIX, VAE_PREFIX
    for module in ("encoder", "decoder"):
        _embeddings(out, module, s, (module, "embed"))
        out[f"{module}.beat_pe"] = Entry(s, (module, "position", "beat"))
        out[f"{module}.start_end_pe.pe"] = Entry(s, (module, "position", "start_end"))
    _stack(out, "encoder.transformer", s, ("encoder", "blocks"), ("encoder", "norm"), ("encoder", "rotary"),
           config.n_encoder_layers, ("self", "ff"))
    _stack(out, "decoder.transformer", s, ("decoder", "blocks"), ("decoder", "norm"), ("decoder", "rotary"),
           config.n_decoder_layers, ("self", "cross", "ff"))
    _residual_mlp(out, "decoder.in_attn_transform", s, ("decoder", "condition"))
    out["context_type_embedding.weight"] = Entry(s, ("encoder", "slot", "embedding"))
    out["masked_bar_embedding"] = Entry(s, ("global_view", "unknown_bar"), "flatten")
    _linear(out, "global_vision.in_layer", s, ("global_view", "project"))
    out["global_vision.pe.pe"] = Entry(s, ("global_view", "bar_code"))
    _stack(out, "global_vision.encoder", s, ("global_view", "blocks"), ("global_view", "norm"),
           ("global_view", "rotary"), config.n_global_layers, ("self", "ff"))
    _heads(out, "", s, ("decoder", "heads"))
    # The bar VAE.
    _embeddings(out, "bar_embedder.encoder", v, ("encoder_embed",))
    out["bar_embedder.encoder.beat_pe"] = Entry(v, ("encoder_code", "beat"))
    out["bar_embedder.encoder.out_token_emb"] = Entry(v, ("summary",))
    _stack(out, "bar_embedder.encoder.transformer", v, ("encoder_blocks",), ("encoder_norm",), ("encoder_rotary",),
           config.vae.n_encoder_layers, ("self", "ff"))
    _linear(out, "bar_embedder.bottleneck.mu_proj", v, ("to_mu",))
    _linear(out, "bar_embedder.bottleneck.logvar_proj", v, ("to_logvar",))
    feature = "bar_embedder.decoder.feature_extractor"
    _embeddings(out, feature, v, ("decoder_embed",))
    out[f"{feature}.beat_pe"] = Entry(v, ("decoder_code", "beat"))
    _residual_mlp(out, f"{feature}.in_attn_transform", v, ("latent_condition",))
    _stack(out, f"{feature}.transformer", v, ("decoder_blocks",), ("decoder_norm",), ("decoder_rotary",),
           config.vae.n_decoder_layers, ("self", "ff"))
    _heads(out, "bar_embedder.decoder.", v, ("heads",))
    return out


def _variable(module: nnx.Module, path: tuple[str | int, ...]) -> nnx.Variable:
    node: Any = module
    for key in path:
        node = node[key] if isinstance(key, int) else getattr(node, key)
    return node


def _their_shape(shape: tuple[int, ...], kind: str) -> tuple[int, ...]:
    return tuple(reversed(shape)) if kind == "transpose" else (1, 1, *shape) if kind == "flatten" else tuple(shape)


def _as_ours(array: np.ndarray, kind: str) -> np.ndarray:
    return array.T if kind == "transpose" else array.reshape(-1) if kind == "flatten" else array


# ---------------------------------------------------------------------------
# Checking and loading
# ---------------------------------------------------------------------------


def abstract_models(config: ModelConfig) -> dict[str, nnx.Module]:
    """The SFS model and bar VAE of ``config``, with shapes but no values (nothing initialised)."""
    return {SFS_PREFIX: nnx.eval_shape(lambda: SFSModel(config, rngs=nnx.Rngs(0))),
            VAE_PREFIX: nnx.eval_shape(lambda: make_bar_vae(config, nnx.Rngs(0)))}


def check_fits(shapes: Mapping[str, tuple], config: ModelConfig,
               models: Mapping[str, nnx.Module] | None = None) -> None:
    """Raises ``CheckpointMismatch`` listing the missing, unexpected and mis-shaped names."""
    models = models or abstract_models(config)
    entries = reference_entries(config)
    missing = [name for name in entries if name not in shapes]
    unexpected = [name for name in shapes if name not in entries and name not in UNUSED]
    misshaped = []
    for name, entry in entries.items():
        if name in shapes:
            want = _their_shape(_variable(models[entry.part], entry.path).value.shape, entry.kind)
            if tuple(shapes[name]) != want:
                misshaped.append((name, tuple(shapes[name]), want))
    if missing or unexpected or misshaped:
        raise CheckpointMismatch(missing, unexpected, misshaped)


def load_models(weights: Mapping[str, np.ndarray], config: ModelConfig) -> tuple[SFSModel, BarVAE]:
    """(SFS model, bar VAE) of ``config`` holding the checkpoint's tensors (refused first if they do not fit).

    The models are built abstract and every variable, buffers included, is set from the
    file in the model's float type (float32, or float64 for the tight parity check), so
    nothing is randomly initialised and nothing is left unset.
    """
    models = abstract_models(config)
    check_fits({name: array.shape for name, array in weights.items()}, config, models)
    dtype = jnp.promote_types(jnp.dtype(config.compute_dtype), jnp.float32)
    for name, entry in reference_entries(config).items():
        _variable(models[entry.part], entry.path).value = jnp.asarray(_as_ours(weights[name], entry.kind), dtype)
    for part, model in models.items():
        unset = [jax.tree_util.keystr(p) for p, leaf in jax.tree_util.tree_flatten_with_path(nnx.state(model))[0]
                 if isinstance(leaf, jax.ShapeDtypeStruct)]
        if unset:
            raise RuntimeError(f"{part}: variables without a checkpoint tensor: {unset}")
    return models[SFS_PREFIX], models[VAE_PREFIX]


def diagnose(shapes: Mapping[str, tuple], case: Mapping[str, Any] | None = None,
             compute_dtype: str = "float32") -> ModelConfig:
    """The config of a checkpoint that fits the authors' model, else ``CheckpointMismatch`` listing what differs.

    When the sizes cannot be read (a name they come from is missing), the file is
    compared with the paper's model so the error still lists every missing,
    unexpected and mis-shaped name.
    """
    from sfs_jax.model.config import model_config

    try:
        config = infer_config(shapes, case, compute_dtype)
    except CheckpointMismatch as err:
        try:
            check_fits(shapes, model_config("paper", compute_dtype=compute_dtype))
        except CheckpointMismatch as against_paper:
            raise CheckpointMismatch(against_paper.missing, against_paper.unexpected, against_paper.misshaped,
                                     note=f"{err.args[0].splitlines()[0]}; compared with the paper's model") from err
        raise
    check_fits(shapes, config)
    return config
