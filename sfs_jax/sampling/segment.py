"""Sampling target windows with a KV cache, in one jitted loop (SFS.md section 4).

Letters: B batch (independent windows), T token budget (the most a window may take), S context
tokens, G bars, D model width, V classes of one head.

Place in the data flow: [6] between the model [5] and the notes [7]. A caller (the
composer, a server) builds a batch in the loader's format for the windows to fill:
contexts, bar fields and scalars condition each window; the ``target_*`` fields are
read only for an optional teacher-forced prefix. ``SegmentSampler.start`` cuts the
contexts to their real length (``CONTEXT_LENGTHS``), encodes them and the global
view G once and computes every decoder layer's cross-attention keys/values once;
``sample_chunk`` then advances all rows token by token inside one
``lax.while_loop`` (no host round trip per token), writing each token's
self-attention keys/values into a cache sized to the prefix and doubled whenever it
fills (``CACHE_LENGTHS``), so a step attends over what the window has, not over its
budget. ``benchmarks/decode_profile.py`` measures what each of these saves.

Why: the original SFS re-runs the whole decoder over the prefix for every token and
samples in a Python loop with host syncs, which is what limits it to 2.03 beats/s
(SFS.md sections 4 and 6). ``sample_window_no_cache`` keeps that method, with the
same masks and sampling, as the benchmark's baseline.

The grammar (SFS.md sections 2 and 4; ``tokenizer``'s target form) is enforced by
logit masks, so every window decodes: the first token is a FRAME; a NOTE follows a
FRAME or a NOTE and only if a pitch above the frame's previous pitch exists; pitches
rise strictly within a frame; FRAMEs stop at ``n_frames`` and END comes only after
the last frame (whose notes, like in training, come between its FRAME and END); a
NOTE is refused when the rest of the budget is needed for the remaining FRAMEs and
END, so every window ends within the budget T.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from sfs_jax.data import examples as examples_lib
from sfs_jax.model import token_layout as layout_lib
from sfs_jax.model.attention import KVCache
from sfs_jax.model.token_layout import TARGET_FIELDS, start_inputs
from sfs_jax.music import tokenizer
from sfs_jax.music.notes import FRAMES_PER_BAR, FRAMES_PER_BEAT, MAX_PITCH, MIN_PITCH, NUM_PITCHES, ONSET
from sfs_jax.music.tokenizer import DUR, FRAME, PITCH, TYPE, VEL, TokenType

HEADS = ("type", "pitch", "velocity", "duration")
_PAD, _FRAME, _NOTE, _END = (int(t) for t in TokenType)
_NO_PITCH = MIN_PITCH - 1  # "last pitch" of a frame with no note yet: every pitch is above it
# Batch keys the sampler reads: what conditions a window, and the target fields of a prefix.
_WINDOW_KEYS = ("window_start_bar", "segment_start_frame", "segment_end_frame", "song_n_frames",
                "global_start_bar", "context_slot", "context_song_frame", "context_segment_start_frame")
_INPUT_KEYS = (*examples_lib.CONTEXT_KEYS, "bar_embedding", "bar_known", "bar_valid",
               *(k for k in examples_lib.SCALAR_KEYS if k != "n_beats"),
               "target_type", "target_pitch", "target_velocity", "target_duration")


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HeadSampling:
    """How one head draws: temperature (0 = argmax), top_k (0 = off), nucleus top_p (1 = off)."""

    temperature: float = 1.0
    top_p: float = 0.975
    top_k: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """Sampling knobs shared by the four heads, with optional per-head overrides.

    SFS.md section 4 samples every head with nucleus p = 0.975 (the paper's evaluation
    used 1.0). ``max_tokens`` is the token budget T of a window (the cache grows up to it);
    None uses the batch's target length (its bucket). The settings reach the compiled
    sampler as values (``knobs``), so changing them costs no compilation.
    """

    temperature: float = 1.0
    top_p: float = 0.975
    top_k: int = 0
    max_tokens: int | None = None
    type_head: HeadSampling | None = None
    pitch_head: HeadSampling | None = None
    velocity_head: HeadSampling | None = None
    duration_head: HeadSampling | None = None

    def __post_init__(self) -> None:
        HeadSampling(self.temperature, self.top_p, self.top_k)  # validates the shared knobs
        if self.max_tokens is not None and self.max_tokens < 2:
            raise ValueError(f"max_tokens must be >= 2 (a FRAME and END), got {self.max_tokens}")

    def head(self, name: str) -> HeadSampling:
        """The knobs of head ``name`` (one of ``HEADS``)."""
        if name not in HEADS:
            raise ValueError(f"unknown head {name!r}; choose from {HEADS}")
        override = getattr(self, f"{name}_head")
        return override if override is not None else HeadSampling(self.temperature, self.top_p, self.top_k)

    def knobs(self) -> Knobs:
        """The four heads' settings as arrays: run-time values of the compiled sampler."""
        heads = [self.head(name) for name in HEADS]
        return Knobs(jnp.asarray([h.temperature for h in heads], jnp.float32),
                     jnp.asarray([h.top_p for h in heads], jnp.float32),
                     jnp.asarray([h.top_k for h in heads], jnp.int32))


@struct.dataclass
class Knobs:
    """Temperature, top-p and top-k of each head (index ``HEADS``), traced, not compiled in.

    Why arrays: with the settings as static jit arguments every new (temperature,
    top-p, top-k) compiled the sampler again (13-30 s on a CPU) and kept another copy;
    as values, one compilation per model and shape serves every setting.
    """

    temperature_H: jax.Array
    top_p_H: jax.Array
    top_k_H: jax.Array

    def head(self, index: int) -> tuple[jax.Array, jax.Array, jax.Array]:
        return self.temperature_H[index], self.top_p_H[index], self.top_k_H[index]


