r"""Where the time of one cached decoding step goes, by ablation, at batch 1 on the CPU.

    python -m benchmarks.decode_profile --size=paper

Each variant is the sampler's step with one part changed, run as a jitted loop of
``--steps`` steps from the same state (a real 8-bar window whose first 256 tokens
are forced, then steps 256 on; every variant decodes the same sequence), timed in
interleaved rounds; the differences between variants are what each part costs:

- ``step (S=1536, L=1024)``: the step at the shapes every step had before the
  sampler cut them: contexts padded as the composer pads them, a cache of the whole
  budget (``--context_tokens``, ``--cache_tokens``);
- ``step, default copy insertion``: the same, compiled without the sampler's
  compiler option (``segment.DECODE_LOOP_COMPILER_OPTIONS``): XLA then copies the
  self-attention caches inside the loop;
- ``step (S=cut, L=512): the sampler's``: the shapes the sampler now runs at this
  point of the window (contexts cut to ``segment.context_length``, the cache grown
  to 512 slots);
- ``decoder``: the decoder alone (no heads, no draws, no bookkeeping);
  ``decoder, no cross``: without cross-attention (what attending to contexts costs);
- ``heads``: the four heads and their draws on a fixed hidden state;
- ``loop``: the loop with bookkeeping only;
- ``weights``: one matrix-vector product with every decoder weight matrix (the
  memory-traffic floor of a step at batch 1, as this machine streams it), in
  float32 and in bfloat16 (float32 accumulation).

Why ablations rather than a trace: XLA fuses the step into a few hundred kernels
named by fusion, not by model part; timing the step with a part removed measures
that part, with everything around it as the sampler has it. The HLO of the loop
(``sample_chunk.lower(...).compile().as_text()``) is where the copies and the
per-step key transposes this profile led to were found.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from benchmarks import bandwidth
from benchmarks.real_window import pad_contexts, window_batch
from experiments import cli
from sfs_jax.model.config import model_config
from sfs_jax.model.sfs import SFSModel
from sfs_jax.music.notes import FRAMES_PER_BAR
from sfs_jax.sampling import segment as segment_lib
from sfs_jax.sampling.segment import SamplingConfig, SegmentSampler

_SIZE = flags.DEFINE_enum("size", "paper", ["tiny", "small", "paper"], "Model preset.")
_STEPS = flags.DEFINE_integer("steps", 128, "Decoding steps per timed loop.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed rounds after a warm-up round.")
_CONTEXT = flags.DEFINE_integer("context_tokens", 1536, "Context length S of the padded batch (the composer's).")
_CACHE = flags.DEFINE_integer("cache_tokens", 1024, "Token budget L of the window (the composer's).")
_DTYPE = flags.DEFINE_string("compute_dtype", "", "float32 or bfloat16 (default: the preset's).")


def _loop(body: Callable, n_steps: int, compiler_options: dict | None = None) -> Callable:
    """``n_steps`` of ``body`` in one jitted loop, compiled as the sampler's loop is unless told otherwise."""
    options = segment_lib.DECODE_LOOP_COMPILER_OPTIONS if compiler_options is None else compiler_options

    @functools.partial(jax.jit, compiler_options=options)
    def run(params, state):
        return jax.lax.fori_loop(0, n_steps, lambda _, s: body(params, s), state)
    return run


