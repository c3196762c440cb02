r"""Generation speed: the KV-cached while_loop sampler vs the original's no-cache method.

    python -m benchmarks.generation --size=small                       # CPU
    python -m benchmarks.generation --size=paper --batch_sizes=1,64    # GPU

Both samplers run on the same model (random init: speed does not depend on the
weights) and the same inputs: one real 8-bar window (256 frames) of a synthetic song
with its contexts and random bar embeddings, through ``make_example`` and
``collate`` (target bucket ``--max_tokens``), replicated over the batch.

What is timed: one call from the batch to the last token (context encoding, G,
cross-attention keys/values, then every token), after a warm-up round that
compiles; median over ``--repeats`` rounds, each calling every sampler once in
turn with the round's key, so background load on a shared machine hits them
alike (wall and process CPU time are both printed). By default the window's
real tokens are forced as a prefix (``--force_real_window``), so every call
generates exactly that song's token count; forced tokens go through the same
cached decoding step as sampled ones (the prefill, which would run them in one
parallel pass, is switched off) and cost what a sampled token does (all four heads
run and draw, then the given value is kept). Without it the random model samples
freely (it writes notes until the budget binds).
beats/s = frames generated / 8 / seconds, summed over the batch (SFS.md section 4:
the original reaches 2.03 beats/s on an RTX 4090).

The no-cache sampler re-runs the jitted teacher-forced decoder over the padded
window for every token and syncs with the host after each, like the original.
Its cost per token does not depend on the position (the pass always covers the
padded length), and neither does the cached sampler's (it attends over the whole
preallocated cache under a mask), so ``--no_cache_tokens`` times only the first
tokens and the window time is extrapolated as seconds/token x window tokens; the
speed-up is the ratio of seconds per token on the same token sequence.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable

import jax
import numpy as np
from absl import app, flags
from flax import nnx

from data_pipeline.synthetic import generate_song
from sfs_jax.data.examples import ExampleConfig, make_example
from sfs_jax.data.loader import collate
from sfs_jax.model.config import model_config
from sfs_jax.model.sfs import SFSModel
from sfs_jax.music.notes import FRAMES_PER_BAR, FRAMES_PER_BEAT
from sfs_jax.music.song import Song
from sfs_jax.music.tokenizer import TYPE, TokenType
from sfs_jax.sampling.segment import SamplerState, SamplingConfig, SegmentSampler

_SIZE = flags.DEFINE_enum("size", "small", ["tiny", "small", "paper"], "Model preset.")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "16"], "Batch sizes of the cached sampler (the first "
                                 "one is also run without the cache).")
_BARS = flags.DEFINE_integer("window_bars", 8, "Bars per window (SFS.md section 4: 8).")
_MAX_TOKENS = flags.DEFINE_integer("max_tokens", 768, "Token budget of a window (the target bucket).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls after the warm-up call.")
_NO_CACHE_TOKENS = flags.DEFINE_integer("no_cache_tokens", 128, "Time the no-cache sampler over this many "
                                        "tokens (0: the whole window).")
_FORCE = flags.DEFINE_boolean("force_real_window", True, "Force the real window's tokens as a prefix.")
_DTYPE = flags.DEFINE_string("compute_dtype", "", "float32 or bfloat16 (default: the preset's).")


def window_batch(window_bars: int, max_tokens: int, latent_dim: int) -> dict[str, np.ndarray]:
    """One real full-length window with contexts from the first synthetic song that has one."""
    config = ExampleConfig(window_bars=window_bars, context_bars=8, target_buckets=(max_tokens,))
    for index in range(100):
        synthetic = generate_song(0, index)
        song = Song(synthetic.song_id, synthetic.notes_Nx4, synthetic.n_bars, synthetic.tempo_bpm,
                    synthetic.segments, "synthetic")
        embeddings = np.random.default_rng(index).normal(size=(song.n_bars, latent_dim)).astype(np.float32)
        for seed in range(4):
            example = make_example(song, np.random.default_rng(seed), config, embeddings)
            if example["n_beats"] == window_bars * 4 and np.count_nonzero(example["context_slot"]) > 0:
                return collate([example], config)
    raise RuntimeError(f"no synthetic song has a {window_bars}-bar window with contexts")


def replicate(batch: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
    return {k: np.repeat(v, batch_size, axis=0) if np.ndim(v) else v for k, v in batch.items()}


@dataclasses.dataclass
class Timing:
    """Wall and process-CPU seconds of each call of one runner; call 0 compiles."""

    wall_s: list[float] = dataclasses.field(default_factory=list)
    cpu_s: list[float] = dataclasses.field(default_factory=list)
    state: SamplerState | None = None

    def median(self, which: str) -> float:
        return statistics.median(getattr(self, which)[1:])


def time_interleaved(runners: dict[tuple[str, int], Callable[[jax.Array], SamplerState]],
                     repeats: int) -> dict[tuple[str, int], Timing]:
    """Calls every runner once per round (round 0 is the warm-up), each with the round's key.

    Interleaving puts the runners under the same background load, so their ratio
    holds on a shared machine even when absolute times drift.
    """
    timings = {name: Timing() for name in runners}
    for call in range(repeats + 1):
        for name, run in runners.items():
            wall, cpu = time.perf_counter(), time.process_time()
            state = run(jax.random.key(call))
            jax.block_until_ready(state.tokens_BxTx5)
            timings[name].wall_s.append(time.perf_counter() - wall)
            timings[name].cpu_s.append(time.process_time() - cpu)
            timings[name].state = state
    return timings


def decode_window(sampler: SegmentSampler, batch: dict[str, np.ndarray], key: jax.Array, n_frames: int,
                  prefix_len: int) -> SamplerState:
    """``sample_window`` without the prefill: every token, forced or not, is one cached decoding step."""
    state = sampler.start(batch, key, n_frames, prefix_len, prefill=False)
    return sampler.sample_chunk(state, state.max_tokens)


def frames_and_tokens(state: SamplerState) -> tuple[int, int]:
    types = np.asarray(state.tokens_BxTx5[..., TYPE])
    return int(np.sum(types == int(TokenType.FRAME))), int(np.sum(types != int(TokenType.PAD)))


def report(name: str, timing: Timing, window: SamplerState) -> tuple[float, float]:
    """Prints one row; returns (wall, CPU) seconds per loop step (one token of every row).

    ``window`` is a complete run on the same inputs: its steps, frames and tokens
    are what one window takes, so a run stopped early is extrapolated to it.
    """
    steps, batch_size = int(timing.state.step), timing.state.tokens_BxTx5.shape[0]
    step_s, step_cpu_s = timing.median("wall_s") / steps, timing.median("cpu_s") / steps
    window_s = step_s * int(window.step)
    frames, tokens = frames_and_tokens(window)
    note = "" if steps == int(window.step) else f" (extrapolated from {steps} steps)"
    compile_s = max(timing.wall_s[0] - timing.median("wall_s"), 0.0)
    print(f"{name:>8} B={batch_size:<3}: {window_s:8.3f} s/window{note}, {tokens / window_s:6.0f} tokens/s, "
          f"{frames / FRAMES_PER_BEAT / window_s:7.2f} beats/s; {step_s * 1e3:7.2f} ms/step wall, "
          f"{step_cpu_s * 1e3:7.2f} ms/step CPU; first call {timing.wall_s[0]:.1f} s (compile ~{compile_s:.1f} s)")
    return step_s, step_cpu_s


def main(argv: list[str]) -> None:
    del argv
    overrides = {"compute_dtype": _DTYPE.value} if _DTYPE.value else {}
    config = model_config(_SIZE.value, **overrides)
    model = SFSModel(config, rngs=nnx.Rngs(0))
    n_frames = _BARS.value * FRAMES_PER_BAR
    one = window_batch(_BARS.value, _MAX_TOKENS.value, config.vae.latent_dim)
    prefix_len = int(np.count_nonzero(one["target_type"])) if _FORCE.value else 0
    sampler = SegmentSampler(model, SamplingConfig(max_tokens=_MAX_TOKENS.value))
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()} ({jax.default_backend()}), "
          f"jax {jax.__version__}")
    print(f"model: {_SIZE.value} ({n_params / 1e6:.1f}M parameters, {config.compute_dtype}), random init; "
          f"window {_BARS.value} bars = {n_frames} frames, budget {_MAX_TOKENS.value} tokens, "
          f"context {one['context_slot'].shape[1]} slots ({np.count_nonzero(one['context_slot'])} real), "
          f"{'real window forced: ' + str(prefix_len) + ' tokens' if prefix_len else 'sampled freely'}, "
          f"top_p {sampler.config.top_p}; median of {_REPEATS.value} interleaved rounds after a warm-up round")
    batch_sizes = [int(b) for b in _BATCH_SIZES.value]
    batches = {b: replicate(one, b) for b in batch_sizes}
    runners = {("cached", b): (lambda key, b=b: decode_window(sampler, batches[b], key, n_frames, prefix_len))
               for b in batch_sizes}
    first, max_steps = batch_sizes[0], _NO_CACHE_TOKENS.value or None
    runners[("no cache", first)] = lambda key: sampler.sample_window_no_cache(batches[first], key, n_frames,
                                                                              prefix_len, max_steps=max_steps)
    timings = time_interleaved(runners, _REPEATS.value)
    per_step = {(name, b): report(name, timing, timings[("cached", b)].state) for (name, b), timing in timings.items()}
    cached_state, no_cache_state = timings[("cached", first)].state, timings[("no cache", first)].state
    steps = int(no_cache_state.step)
    same = np.array_equal(np.asarray(no_cache_state.tokens_BxTx5)[:, :steps],
                          np.asarray(cached_state.tokens_BxTx5)[:, :steps])
    print(f"no-cache tokens equal the cached sampler's (same key, first {steps}): {same}")
    (cached_wall, cached_cpu), (slow_wall, slow_cpu) = per_step[("cached", first)], per_step[("no cache", first)]
    print(f"speed-up of the cache at B={first}: {slow_wall / cached_wall:.1f}x wall, "
          f"{slow_cpu / cached_cpu:.1f}x CPU time (goal >= 20x)")


if __name__ == "__main__":
    app.run(main)