# Context lengths the sampler compiles for: a batch's contexts are cut to the smallest that holds
# its longest real context (contexts are packed at the front, padding after). Why: the composer
# pads every window to the largest context bucket (1536) so shapes never change, and every
# decoding step then attended over all of them; a typical 8-bar window has 400-700 real ones.
# Steps of 1.5x keep the padding under a third and the compilations per model at most eight.
CONTEXT_LENGTHS = (128, 256, 384, 512, 768, 1024, 1536, 2048)


def context_length(real_tokens: int, padded: int) -> int:
    """The sampler's context length S for contexts of ``real_tokens`` padded to ``padded`` (never longer)."""
    fitting = [length for length in CONTEXT_LENGTHS if length >= max(real_tokens, 1)]
    return min(fitting[0] if fitting else padded, padded)


def trim_contexts(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The batch with its context keys cut to ``context_length`` (only padding is dropped)."""
    slot_BxS = np.asarray(batch["context_slot"])
    real_BxS = slot_BxS != 0
    last_real = int(np.max(np.nonzero(real_BxS.any(axis=0))[0], initial=-1)) + 1
    length = context_length(last_real, slot_BxS.shape[1])
    return {**batch, **{key: np.asarray(batch[key])[:, :length] for key in examples_lib.CONTEXT_KEYS}}


# Self-attention cache lengths: a window starts with the smallest that holds its prefix and one
# more bar's FRAMEs, and the cache doubles whenever it fills (``SegmentSampler.sample_chunk``),
# up to the token budget T. Why: every decoding step attends over the whole cache, and a budget
# of 1024 held for a window that ends after 490 tokens made most of that work padding.
# Each length compiles the decoding loop once (about 3.5 s at ``paper`` size on 2 cores), so the
# ladder starts at 512: an 8-bar POP909 window (about 500 tokens) usually runs on one program.
CACHE_LENGTHS = (512, 1024, 2048, 4096, 8192)
_CACHE_HEADROOM = FRAMES_PER_BAR  # slots past the prefix a fresh cache has room for


def cache_length(needed: int, max_tokens: int) -> int:
    """The cache length for ``needed`` slots under a budget of ``max_tokens`` (never longer than the budget)."""
    fitting = [length for length in CACHE_LENGTHS if length >= needed]
    return min(fitting[0] if fitting else max_tokens, max_tokens)


_REPLAY = SamplingConfig(temperature=0.0)  # forced tokens ignore their draws; argmax is the cheapest


# ---------------------------------------------------------------------------
# State
# ---------------------------------------------------------------------------


@struct.dataclass
class Window:
    """What conditions the windows, computed once by ``start`` (SFS.md section 4).

    ``batch`` holds the per-row scalars and context positions the decoder reads;
    ``context_kv`` one cross-attention ``KVCache`` per decoder layer (None entries
    for the no-cache sampler, which recomputes them like the original).
    """

    batch: dict[str, jax.Array]
    context_BxSxD: jax.Array | None
    context_kv: tuple
    cross_mask_Bx1xS: jax.Array | None
    per_bar_BxGxD: jax.Array | None
    n_frames_B: jax.Array
    prefix_len_B: jax.Array
    lead: int = struct.field(pytree_node=False, default=0)  # ``token_layout.LEAD``: token t's input is in slot t - lead


@struct.dataclass
class SamplerState:
    """The loop carry: token t = ``step`` is decoded next for every row.

    ``tokens_BxTx5`` columns are ``tokenizer.TOKEN_FIELDS`` (frame relative to the
    window start); finished rows hold PAD after their END. ``logprob_BxT`` is each
    token's log-probability under the untempered, unmasked model (summed over the
    heads it uses), so a forced sequence scores like the teacher-forced loss.
    """

    step: jax.Array
    tokens_BxTx5: jax.Array
    logprob_BxT: jax.Array
    frames_emitted_B: jax.Array
    last_pitch_B: jax.Array
    done_B: jax.Array
    key: jax.Array
    cache: tuple[KVCache, ...]
    window: Window
    row_B: jax.Array  # each row's index in the batch ``start`` was given (rows leave it when they finish)
    batch_rows: int = struct.field(pytree_node=False, default=1)  # that batch's size

    @property
    def max_tokens(self) -> int:
        return self.tokens_BxTx5.shape[1]

    @property
    def cache_tokens(self) -> int:
        """Slots of the self-attention cache (grows up to ``max_tokens``); ``max_tokens`` without a cache."""
        return self.cache[0].v_BxHxLxK.shape[2] if self.cache else self.max_tokens

    @property
    def last_cached_step(self) -> int:
        """The last token t the cache has a slot for (input t - lead goes into slot t - lead)."""
        return min(self.cache_tokens + self.window.lead, self.max_tokens)


# ---------------------------------------------------------------------------
# Drawing from one head
# ---------------------------------------------------------------------------


def _keep_top_k_and_p(logits_BxV: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """The top ``top_k`` classes (0: all), then the nucleus: each kept while the mass before it is <= top_p.

    The reference's nucleus rule (a class whose preceding mass equals p exactly stays;
    the top class always stays); p >= 1 keeps every class. One sort serves both, and k
    and p are traced values.
    """
    n_classes = logits_BxV.shape[-1]
    sorted_BxV = jnp.flip(jnp.sort(logits_BxV, axis=-1), axis=-1)
    kth_Bx1 = jnp.take(sorted_BxV, jnp.clip(top_k - 1, 0, n_classes - 1), axis=-1)[:, None]
    keep_BxV = (top_k <= 0) | (logits_BxV >= kth_Bx1)
    in_top_k_sorted_BxV = (top_k <= 0) | (jnp.arange(n_classes) < top_k)
    probs_BxV = jax.nn.softmax(jnp.where(in_top_k_sorted_BxV, sorted_BxV, -jnp.inf), axis=-1)
    mass_before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
    threshold_Bx1 = jnp.min(jnp.where(mass_before_BxV <= top_p, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
    keep_BxV &= (top_p >= 1) | (logits_BxV >= threshold_Bx1)
    return jnp.where(keep_BxV, logits_BxV, -jnp.inf)


def gumbel_draw(key: jax.Array, logits_BxV: jax.Array, rows: tuple[jax.Array, int] | None = None) -> jax.Array:
    """``jax.random.categorical``'s draw (argmax of logits plus Gumbel noise), row by row of the start batch.

    ``rows`` = (each row's index in the batch the window started with, that batch's
    size): row r takes row r of the noise that batch would draw, so a row draws the
    same class whether or not finished rows have left the batch. Without ``rows``,
    the rows are the whole batch: exactly ``jax.random.categorical(key, logits_BxV)``.
    """
    row_B, batch_rows = rows if rows is not None else (jnp.arange(logits_BxV.shape[0]), logits_BxV.shape[0])
    noise_BxV = jax.random.gumbel(key, (batch_rows, logits_BxV.shape[-1]), logits_BxV.dtype)[row_B]
    return jnp.argmax(noise_BxV + logits_BxV, axis=-1)


def sample_logits(key: jax.Array, logits_BxV: jax.Array, allowed_BxV: jax.Array | None,
                  head: HeadSampling | tuple[jax.Array, jax.Array, jax.Array],
                  rows: tuple[jax.Array, int] | None = None) -> jax.Array:
    """One class per row: grammar mask first, then temperature, top-k, top-p (SFS.md section 4).

    ``head``: a ``HeadSampling``, or (temperature, top_p, top_k) as traced scalars
    (``Knobs.head``). Temperature 0 or top-k 1 take the argmax. A row with no allowed
    class falls back to all classes (only rows whose draw is discarded, e.g. the pitch
    of a FRAME token, can have one). ``rows``: see ``gumbel_draw``.
    """
    if isinstance(head, HeadSampling):
        head = (jnp.float32(head.temperature), jnp.float32(head.top_p), jnp.int32(head.top_k))
    temperature, top_p, top_k = head
    logits_BxV = logits_BxV.astype(jnp.float32)
    if allowed_BxV is not None:
        allowed_BxV = allowed_BxV | ~jnp.any(allowed_BxV, axis=-1, keepdims=True)
        logits_BxV = jnp.where(allowed_BxV, logits_BxV, -jnp.inf)
    greedy = (temperature == 0) | (top_k == 1)
    scaled_BxV = logits_BxV / jnp.where(greedy, 1.0, temperature)
    # The sort behind top-k / top-p runs only when a setting cuts classes (a run-time branch).
    cuts = ~greedy & ((top_k > 0) | (top_p < 1))
    kept_BxV = jax.lax.cond(cuts, lambda x: _keep_top_k_and_p(x, top_k, top_p), lambda x: x, scaled_BxV)
    drawn = gumbel_draw(key, kept_BxV, rows)
    return jnp.where(greedy, jnp.argmax(logits_BxV, axis=-1), drawn).astype(jnp.int32)


def _log_prob(logits_BxV: jax.Array, label_B: jax.Array) -> jax.Array:
    log_probs_BxV = jax.nn.log_softmax(logits_BxV.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(log_probs_BxV, label_B[:, None], axis=-1)[:, 0]


# ---------------------------------------------------------------------------
# Grammar masks (SFS.md section 4)
# ---------------------------------------------------------------------------


def type_mask(state: SamplerState) -> jax.Array:
    """Bx4 allowed token types at token t = ``state.step``, indexed by TokenType.

    FRAME while frames remain (so the first token is a FRAME); END only once all
    n_frames FRAMEs are out; NOTE only inside a frame, below the top pitch, and when
    after it the budget still holds the remaining FRAMEs and END.
    """
    remaining_frames_B = state.window.n_frames_B - state.frames_emitted_B
    tokens_left_after_note = state.max_tokens - state.step - 1
    allowed = {
        _PAD: jnp.zeros_like(state.done_B),
        _FRAME: remaining_frames_B > 0,
        _NOTE: ((state.frames_emitted_B > 0) & (state.last_pitch_B < MAX_PITCH)
                & (tokens_left_after_note >= remaining_frames_B + 1)),
        _END: remaining_frames_B <= 0,
    }
    return jnp.stack([allowed[int(t)] for t in TokenType], axis=-1)


def pitch_mask(last_pitch_B: jax.Array) -> jax.Array:
    """Bx88: pitches strictly above the previous pitch of the frame (SFS.md section 2)."""
    return (MIN_PITCH + jnp.arange(NUM_PITCHES))[None, :] > last_pitch_B[:, None]


# ---------------------------------------------------------------------------
# One token
# ---------------------------------------------------------------------------


def _window_positions(frame_BxT: jax.Array, window: Window) -> tuple[jax.Array, jax.Array]:
    """Song frame and bar of window-relative frames, as ``examples._target_tokens`` sets them.

    END sits one frame past the window and belongs to its last bar, hence the clip.
    """
    start_bar_B = window.batch["window_start_bar"]
    song_frame_BxT = start_bar_B[:, None] * FRAMES_PER_BAR + frame_BxT
    end_bar_B = start_bar_B + (window.n_frames_B + FRAMES_PER_BAR - 1) // FRAMES_PER_BAR
    return song_frame_BxT, jnp.minimum(song_frame_BxT // FRAMES_PER_BAR, end_bar_B[:, None] - 1)


def _target_fields(tokens_BxTx5: jax.Array, window: Window) -> dict[str, jax.Array]:
    """The tokens as the decoder's target fields (``TARGET_FIELDS``, BxT)."""
    song_frame, bar = _window_positions(tokens_BxTx5[..., FRAME], window)
    return {"type": tokens_BxTx5[..., TYPE], "pitch": tokens_BxTx5[..., PITCH],
            "velocity": tokens_BxTx5[..., VEL], "duration": tokens_BxTx5[..., DUR],
            "song_frame": song_frame, "bar": bar}


