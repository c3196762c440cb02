"""The causal decoder over target tokens and its factorized heads (SFS.md section 3).

Letters: B batch, T target tokens (decoder positions), S context tokens, G bars, D model width.

Which target token each position reads and predicts is ``token_layout``'s business
(the reference: token i predicts token i + 1; v1: token i - 1, or START, predicts
token i). Every input sits at its own frame, so neither the rotary position nor the
G vector of an input leaks where the predicted token falls. Rotary positions are
frames from the window's start (relative rotations make that the same as song
frames, in smaller numbers: the reference's ``pos``). Heads: token type; pitch;
velocity given the pitch; duration given pitch and velocity (teacher-forced with the
true values in training, the sampled ones in generation).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from sfs_jax.model import layers
from sfs_jax.model import token_layout as layout_lib
from sfs_jax.model.attention import FastPath, KVCache, Rope, causal_mask
from sfs_jax.model.config import ModelConfig
from sfs_jax.model.embeddings import TokenEmbedding, condition_pitch_index, position_code
from sfs_jax.model.global_view import gather_bars
from sfs_jax.model.initializers import embed, linear
from sfs_jax.music import notes as notes_lib
from sfs_jax.music.tokenizer import NUM_DURATIONS, TokenType

FRAMES_PER_BAR = notes_lib.FRAMES_PER_BAR


class Heads(nnx.Module):
    """Type and pitch from the hidden state; velocity and duration conditioned on the note so far.

    Velocity reads h + E_pitch[pitch]; duration h + E_pitch[pitch] + E_velocity[velocity]
    (the reference's ``out_pitch_emb`` / ``out_velocity_emb``), each through a two-layer
    MLP of width ``hidden_dim``. Heads run in float32 whatever the compute dtype.
    """

    def __init__(self, d_model: int, style: layers.BlockStyle, *, token_layout: str, hidden_dim: int,
                 rngs: nnx.Rngs) -> None:
        dtype = style.float_dtype
        n_types = len(layout_lib.TYPE_CLASSES[token_layout])
        n_pitch_rows = notes_lib.NUM_PITCHES if token_layout == "reference" else notes_lib.NUM_PITCHES + 1
        self.token_layout = token_layout
        self.type = linear(d_model, n_types, dtype=dtype, init=style.init, rngs=rngs)
        self.pitch = linear(d_model, notes_lib.NUM_PITCHES, dtype=dtype, init=style.init, rngs=rngs)
        self.pitch_condition = embed(n_pitch_rows, d_model, init=style.init, rngs=rngs)
        self.velocity_condition = embed(notes_lib.NUM_VELOCITIES, d_model, init=style.init, rngs=rngs)
        self.velocity = layers.MLP(d_model, hidden_dim, notes_lib.NUM_VELOCITIES, style=style, dtype=dtype, rngs=rngs)
        self.duration = layers.MLP(d_model, hidden_dim, NUM_DURATIONS, style=style, dtype=dtype, rngs=rngs)

    def type_logits(self, h_BxTxD: jax.Array) -> jax.Array:
        """Logits over the layout's type classes (``token_layout.TYPE_CLASSES``)."""
        logits = self.type(h_BxTxD)
        if self.token_layout == "v1":
            return logits.at[..., int(TokenType.PAD)].set(-1e9)  # PAD is never a prediction
        return logits

    def pitch_logits(self, h_BxTxD: jax.Array) -> jax.Array:
        return self.pitch(h_BxTxD)

    def _with_pitch(self, h_BxTxD: jax.Array, pitch_BxT: jax.Array) -> jax.Array:
        return h_BxTxD + self.pitch_condition(condition_pitch_index(pitch_BxT, self.token_layout))

    def velocity_logits(self, h_BxTxD: jax.Array, pitch_BxT: jax.Array) -> jax.Array:
        return self.velocity(self._with_pitch(h_BxTxD, pitch_BxT))

    def duration_logits(self, h_BxTxD: jax.Array, pitch_BxT: jax.Array, velocity_BxT: jax.Array) -> jax.Array:
        return self.duration(self._with_pitch(h_BxTxD, pitch_BxT)
                             + self.velocity_condition(jnp.clip(velocity_BxT, 0, 127)))

    def teacher_forced(self, h_BxTxD: jax.Array, predicted: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """The four heads' logits, velocity and duration conditioned on the predicted token's true values."""
        return {"type": self.type_logits(h_BxTxD), "pitch": self.pitch_logits(h_BxTxD),
                "velocity": self.velocity_logits(h_BxTxD, predicted["pitch"]),
                "duration": self.duration_logits(h_BxTxD, predicted["pitch"], predicted["velocity"])}


def condition_mlp(d_in: int, config: ModelConfig, style: layers.BlockStyle, rngs: nnx.Rngs) -> nnx.Module:
    """G's per-token vector -> the condition added to every sublayer (reference: residual MLP)."""
    if config.global_view_form == "reference":
        return layers.ResidualMLP(d_in, config.d_model, style=style, rngs=rngs)
    return layers.MLP(d_in, config.global_mlp_dim, config.d_model, style=style, rngs=rngs)


def zero_linear(linear_layer: nnx.Linear) -> None:
    linear_layer.kernel.value = jnp.zeros_like(linear_layer.kernel.value)
    if linear_layer.bias is not None:
        linear_layer.bias.value = jnp.zeros_like(linear_layer.bias.value)


class Decoder(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs) -> None:
        style = layers.block_style(config)
        self.config = config
        self.layout = config.token_layout
        self.lead = layout_lib.LEAD[config.token_layout]
        self.float_dtype = style.float_dtype
        self.embed = TokenEmbedding(config.d_model, token_layout=config.token_layout, init=config.init, rngs=rngs)
        self.position = position_code(config, rngs)
        self.condition = condition_mlp(config.d_model, config, style, rngs) if config.use_global_view else None
        self.rotary = style.rotary()
        self.blocks = layers.stack(config.n_decoder_layers, lambda: layers.Block(
            config.d_model, style, cross_attention=config.use_cross_attention, rngs=rngs))
        self.norm = layers.layer_norm(config.d_model, style, rngs)
        self.heads = Heads(config.d_model, style, token_layout=config.token_layout,
                           hidden_dim=config.head_hidden_dim, rngs=rngs)
        self._zero_structure_outputs(config.zero_init_paths)

    def _zero_structure_outputs(self, paths: tuple[str, ...]) -> None:
        """Zero the last projection of the named structure paths (``ModelConfig.zero_init_paths``).

        The reference's residual condition MLP also has its first layer zeroed (its residual
        path would carry G otherwise), so the condition starts at exactly 0.
        """
        if "cross_attention" in paths:
            for block in self.blocks:
                if block.cross_attention is not None:
                    zero_linear(block.cross_attention.out)
        if "global_view" in paths and self.condition is not None:
            zero_linear(self.condition.down)
            if isinstance(self.condition, layers.ResidualMLP):
                zero_linear(self.condition.input)

    # -- inputs ------------------------------------------------------------------

    def embed_inputs(self, inputs: dict[str, jax.Array], batch: dict[str, jax.Array]) -> jax.Array:
        shape_BxT = inputs["type"].shape
        segment_start = jnp.broadcast_to(batch["segment_start_frame"][:, None], shape_BxT)
        segment_end = jnp.broadcast_to(batch["segment_end_frame"][:, None], shape_BxT)
        return (self.embed(inputs["type"], inputs["pitch"], inputs["velocity"], inputs["duration"])
                + self.position(inputs["song_frame"], batch["song_n_frames"], segment_start, segment_end))

    def bar_condition(self, per_bar_BxGxD: jax.Array | None, bar_BxT: jax.Array) -> jax.Array | None:
        if self.condition is None or per_bar_BxGxD is None:
            return None
        return self.condition(gather_bars(per_bar_BxGxD, bar_BxT)).astype(self.float_dtype)

    def input_condition(self, per_bar_BxGxD: jax.Array | None, inputs: dict[str, jax.Array],
                        batch: dict[str, jax.Array]) -> jax.Array | None:
        """G vector of each input token's own bar; G covers bars [global_start_bar, global_start_bar + G)."""
        return self.bar_condition(per_bar_BxGxD, inputs["bar"] - batch["global_start_bar"][:, None])

    @staticmethod
    def window_frames(song_frame_BxT: jax.Array, batch: dict[str, jax.Array]) -> jax.Array:
        """Frames from the window's start: the decoder's rotary positions (the reference's ``pos``)."""
        return song_frame_BxT - batch["window_start_bar"][:, None] * FRAMES_PER_BAR

    def self_rope(self, inputs: dict[str, jax.Array], batch: dict[str, jax.Array]) -> Rope:
        return self.rotary.angles(self.window_frames(inputs["song_frame"], batch))

    def cross_query_rope(self, song_frame_BxT: jax.Array, batch: dict[str, jax.Array]) -> Rope:
        """Rotary angles of the cross-attention queries: frames from the window start, or within the segment."""
        if self.config.cross_attention_positions == "segment":
            return self.rotary.angles(song_frame_BxT - batch["segment_start_frame"][:, None])
        return self.rotary.angles(self.window_frames(song_frame_BxT, batch))

    def context_keys_values(self, context_BxSxD: jax.Array | None, batch: dict[str, jax.Array]) -> tuple:
        """Per block, the cross-attention (keys, values) of the encoded contexts (None without).

        Key positions are the context notes' frames from the target window's start
        (the reference's ``context.pos``), or from their own segment's start. The
        sampler computes these once per segment (SFS.md section 4) and reuses them.
        """
        if context_BxSxD is None:
            return (None,) * len(self.blocks)
        context = context_BxSxD.astype(jnp.dtype(self.config.compute_dtype))
        song_frame_BxS = batch["context_song_frame"]
        if self.config.cross_attention_positions == "segment":
            rope = self.rotary.angles(song_frame_BxS - batch["context_segment_start_frame"])
        else:
            rope = self.rotary.angles(self.window_frames(song_frame_BxS, batch))
        return tuple(None if block.cross_attention is None else block.cross_attention.keys_values(context, rope)
                     for block in self.blocks)

    def context_caches(self, context_BxSxD: jax.Array | None, batch: dict[str, jax.Array]) -> tuple:
        """``context_keys_values`` as head-major ``KVCache`` per block, the layout ``step`` attends to fastest."""
        return tuple(None if kv is None else KVCache.from_keys_values(*kv)
                     for kv in self.context_keys_values(context_BxSxD, batch))

    @staticmethod
    def cross_mask(batch: dict[str, jax.Array], visible_slots: tuple[int, ...],
                   query_valid_BxT: jax.Array) -> jax.Array:
        """BxTxS: real queries see the context tokens of the slots this model may use."""
        slot_visible = jnp.isin(batch["context_slot"], jnp.asarray(visible_slots, jnp.int32))
        return query_valid_BxT[:, :, None] & slot_visible[:, None, :]

    # -- passes ------------------------------------------------------------------

    def __call__(self, batch: dict[str, jax.Array], context_BxSxD: jax.Array | None,
                 per_bar_BxGxD: jax.Array | None, visible_slots: tuple[int, ...]) -> jax.Array:
        """Final hidden states BxTxD for every decoder position (teacher forcing)."""
        return self.prefill(batch, context_BxSxD, per_bar_BxGxD, visible_slots)[0]

    def prefill(self, batch: dict[str, jax.Array], context_BxSxD: jax.Array | None,
                per_bar_BxGxD: jax.Array | None,
                visible_slots: tuple[int, ...]) -> tuple[jax.Array, tuple[KVCache, ...]]:
        """``__call__`` plus each block's self-attention cache of the T decoder inputs.

        The sampler's prefill: a teacher-forced prefix in one pass, after which ``step``
        continues from the cache (slots past a row's prefix are overwritten before use).
        """
        return self.run(layout_lib.decoder_inputs(batch, self.layout), batch, context_BxSxD, per_bar_BxGxD,
                        visible_slots)

    def run(self, inputs: dict[str, jax.Array], batch: dict[str, jax.Array], context_BxSxD: jax.Array | None,
            per_bar_BxGxD: jax.Array | None, visible_slots: tuple[int, ...],
            features: dict[str, jax.Array] | None = None) -> tuple[jax.Array, tuple[KVCache, ...]]:
        """The decoder over given input fields; ``features`` (if a dict) receives intermediate outputs."""
        valid_BxT = inputs["type"] != int(TokenType.PAD)
        if self.layout == "v1":  # the START input is real, the last target token's slot is the PAD test
            valid_BxT = batch["target_type"] != int(TokenType.PAD)
        x = self.embed_inputs(inputs, batch)
        condition = self.input_condition(per_bar_BxGxD, inputs, batch)
        if features is not None:
            features["decoder_input"] = x
        n_tokens = x.shape[1]
        self_mask = causal_mask(n_tokens)[None] & valid_BxT[:, :, None] & valid_BxT[:, None, :]
        lengths = jnp.sum(valid_BxT, axis=1)
        fast = FastPath(is_causal=True, query_lengths_B=lengths, key_lengths_B=lengths)
        cross_mask = None if context_BxSxD is None else self.cross_mask(batch, visible_slots, valid_BxT)
        rope = self.self_rope(inputs, batch)
        cross_rope = self.cross_query_rope(inputs["song_frame"], batch)
        cache = []
        for block, context_kv in zip(self.blocks, self.context_keys_values(context_BxSxD, batch), strict=True):
            x, layer_cache = block.prefill(x, rope, self_mask, condition_BxTxD=condition, context_kv=context_kv,
                                           cross_mask_BxTxS=cross_mask, fast_path=fast, cross_rope_BxT=cross_rope)
            cache.append(layer_cache)
        return self.norm(x), tuple(cache)

    def init_cache(self, batch_size: int, max_tokens: int) -> tuple[KVCache, ...]:
        """An empty self-attention cache per block for ``step``, L = max_tokens slots."""
        config = self.config
        return tuple(KVCache.zeros(batch_size, max_tokens, config.n_heads, config.head_dim,
                                   jnp.dtype(config.compute_dtype)) for _ in self.blocks)

    def step(self, inputs_Bx1: dict[str, jax.Array], batch: dict[str, jax.Array], cache: tuple[KVCache, ...],
             slot: jax.Array, context_kv: tuple, cross_mask_Bx1xS: jax.Array | None,
             per_bar_BxGxD: jax.Array | None) -> tuple[jax.Array, tuple[KVCache, ...]]:
        """Hidden state Bx1xD of one decoder input of every row (``TARGET_FIELDS``, Bx1), cached in ``slot``.

        The input is embedded, placed and G-conditioned exactly as ``__call__`` does,
        so the result equals row ``slot`` of the teacher-forced pass. ``batch``
        supplies the per-row scalars only; ``context_kv`` and ``cross_mask_Bx1xS``
        come from ``context_caches`` / ``cross_mask``.
        """
        inputs_Bx1 = layout_lib.as_inputs(inputs_Bx1, batch, self.layout)
        x = self.embed_inputs(inputs_Bx1, batch)
        condition = self.input_condition(per_bar_BxGxD, inputs_Bx1, batch)
        rope = self.self_rope(inputs_Bx1, batch)
        cross_rope = self.cross_query_rope(inputs_Bx1["song_frame"], batch)
        new_cache = []
        for block, layer_cache, layer_kv in zip(self.blocks, cache, context_kv, strict=True):
            x, layer_cache = block.decode_step(x, rope, layer_cache, slot, condition_Bx1xD=condition,
                                               context_kv=layer_kv, cross_mask_Bx1xS=cross_mask_Bx1xS,
                                               cross_rope_Bx1=cross_rope)
            new_cache.append(layer_cache)
        return self.norm(x), tuple(new_cache)
