"""The causal decoder over target tokens and its factorized heads (SFS.md section 3).

Letters: B batch, T target tokens, S context tokens, G bars, D model width.

Input token i is target token i-1 (a START vector for i = 0), placed at its own
song frame, so neither the rotary position nor the G vector of token i-1 leaks
where token i falls. Heads: token type; pitch; velocity given the pitch; duration
given pitch and velocity (teacher-forced with the true values in training, the
sampled ones in generation).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from sfs_jax.model import layers
from sfs_jax.model.attention import FastPath, KVCache, causal_mask
from sfs_jax.model.config import ModelConfig
from sfs_jax.model.embeddings import START_TYPE, PositionCode, TokenEmbedding, pitch_index
from sfs_jax.model.global_view import gather_bars
from sfs_jax.music import notes as notes_lib
from sfs_jax.music.tokenizer import NUM_DURATIONS, NUM_TOKEN_TYPES, TokenType

TARGET_FIELDS = ("type", "pitch", "velocity", "duration", "song_frame", "bar")


def start_inputs(batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """The decoder's first input per row (fields ``TARGET_FIELDS``, shape B): START at the window start."""
    start_frame = batch["window_start_bar"] * notes_lib.FRAMES_PER_BAR
    return {"type": jnp.full_like(start_frame, START_TYPE), "pitch": jnp.zeros_like(start_frame),
            "velocity": jnp.zeros_like(start_frame), "duration": jnp.zeros_like(start_frame),
            "song_frame": start_frame, "bar": batch["window_start_bar"]}