def step_inputs(state: SamplerState) -> dict[str, jax.Array]:
    """Decoder input that predicts token t (Bx1): token t-1, or v1's START at t = 0 (``token_layout``)."""
    t = state.step
    previous_Bx1x5 = jax.lax.dynamic_slice_in_dim(state.tokens_BxTx5, jnp.maximum(t - 1, 0), 1, axis=1)
    previous = _target_fields(previous_Bx1x5, state.window)
    start = start_inputs(state.window.batch)
    return {name: jnp.where(t == 0, start[name][:, None], previous[name]) for name in TARGET_FIELDS}


def _choose(key: jax.Array, logits_BxV: jax.Array, allowed_BxV: jax.Array | None, head: tuple,
            forced_B: jax.Array, given_B: jax.Array, rows: tuple[jax.Array, int],
            offset: int = 0) -> tuple[jax.Array, jax.Array]:
    """The forced value or a draw (class + offset), and its untempered log-probability."""
    value_B = jnp.where(forced_B, given_B, sample_logits(key, logits_BxV, allowed_BxV, head, rows) + offset)
    return value_B, _log_prob(logits_BxV, jnp.clip(value_B - offset, 0, logits_BxV.shape[-1] - 1))


def choose_token(heads: nnx.Module, h_BxD: jax.Array, state: SamplerState,
                 knobs: Knobs) -> tuple[jax.Array, jax.Array]:
    """Token t of every row (Bx5, frame column still 0) and its log-probability.

    Type, then pitch, then velocity given the pitch, then duration given both
    (SFS.md section 3), each with its own key from the step folded into the key.
    Prefix rows take their given values, and the later heads are conditioned on
    them, so a forced token costs the same and scores like teacher forcing.
    """
    t = state.step
    layout = heads.token_layout
    keys = jax.random.split(jax.random.fold_in(state.key, t), len(HEADS))
    forced_B = (t < state.window.prefix_len_B) & ~state.done_B
    given_Bx5 = jax.lax.dynamic_index_in_dim(state.tokens_BxTx5, t, axis=1, keepdims=False)
    # The type head draws a class of its layout (the reference's FRAME class is END after the last frame).
    rows = (state.row_B, state.batch_rows)
    type_logits = heads.type_logits(h_BxD)
    drawn_class = sample_logits(keys[0], type_logits, layout_lib.class_allowed(type_mask(state), layout),
                                knobs.head(0), rows)
    frames_left_B = state.window.n_frames_B - state.frames_emitted_B
    token_type = jnp.where(forced_B, given_Bx5[:, TYPE], layout_lib.class_to_type(drawn_class, frames_left_B, layout))
    type_lp = _log_prob(type_logits, layout_lib.type_class(token_type, layout))
    pitch, pitch_lp = _choose(keys[1], heads.pitch_logits(h_BxD), pitch_mask(state.last_pitch_B),
                              knobs.head(1), forced_B, given_Bx5[:, PITCH], rows, offset=MIN_PITCH)
    velocity, velocity_lp = _choose(keys[2], heads.velocity_logits(h_BxD, pitch), None,
                                    knobs.head(2), forced_B, given_Bx5[:, VEL], rows)
    duration, duration_lp = _choose(keys[3], heads.duration_logits(h_BxD, pitch, velocity), None,
                                    knobs.head(3), forced_B, given_Bx5[:, DUR], rows)
    token_type = jnp.where(state.done_B, _PAD, token_type)
    is_note = token_type == _NOTE
    token_Bx5 = jnp.stack([token_type, pitch, velocity, duration, jnp.zeros_like(pitch)], axis=-1)
    token_Bx5 = jnp.where(is_note[:, None] | (jnp.arange(5) == TYPE), token_Bx5, 0)
    logprob_B = type_lp + jnp.where(is_note, pitch_lp + velocity_lp + duration_lp, 0.0)
    return token_Bx5.astype(jnp.int32), jnp.where(state.done_B, 0.0, logprob_B)