def main(argv: list[str]) -> None:
    del argv
    cli.quiet_by_default()  # no compilation cache: first calls time compilation

    overrides = {"compute_dtype": _DTYPE.value} if _DTYPE.value else {}
    config = model_config(_SIZE.value, **overrides)
    model = SFSModel(config, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    one = window_batch(8, 1024, config.vae.latent_dim)
    real_context = int(np.count_nonzero(one["context_slot"]))
    real_tokens = int(np.count_nonzero(one["target_type"]))
    n_steps = min(_STEPS.value, 255)

    def start(cut: bool, cache_tokens: int):
        """The window's state after its first 256 tokens (forced: the same sequence in every variant)."""
        sampler = SegmentSampler(model, SamplingConfig(max_tokens=_CACHE.value))
        state = sampler.start(pad_contexts(one, _CONTEXT.value), jax.random.key(0), 8 * FRAMES_PER_BAR,
                              min(real_tokens, 256), prefill=False, cut_contexts=cut)
        if state.cache_tokens < cache_tokens:
            state = segment_lib.grow_cache(state, cache_tokens)
        return jax.block_until_ready(state)

    knobs = SamplingConfig().knobs()

    def step(params, state):
        return segment_lib._cached_token(nnx.merge(graphdef, params), knobs, state)

    def decoder(params, state, cross: bool = True):
        m = nnx.merge(graphdef, params)
        window = state.window
        context_kv = window.context_kv if cross else (None,) * len(window.context_kv)
        h, cache = m.decoder.step(segment_lib.step_inputs(state), window.batch, state.cache,
                                  state.step - m.decoder.lead, context_kv, window.cross_mask_Bx1xS,
                                  window.per_bar_BxGxD)
        return state.replace(step=state.step + 1, cache=cache,
                             logprob_BxT=state.logprob_BxT.at[:, 0].add(h[:, 0, 0]))

    def heads(params, state):
        m = nnx.merge(graphdef, params)
        h = state.logprob_BxT[:, :1] + jnp.ones((1, config.d_model), jnp.float32)
        token, logprob = segment_lib.choose_token(m.decoder.heads, h, state, knobs)
        return segment_lib.advance(state, token, logprob, state.cache)

    def loop_only(params, state):
        given = jax.lax.dynamic_index_in_dim(state.tokens_BxTx5, state.step, axis=1, keepdims=False)
        return segment_lib.advance(state, given, jnp.zeros(given.shape[0]), state.cache)

    matrices = bandwidth.decoder_matrices(model)
    weight_sets = {"weights": matrices, "weights in bfloat16": bandwidth.decoder_matrices(model, jnp.bfloat16)}
    weight_bytes = bandwidth.nbytes(matrices)
    composer = start(False, _CACHE.value)  # the shapes every step had before: contexts padded, the whole budget
    cut = start(True, 512)  # the sampler's shapes at this step: contexts cut, the cache grown to 512 slots
    cut_context = cut.window.batch["context_slot"].shape[1]
    runs = {
        f"step (S={_CONTEXT.value}, L={_CACHE.value})": (_loop(step, n_steps), composer),
        "step, default copy insertion": (_loop(step, n_steps, {}), composer),
        f"step (S={cut_context}, L=512): the sampler's": (_loop(step, n_steps), cut),
        "decoder": (_loop(decoder, n_steps), composer),
        "decoder, no cross": (_loop(functools.partial(decoder, cross=False), n_steps), composer),
        f"decoder, S={cut_context}, L=512": (_loop(decoder, n_steps), cut),
        "heads": (_loop(heads, n_steps), composer),
        "loop": (_loop(loop_only, n_steps), composer),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    calls = {name: functools.partial(fn, params, state) for name, (fn, state) in runs.items()}
    for round_index in range(_REPEATS.value + 1):
        for name, call in calls.items():
            began = time.perf_counter()
            jax.block_until_ready(call())
            if round_index:
                times[name].append(time.perf_counter() - began)
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}; "
          f"model {_SIZE.value} ({config.compute_dtype}); B=1; {real_tokens} window tokens, {real_context} real "
          f"context tokens (cut to {cut_context}); steps 256..{256 + n_steps} of the window per loop, median of "
          f"{_REPEATS.value} interleaved rounds")
    for name, values in times.items():
        print(f"{name:>36}: {statistics.median(values) / n_steps * 1e3:7.2f} ms/step")
    rates = {name: bandwidth.stream_rate(ws, n_steps, _REPEATS.value) for name, ws in weight_sets.items()}
    for name, ws in weight_sets.items():
        print(f"{name:>36}: {bandwidth.nbytes(ws) / rates[name] * 1e3:7.2f} ms/step")
    print(f"decoder weight matrices: {weight_bytes / 1e6:.1f} MB per step in float32; streamed at "
          f"{rates['weights'] / 1e9:.1f} GB/s by one matrix-vector product each "
          f"({rates['weights in bfloat16'] / 1e9:.1f} GB/s in bfloat16)")


if __name__ == "__main__":
    app.run(main)