def shift_right(batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Decoder inputs: target fields moved one step right, START in front."""
    first = start_inputs(batch)
    return {name: jnp.concatenate([first[name][:, None], batch[f"target_{name}"][:, :-1]], axis=1)
            for name in TARGET_FIELDS}


class Heads(nnx.Module):
    """Type and pitch from the hidden state; velocity and duration conditioned on the note so far."""

    def __init__(self, d_model: int, *, rngs: nnx.Rngs) -> None:
        self.type = nnx.Linear(d_model, NUM_TOKEN_TYPES, rngs=rngs)
        self.pitch = nnx.Linear(d_model, notes_lib.NUM_PITCHES, rngs=rngs)
        self.pitch_condition = nnx.Embed(notes_lib.NUM_PITCHES + 1, d_model, rngs=rngs)
        self.velocity_condition = nnx.Embed(notes_lib.NUM_VELOCITIES, d_model, rngs=rngs)
        self.velocity = layers.MLP(d_model, d_model, notes_lib.NUM_VELOCITIES, dtype=jnp.float32, rngs=rngs)
        self.duration = layers.MLP(d_model, d_model, NUM_DURATIONS, dtype=jnp.float32, rngs=rngs)

    def type_logits(self, h_BxTxD: jax.Array) -> jax.Array:
        logits = self.type(h_BxTxD)
        return logits.at[..., int(TokenType.PAD)].set(-1e9)  # PAD is never a prediction

    def pitch_logits(self, h_BxTxD: jax.Array) -> jax.Array:
        return self.pitch(h_BxTxD)

    def velocity_logits(self, h_BxTxD: jax.Array, pitch_BxT: jax.Array) -> jax.Array:
        return self.velocity(h_BxTxD + self.pitch_condition(pitch_index(pitch_BxT)))

    def duration_logits(self, h_BxTxD: jax.Array, pitch_BxT: jax.Array, velocity_BxT: jax.Array) -> jax.Array:
        return self.duration(h_BxTxD + self.pitch_condition(pitch_index(pitch_BxT))
                             + self.velocity_condition(jnp.clip(velocity_BxT, 0, 127)))


class Decoder(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs) -> None:
        dtype = jnp.dtype(config.compute_dtype)
        self.config = config
        self.embed = TokenEmbedding(config.d_model, rngs=rngs)
        self.position = PositionCode(config.d_model, use_segment_positions=config.use_segment_positions,
                                     max_period_frames=config.max_position_frames, rngs=rngs)
        self.condition = (layers.MLP(config.d_model, config.global_mlp_dim, config.d_model, dtype=dtype,
                                     rngs=rngs) if config.use_global_view else None)
        self.blocks = layers.stack(config.n_decoder_layers, lambda: layers.Block(
            config.d_model, config.n_heads, config.d_ff, cross_attention=config.use_cross_attention,
            rope_base=config.rope_base, dtype=dtype, implementation=config.attention_implementation,
            rngs=rngs))
        self.norm = layers.layer_norm(config.d_model, rngs)
        self.heads = Heads(config.d_model, rngs=rngs)
        self._zero_structure_outputs(config.zero_init_paths)

    def _zero_structure_outputs(self, paths: tuple[str, ...]) -> None:
        """Zero the last projection of the named structure paths (``ModelConfig.zero_init_paths``)."""
        outputs = []
        if "cross_attention" in paths:
            outputs += [block.cross_attention.out for block in self.blocks if block.cross_attention is not None]
        if "global_view" in paths and self.condition is not None:
            outputs.append(self.condition.down)
        for linear in outputs:
            linear.kernel.value = jnp.zeros_like(linear.kernel.value)

    def embed_inputs(self, inputs: dict[str, jax.Array], batch: dict[str, jax.Array]) -> jax.Array:
        shape_BxT = inputs["type"].shape
        segment_start = jnp.broadcast_to(batch["segment_start_frame"][:, None], shape_BxT)
        segment_end = jnp.broadcast_to(batch["segment_end_frame"][:, None], shape_BxT)
        return (self.embed(inputs["type"], inputs["pitch"], inputs["velocity"], inputs["duration"])
                + self.position(inputs["song_frame"], batch["song_n_frames"], segment_start, segment_end))

    def bar_condition(self, per_bar_BxGxD: jax.Array | None, bar_BxT: jax.Array) -> jax.Array | None:
        if self.condition is None or per_bar_BxGxD is None:
            return None
        return self.condition(gather_bars(per_bar_BxGxD, bar_BxT)).astype(jnp.float32)

    def input_condition(self, per_bar_BxGxD: jax.Array | None, inputs: dict[str, jax.Array],
                        batch: dict[str, jax.Array]) -> jax.Array | None:
        """G vector of each input token's own bar; G covers bars [global_start_bar, global_start_bar + G)."""
        return self.bar_condition(per_bar_BxGxD, inputs["bar"] - batch["global_start_bar"][:, None])

    def context_keys_values(self, context_BxSxD: jax.Array | None, batch: dict[str, jax.Array]) -> tuple:
        """Per block, the cross-attention (keys, values) of the encoded contexts (None without).

        The sampler computes these once per segment (SFS.md section 4) and reuses them for every token.
        """
        if context_BxSxD is None:
            return (None,) * len(self.blocks)
        context = context_BxSxD.astype(jnp.dtype(self.config.compute_dtype))
        positions_BxS = batch["context_song_frame"]
        if self.config.cross_attention_positions == "segment":
            positions_BxS = positions_BxS - batch["context_segment_start_frame"]
        return tuple(None if block.cross_attention is None
                     else block.cross_attention.keys_values(context, positions_BxS)
                     for block in self.blocks)

    def cross_query_positions(self, song_frame_BxT: jax.Array, batch: dict[str, jax.Array]) -> jax.Array:
        """Rotary positions of the cross-attention queries: song frames, or frames within the target segment."""
        if self.config.cross_attention_positions == "segment":
            return song_frame_BxT - batch["segment_start_frame"][:, None]
        return song_frame_BxT

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

    def __call__(self, batch: dict[str, jax.Array], context_BxSxD: jax.Array | None,
                 per_bar_BxGxD: jax.Array | None, visible_slots: tuple[int, ...]) -> jax.Array:
        """Final hidden states BxTxD for every target position (teacher forcing)."""
        return self.prefill(batch, context_BxSxD, per_bar_BxGxD, visible_slots)[0]

    def prefill(self, batch: dict[str, jax.Array], context_BxSxD: jax.Array | None,
                per_bar_BxGxD: jax.Array | None,
                visible_slots: tuple[int, ...]) -> tuple[jax.Array, tuple[KVCache, ...]]:
        """``__call__`` plus each block's self-attention cache of the T target positions.

        The sampler's prefill: a teacher-forced prefix in one pass, after which ``step``
        continues from the cache (slots past a row's prefix are overwritten before use).
        """
        inputs = shift_right(batch)
        valid_BxT = batch["target_type"] != int(TokenType.PAD)
        x = self.embed_inputs(inputs, batch)
        condition = self.input_condition(per_bar_BxGxD, inputs, batch)
        n_tokens = x.shape[1]
        self_mask = causal_mask(n_tokens)[None] & valid_BxT[:, :, None] & valid_BxT[:, None, :]
        lengths = jnp.sum(valid_BxT, axis=1)
        fast = FastPath(is_causal=True, query_lengths_B=lengths, key_lengths_B=lengths)
        cross_mask = None if context_BxSxD is None else self.cross_mask(batch, visible_slots, valid_BxT)
        cross_positions = self.cross_query_positions(inputs["song_frame"], batch)
        cache = []
        for block, context_kv in zip(self.blocks, self.context_keys_values(context_BxSxD, batch), strict=True):
            x, layer_cache = block.prefill(x, inputs["song_frame"], self_mask, condition_BxTxD=condition,
                                           context_kv=context_kv, cross_mask_BxTxS=cross_mask, fast_path=fast,
                                           cross_positions_BxT=cross_positions)
            cache.append(layer_cache)
        return self.norm(x), tuple(cache)

    def init_cache(self, batch_size: int, max_tokens: int) -> tuple[KVCache, ...]:
        """An empty self-attention cache per block for ``step``, L = max_tokens slots."""
        config = self.config
        return tuple(KVCache.zeros(batch_size, max_tokens, config.n_heads, config.head_dim,
                                   jnp.dtype(config.compute_dtype)) for _ in self.blocks)

    def step(self, inputs_Bx1: dict[str, jax.Array], batch: dict[str, jax.Array], cache: tuple[KVCache, ...],
             t: jax.Array, context_kv: tuple, cross_mask_Bx1xS: jax.Array | None,
             per_bar_BxGxD: jax.Array | None) -> tuple[jax.Array, tuple[KVCache, ...]]:
        """Hidden state Bx1xD of token t of every row, given input token t (``TARGET_FIELDS``, Bx1).

        Input t is target token t-1 (``start_inputs`` for t = 0), embedded, placed and
        G-conditioned exactly as ``__call__`` does, so the result equals row t of the
        teacher-forced pass. ``batch`` supplies the per-row scalars only; ``context_kv``
        and ``cross_mask_Bx1xS`` come from ``context_caches`` / ``cross_mask``.
        """
        x = self.embed_inputs(inputs_Bx1, batch)
        condition = self.input_condition(per_bar_BxGxD, inputs_Bx1, batch)
        cross_position = self.cross_query_positions(inputs_Bx1["song_frame"], batch)
        new_cache = []
        for block, layer_cache, layer_kv in zip(self.blocks, cache, context_kv, strict=True):
            x, layer_cache = block.decode_step(x, inputs_Bx1["song_frame"], layer_cache, t,
                                               condition_Bx1xD=condition, context_kv=layer_kv,
                                               cross_mask_Bx1xS=cross_mask_Bx1xS, cross_position_Bx1=cross_position)
            new_cache.append(layer_cache)
        return self.norm(x), tuple(new_cache)