def advance(state: SamplerState, token_Bx5: jax.Array, logprob_B: jax.Array,
            cache: tuple[KVCache, ...]) -> SamplerState:
    """Writes token t (with its frame, recounted like ``tokenizer.frames_from_types``) and moves on."""
    token_type = token_Bx5[:, TYPE]
    is_frame, is_note, is_end = token_type == _FRAME, token_type == _NOTE, token_type == _END
    frame_B = jnp.where(is_frame | is_end, state.frames_emitted_B,
                        jnp.where(is_note, state.frames_emitted_B - 1, 0))
    token_Bx5 = token_Bx5.at[:, FRAME].set(frame_B)
    t = state.step
    return state.replace(
        step=t + 1,
        tokens_BxTx5=jax.lax.dynamic_update_slice(state.tokens_BxTx5, token_Bx5[:, None, :], (0, t, 0)),
        logprob_BxT=jax.lax.dynamic_update_slice(state.logprob_BxT, logprob_B[:, None], (0, t)),
        frames_emitted_B=state.frames_emitted_B + is_frame,
        last_pitch_B=jnp.where(is_frame, _NO_PITCH, jnp.where(is_note, token_Bx5[:, PITCH], state.last_pitch_B)),
        done_B=state.done_B | is_end | (t + 1 >= state.max_tokens),
        cache=cache,
    )


def _cached_token(model: nnx.Module, knobs: Knobs, state: SamplerState) -> SamplerState:
    """Token t through ``Decoder.step`` on the cache (input t-1 goes into slot t - lead)."""
    window = state.window
    slot = state.step - model.decoder.lead
    h_Bx1xD, cache = model.decoder.step(step_inputs(state), window.batch, state.cache, slot,
                                        window.context_kv, window.cross_mask_Bx1xS, window.per_bar_BxGxD)
    token_Bx5, logprob_B = choose_token(model.decoder.heads, h_Bx1xD[:, 0], state, knobs)
    return advance(state, token_Bx5, logprob_B, cache)


# ---------------------------------------------------------------------------
# Jitted entry points over (graphdef, params)
# ---------------------------------------------------------------------------


def _prefix_buffer(batch: Mapping[str, jax.Array], prefix_len_B: jax.Array, max_tokens: int) -> jax.Array:
    """BxTx5 with each row's first prefix_len target tokens (frames recounted later), zeros after."""
    columns = [batch[f"target_{name}"] for name in ("type", "pitch", "velocity", "duration")]
    tokens_BxTx4 = jnp.stack(columns, axis=-1)[:, :max_tokens]
    tokens_BxTx4 = jnp.pad(tokens_BxTx4, ((0, 0), (0, max_tokens - tokens_BxTx4.shape[1]), (0, 0)))
    in_prefix_BxT = jnp.arange(max_tokens)[None, :] < prefix_len_B[:, None]
    tokens_BxTx4 = jnp.where(in_prefix_BxT[..., None], tokens_BxTx4, 0)
    return jnp.pad(tokens_BxTx4, ((0, 0), (0, 0), (0, 1))).astype(jnp.int32)


def _frames_from_types(type_BxT: jax.Array) -> jax.Array:
    """``tokenizer.frames_from_types`` on device: FRAME/NOTE -> FRAMEs so far - 1, END -> count, PAD -> 0."""
    frames_BxT = jnp.cumsum(type_BxT == _FRAME, axis=1) - 1 + (type_BxT == _END)
    return jnp.where(type_BxT == _PAD, 0, frames_BxT).astype(jnp.int32)


def _prefill(model: nnx.Module, state: SamplerState) -> SamplerState:
    """Runs the forced prefix through ``Decoder.prefill`` in one parallel pass, filling the cache.

    Then the first min(prefix_len) tokens are replayed through ``choose_token`` and
    ``advance`` on the pass's hidden states (heads only), so the state is exactly
    what forcing them one step at a time gives; longer prefixes continue as forced
    steps. A sliding window (SFS.md section 4) thus costs about its new bar, not
    all of its bars.
    """
    window = state.window
    # The pass covers the cache's slots only: the prefix and its headroom, not the padded budget.
    tokens_BxTx5 = state.tokens_BxTx5[:, :state.cache_tokens]
    tokens_BxTx5 = tokens_BxTx5.at[..., FRAME].set(_frames_from_types(tokens_BxTx5[..., TYPE]))
    fields = _target_fields(tokens_BxTx5, window)
    batch = {**window.batch, **{f"target_{name}": value for name, value in fields.items()}}
    h_BxTxD, cache = model.decoder.prefill(batch, window.context_BxSxD, window.per_bar_BxGxD, model.visible_slots)
    n_forced = jnp.min(window.prefix_len_B)
    lead = model.decoder.lead

    def forced_token(s: SamplerState) -> SamplerState:
        h_BxD = jax.lax.dynamic_index_in_dim(h_BxTxD, s.step - lead, axis=1, keepdims=False)
        return advance(s, *choose_token(model.decoder.heads, h_BxD, s, _REPLAY.knobs()), s.cache)

    return jax.lax.while_loop(lambda s: s.step < n_forced, forced_token, state.replace(cache=cache))


@functools.partial(jax.jit, static_argnames=("max_tokens", "cache_tokens", "use_cache", "prefill"))
def _start(graphdef: nnx.GraphDef, params: nnx.State, batch: dict[str, jax.Array], n_frames_B: jax.Array,
           prefix_len_B: jax.Array, key: jax.Array, *, max_tokens: int, cache_tokens: int, use_cache: bool,
           prefill: bool) -> SamplerState:
    """Encodes contexts and G once, precomputes cross-attention keys/values, allocates or prefills the cache."""
    model = nnx.merge(graphdef, params)
    decoder = model.decoder
    batch_size = n_frames_B.shape[0]
    context_BxSxD = model.encode_context(batch)
    cross_mask = (None if context_BxSxD is None
                  else decoder.cross_mask(batch, model.visible_slots, jnp.ones((batch_size, 1), bool)))
    use_kv = use_cache and context_BxSxD is not None
    # The reference layout is given the window's first FRAME (token 0) and starts predicting token 1.
    lead = decoder.lead
    window = Window(
        batch={k: batch[k] for k in _WINDOW_KEYS}, context_BxSxD=context_BxSxD,
        context_kv=decoder.context_caches(context_BxSxD if use_kv else None, batch),
        cross_mask_Bx1xS=cross_mask, per_bar_BxGxD=model.global_bars(batch),
        n_frames_B=n_frames_B.astype(jnp.int32), prefix_len_B=jnp.maximum(prefix_len_B, lead).astype(jnp.int32),
        lead=lead)
    tokens_BxTx5 = _prefix_buffer(batch, window.prefix_len_B, max_tokens)
    if lead:
        tokens_BxTx5 = tokens_BxTx5.at[:, 0].set(jnp.asarray([_FRAME, 0, 0, 0, 0], jnp.int32))
    state = SamplerState(
        step=jnp.asarray(lead, jnp.int32), tokens_BxTx5=tokens_BxTx5,
        logprob_BxT=jnp.zeros((batch_size, max_tokens), jnp.float32),
        frames_emitted_B=jnp.full(batch_size, lead, jnp.int32), last_pitch_B=jnp.full(batch_size, _NO_PITCH, jnp.int32),
        done_B=jnp.zeros(batch_size, bool), key=key,
        cache=decoder.init_cache(batch_size, cache_tokens) if use_cache else (), window=window,
        row_B=jnp.arange(batch_size, dtype=jnp.int32), batch_rows=batch_size)
    return _prefill(model, state) if prefill and use_cache else state


# XLA:CPU's copy insertion keeps a while loop's cache updates in place only with its region
# analysis; without it every layer's self-attention cache was copied at every token. A debug
# option of the CPU compiler: other backends ignore it.
DECODE_LOOP_COMPILER_OPTIONS = {"xla_cpu_copy_insertion_use_region_analysis": True}


@functools.partial(jax.jit, donate_argnames=("state",), compiler_options=DECODE_LOOP_COMPILER_OPTIONS)
def sample_chunk(graphdef: nnx.GraphDef, params: nnx.State, state: SamplerState, n_steps: jax.Array,
                 knobs: Knobs) -> SamplerState:
    """Advances every row by up to ``n_steps`` tokens in one ``lax.while_loop``; ``state`` is donated.

    Stops early once every row has emitted END, and when the cache is full
    (``SegmentSampler.sample_chunk`` then grows it and goes on). ``n_steps`` and the
    sampling ``knobs`` are traced, so any chunk size and any setting reuse the one
    compilation per (B, T, S, G, cache) shape; chunked and one-call sampling give the
    same tokens because the key is folded with the token index.
    """
    model = nnx.merge(graphdef, params)
    stop = jnp.minimum(state.step + n_steps, state.last_cached_step)
    return jax.lax.while_loop(lambda s: (s.step < stop) & ~jnp.all(s.done_B),
                              lambda s: _cached_token(model, knobs, s), state)


@functools.partial(jax.jit, static_argnames=("cache_tokens",))
def _padded_caches(caches: tuple[KVCache, ...], cache_tokens: int) -> tuple[KVCache, ...]:
    def pad(cache: KVCache) -> KVCache:
        extra = cache_tokens - cache.v_BxHxLxK.shape[2]
        return KVCache(jnp.pad(cache.kT_BxHxKxL, ((0, 0), (0, 0), (0, 0), (0, extra))),
                       jnp.pad(cache.v_BxHxLxK, ((0, 0), (0, 0), (0, extra), (0, 0))))
    return tuple(pad(cache) for cache in caches)


def grow_cache(state: SamplerState, cache_tokens: int) -> SamplerState:
    """The state with every self-attention cache padded to ``cache_tokens`` slots (the new slots are empty)."""
    return state.replace(cache=_padded_caches(state.cache, cache_tokens))


# Rows that finish early leave the batch: every ``COMPACT_EVERY`` steps the host looks at which
# rows are done, and once at most half are still writing, those go on alone in a batch of the
# next power of two (``take_rows``; one compilation per batch size). A call with fewer than
# ``_COMPACT_MIN_STEPS`` steps left does not compact: gathering the rows' contexts and caches
# would cost more than the steps it saves.
COMPACT_EVERY = 64
_COMPACT_MIN_STEPS = 128


def _per_row(state: SamplerState) -> tuple:
    return (state.tokens_BxTx5, state.logprob_BxT, state.frames_emitted_B, state.last_pitch_B, state.done_B,
            state.row_B, state.cache, state.window)


def _with_rows(state: SamplerState, rows: tuple) -> SamplerState:
    tokens, logprob, frames, last_pitch, done, row, cache, window = rows
    return state.replace(tokens_BxTx5=tokens, logprob_BxT=logprob, frames_emitted_B=frames, last_pitch_B=last_pitch,
                         done_B=done, row_B=row, cache=cache, window=window)


def take_rows(state: SamplerState, index: np.ndarray) -> SamplerState:
    """The state of rows ``index`` (positions in this state; repeats allowed), each keeping its ``row_B``."""
    index = jnp.asarray(index, jnp.int32)
    return _with_rows(state, jax.tree.map(lambda x: x[index], _per_row(state)))


def put_rows(full: SamplerState, part: SamplerState) -> SamplerState:
    """``full`` (the start batch) with the rows ``part`` holds written back at their ``row_B``, at ``part``'s step."""
    if part.cache_tokens > full.cache_tokens:
        full = grow_cache(full, part.cache_tokens)
    rows = jax.tree.map(lambda whole, some: whole.at[part.row_B].set(some), _per_row(full), _per_row(part))
    return _with_rows(full, rows).replace(step=part.step)


@functools.partial(jax.jit, donate_argnames=("state",))
def _no_cache_token(graphdef: nnx.GraphDef, params: nnx.State, state: SamplerState, knobs: Knobs) -> SamplerState:
    """Token t by the original's method: the whole teacher-forced decoder over the padded buffer."""
    model = nnx.merge(graphdef, params)
    window, t = state.window, state.step
    fields = _target_fields(state.tokens_BxTx5, window)
    # Query t must count as a real token; what its own slot holds is never read (causal).
    type_BxT = fields["type"]
    fields["type"] = type_BxT.at[:, t].set(jnp.where(type_BxT[:, t] == _PAD, _FRAME, type_BxT[:, t]))
    batch = {**window.batch, **{f"target_{name}": value for name, value in fields.items()}}
    h_BxTxD = model.decoder(batch, window.context_BxSxD, window.per_bar_BxGxD, model.visible_slots)
    h_BxD = jax.lax.dynamic_index_in_dim(h_BxTxD, t - model.decoder.lead, axis=1, keepdims=False)
    token_Bx5, logprob_B = choose_token(model.decoder.heads, h_BxD, state, knobs)
    return advance(state, token_Bx5, logprob_B, state.cache)


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------


def _row_array(value: np.ndarray | int | None, default: np.ndarray, batch_size: int, what: str) -> np.ndarray:
    array = np.broadcast_to(np.asarray(default if value is None else value, np.int64), (batch_size,))
    if np.any(array < 0):
        raise ValueError(f"{what} must be >= 0, got {array.tolist()}")
    return array.astype(np.int32)


class SegmentSampler:
    """A model split once into (graphdef, params) for the jitted sampling functions.

    ``start`` -> ``sample_chunk`` (repeat, e.g. to stream and to stop on
    cancellation between chunks) or ``sample_window`` (to completion). One
    compilation per (B, T, S, G) shape and ``SamplingConfig``.
    """

    def __init__(self, model: nnx.Module, config: SamplingConfig | None = None, *,
                 drop_finished_rows: bool = True) -> None:
        """``drop_finished_rows=False`` keeps every row in the batch to the end (the benchmark's comparison)."""
        self.graphdef, self.params = nnx.split(model)
        self.config = config or SamplingConfig()
        self.drop_finished_rows = drop_finished_rows

    def start(self, batch: Mapping[str, np.ndarray], key: jax.Array, n_frames_B: np.ndarray | int | None = None,
              prefix_len_B: np.ndarray | int | None = None, *, use_cache: bool = True,
              prefill: bool = True, cut_contexts: bool = True) -> SamplerState:
        """The initial state of B windows (a batch in ``loader.collate``'s format).

        ``n_frames_B`` defaults to the batch's ``n_beats`` (8 frames per beat);
        ``prefix_len_B`` (default 0) target tokens of each row are forced, e.g. the
        bars already generated in a sliding 8-bar window (SFS.md section 4), or a
        fixed beginning when a segment is regenerated. With ``prefill`` the prefix
        goes through the decoder in one parallel pass (state.step = min prefix_len
        afterwards); without, token by token like sampled tokens. Contexts are cut to
        ``context_length`` of their real tokens (``cut_contexts=False`` keeps the
        batch's padding: what the benchmarks compare against).
        """
        batch_size, target_len = np.shape(batch["target_type"])
        max_tokens = self.config.max_tokens or target_len
        n_frames = _row_array(n_frames_B, np.rint(np.asarray(batch["n_beats"]) * FRAMES_PER_BEAT),
                              batch_size, "n_frames")
        prefix_len = _row_array(prefix_len_B, np.zeros(batch_size), batch_size, "prefix_len")
        if np.any(n_frames < 1) or np.any(n_frames + 1 > max_tokens):
            raise ValueError(f"n_frames {n_frames.tolist()} must be in 1..{max_tokens - 1} "
                             f"(one FRAME per frame and END within max_tokens={max_tokens})")
        if np.any(prefix_len > min(max_tokens, target_len)):
            raise ValueError(f"prefix_len {prefix_len.tolist()} exceeds the target length {target_len} "
                             f"or max_tokens {max_tokens}")
        in_prefix_BxT = np.arange(target_len)[None, :] < prefix_len[:, None]
        prefix_frames = np.sum(in_prefix_BxT & (np.asarray(batch["target_type"]) == _FRAME), axis=1)
        prefix_ended = np.any(in_prefix_BxT & (np.asarray(batch["target_type"]) == _END), axis=1)
        needed = prefix_len + np.maximum(n_frames - prefix_frames, 0) + ~prefix_ended
        if np.any(needed > max_tokens):
            raise ValueError(f"after the prefixes, the remaining FRAMEs and END need {needed.tolist()} tokens, "
                             f"more than max_tokens={max_tokens}")
        inputs = {k: batch[k] for k in _INPUT_KEYS}
        inputs = {k: jnp.asarray(v) for k, v in (trim_contexts(inputs) if cut_contexts else inputs).items()}
        prefill = prefill and bool(prefix_len.min() > 0)
        # A prefilled prefix is in the cache from the start; a stepped one is written as it goes.
        cache_tokens = cache_length((int(prefix_len.max()) if prefill else 0) + _CACHE_HEADROOM, max_tokens)
        return _start(self.graphdef, self.params, inputs, jnp.asarray(n_frames), jnp.asarray(prefix_len), key,
                      max_tokens=max_tokens, cache_tokens=cache_tokens, use_cache=use_cache, prefill=prefill)

    def _knobs(self, sampling: SamplingConfig | None) -> Knobs:
        return (sampling or self.config).knobs()

    def sample_chunk(self, state: SamplerState, n_steps: int, sampling: SamplingConfig | None = None
                     ) -> SamplerState:
        """Up to ``n_steps`` more tokens per row (the given state is donated: use the returned one).

        When the self-attention cache fills before the window ends, it is grown to the
        next ``CACHE_LENGTHS`` (one host round trip; each cache length compiles once)
        and decoding goes on; rows that finish early leave the batch (``COMPACT_EVERY``).
        Tokens are those of one call with the whole budget and every row: each row draws
        its own row of the start batch's noise (``gumbel_draw``), wherever it sits.
        """
        knobs = self._knobs(sampling)
        stop = min(int(state.step) + n_steps, state.max_tokens)
        full = None  # the whole batch, once rows that finished have left ``state``
        while True:
            steps = stop - int(state.step)
            if state.batch_rows > 1 and self.drop_finished_rows:
                steps = min(steps, COMPACT_EVERY)
            state = sample_chunk(self.graphdef, self.params, state, jnp.asarray(steps, jnp.int32), knobs)
            step, done = int(state.step), np.asarray(state.done_B)
            if step >= stop or done.all():
                break
            if step >= state.last_cached_step:
                state = grow_cache(state, cache_length(state.cache_tokens + 1, state.max_tokens))
            elif self.drop_finished_rows and stop - step >= _COMPACT_MIN_STEPS:
                live = np.flatnonzero(~done)
                rows = 1 << (len(live) - 1).bit_length()  # the next power of two
                if rows < len(done):
                    full = state if full is None else put_rows(full, state)
                    padding = np.full(rows - len(live), np.flatnonzero(done)[0])  # a finished row: writes nothing
                    state = take_rows(state, np.concatenate([live, padding]))
        return state if full is None else put_rows(full, state)

    def stream(self, state: SamplerState, chunk_tokens: int, sampling: SamplingConfig | None = None
               ) -> Iterator[tuple[SamplerState, np.ndarray]]:
        """Yields (state, new tokens Bx(<=chunk)x5) after each chunk until every row is done.

        The host sees tokens once per chunk, not per token; stopping the iteration
        cancels the rest of the window. ``chunk_tokens`` <= 0: the whole window in one chunk.
        """
        chunk_tokens = chunk_tokens if chunk_tokens > 0 else state.max_tokens
        while int(state.step) < state.max_tokens and not bool(jnp.all(state.done_B)):
            begin = int(state.step)
            state = self.sample_chunk(state, chunk_tokens, sampling)
            yield state, np.asarray(state.tokens_BxTx5[:, begin:int(state.step)])

    def sample_window(self, batch: Mapping[str, np.ndarray], key: jax.Array,
                      n_frames_B: np.ndarray | int | None = None,
                      prefix_len_B: np.ndarray | int | None = None) -> SamplerState:
        """The final state of complete windows: one ``sample_chunk`` of the whole budget."""
        state = self.start(batch, key, n_frames_B, prefix_len_B)
        return self.sample_chunk(state, state.max_tokens)

    def sample_window_no_cache(self, batch: Mapping[str, np.ndarray], key: jax.Array,
                               n_frames_B: np.ndarray | int | None = None,
                               prefix_len_B: np.ndarray | int | None = None,
                               max_steps: int | None = None) -> SamplerState:
        """The original SFS's method with the same masks and draws: a full decoder pass per token.

        A Python loop over a jitted teacher-forced pass of the fixed padded length T
        (one compilation), syncing with the host after every token like the
        original. Same key and config give the cached sampler's tokens, up to float
        rounding. ``max_steps`` stops early (for timing).
        """
        state = self.start(batch, key, n_frames_B, prefix_len_B, use_cache=False)
        stop = state.max_tokens if max_steps is None else min(max_steps, state.max_tokens)
        knobs = self._knobs(None)
        while int(state.step) < stop and not bool(jnp.all(state.done_B)):
            state = _no_cache_token(self.graphdef, self.params, state, knobs)
        return state


def tokens_and_lengths(state: SamplerState) -> tuple[np.ndarray, np.ndarray]:
    """The token buffer BxTx5 and each row's length (through its END) as numpy."""
    tokens_BxTx5 = np.asarray(state.tokens_BxTx5)
    return tokens_BxTx5, np.sum(tokens_BxTx5[..., TYPE] != _PAD, axis=1)


def sample_window(model: nnx.Module, batch: Mapping[str, np.ndarray], n_frames_B: np.ndarray | int | None,
                  config: SamplingConfig, key: jax.Array,
                  prefix_len_B: np.ndarray | int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Samples B complete windows with the KV cache; returns tokens BxTx5 and lengths B."""
    return tokens_and_lengths(SegmentSampler(model, config).sample_window(batch, key, n_frames_B, prefix_len_B))


def sample_window_no_cache(model: nnx.Module, batch: Mapping[str, np.ndarray], n_frames_B: np.ndarray | int | None,
                           config: SamplingConfig, key: jax.Array, prefix_len_B: np.ndarray | int | None = None,
                           max_steps: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``sample_window`` by the original's method (no cache); the speed benchmark's baseline."""
    state = SegmentSampler(model, config).sample_window_no_cache(batch, key, n_frames_B, prefix_len_B, max_steps)
    return tokens_and_lengths(state)


def window_notes(tokens_Tx5: np.ndarray, window_start_bar: int = 0) -> np.ndarray:
    """Notes Nx4 of one sampled row via ``tokenizer.decode_target``, onsets moved to song frames."""
    notes_Nx4 = tokenizer.decode_target(np.asarray(tokens_Tx5))
    notes_Nx4[:, ONSET] += window_start_bar * FRAMES_PER_BAR
    return notes_Nx4
