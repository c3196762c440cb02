r"""Generation speed: the KV-cached while_loop sampler vs the original's no-cache method.

    python -m benchmarks.generation --size=paper --cores=1,2           # CPU: the README's table
    python -m benchmarks.generation --size=paper --batch_sizes=1,64    # GPU

Both samplers run on the same model (random init: speed does not depend on the
weights) and the same inputs: one real 8-bar window (256 frames) of a synthetic song
with its contexts and random bar embeddings, through ``make_example`` and
``collate``, its contexts padded to ``--context_tokens`` and its budget
``--max_tokens`` as the composer pads them (1536 and 1024), replicated over the batch.

What is timed: one call from the batch to the last token (cutting the contexts,
encoding them, G, cross-attention keys/values, then every token), after a warm-up
round that compiles; median over ``--repeats`` rounds, each calling every sampler
once in turn with the round's key, so background load on a shared machine hits
them alike (wall and process CPU time are both printed). By default the window's
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
padded budget), so ``--no_cache_tokens`` times only its first tokens and the window
time is extrapolated as seconds/token x window tokens; the speed-up is the ratio of
seconds per token on the same token sequence.

Beside each row: the memory-traffic bound (``bandwidth``): the beats/s a step
would give if it only read the weights it uses and the keys/values it attends to,
at the rate this machine streams the decoder's matrices. ``--cores=1,2`` runs the
whole benchmark once per core count, each in a process pinned to that many cores,
and prints one table.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from absl import app, flags
from flax import nnx

from benchmarks import bandwidth
from benchmarks.real_window import pad_contexts, replicate, window_batch
from experiments import cli
from sfs_jax.model.config import model_config
from sfs_jax.model.sfs import SFSModel
from sfs_jax.music.notes import FRAMES_PER_BAR, FRAMES_PER_BEAT
from sfs_jax.music.tokenizer import TYPE, TokenType
from sfs_jax.sampling.segment import SamplerState, SamplingConfig, SegmentSampler

_SIZE = flags.DEFINE_enum("size", "small", ["tiny", "small", "paper"], "Model preset.")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "16"], "Batch sizes; each runs with and without the cache.")
_BARS = flags.DEFINE_integer("window_bars", 8, "Bars per window (SFS.md section 4: 8).")
_MAX_TOKENS = flags.DEFINE_integer("max_tokens", 1024, "Token budget of a window (the composer's: the largest "
                                   "target bucket).")
_CONTEXT_TOKENS = flags.DEFINE_integer("context_tokens", 1536, "Contexts padded to this length, as the composer "
                                       "pads them (the sampler cuts them to its context length).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls after the warm-up call.")
_NO_CACHE_TOKENS = flags.DEFINE_integer("no_cache_tokens", 128, "Time the no-cache sampler over this many "
                                        "tokens (0: the whole window).")
_FORCE = flags.DEFINE_boolean("force_real_window", True, "Force the real window's tokens as a prefix.")
_DTYPE = flags.DEFINE_string("compute_dtype", "", "float32 or bfloat16 (default: the preset's).")
_CORES = flags.DEFINE_list("cores", [], "CPU cores to run on, e.g. 1,2: one process pinned to each count, then "
                           "one table (default: this process as it is).")
_ROWS_JSON = flags.DEFINE_string("rows_json", "", "Write the rows here (used by --cores).")


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


def decode_window(sampler: SegmentSampler, batch: dict[str, np.ndarray], key: jax.Array, n_frames: int | np.ndarray,
                  prefix_len: int | np.ndarray) -> SamplerState:
    """``sample_window`` without the prefill: every token, forced or not, is one cached decoding step."""
    state = sampler.start(batch, key, n_frames, prefix_len, prefill=False)
    return sampler.sample_chunk(state, state.max_tokens)


def frames_and_tokens(state: SamplerState) -> tuple[int, int]:
    types = np.asarray(state.tokens_BxTx5[..., TYPE])
    return int(np.sum(types == int(TokenType.FRAME))), int(np.sum(types != int(TokenType.PAD)))


def report(name: str, timing: Timing, window: SamplerState, bound_s_per_step: float) -> dict:
    """Prints one row and returns it; per-step times are for one token of every row.

    ``window`` is a complete run on the same inputs: its steps, frames and tokens
    are what one window takes, so a run stopped early is extrapolated to it.
    ``bound_s_per_step``: the memory-traffic lower bound of one step (``bandwidth``).
    """
    steps, batch_size = int(timing.state.step), timing.state.tokens_BxTx5.shape[0]
    step_s, step_cpu_s = timing.median("wall_s") / steps, timing.median("cpu_s") / steps
    window_s = step_s * int(window.step)
    frames, tokens = frames_and_tokens(window)
    beats = frames / FRAMES_PER_BEAT
    note = "" if steps == int(window.step) else f" (extrapolated from {steps} steps)"
    compile_s = max(timing.wall_s[0] - timing.median("wall_s"), 0.0)
    bound = beats / (bound_s_per_step * int(window.step))
    print(f"{name:>8} B={batch_size:<3}: {window_s:8.3f} s/window{note}, {tokens / window_s:6.0f} tokens/s, "
          f"{beats / window_s:7.2f} beats/s (bound {bound:.0f}); {step_s * 1e3:7.2f} ms/step wall, "
          f"{step_cpu_s * 1e3:7.2f} ms/step CPU; first call {timing.wall_s[0]:.1f} s (compile ~{compile_s:.1f} s)")
    return {"sampler": name, "batch": batch_size, "beats_per_s": beats / window_s, "ms_per_step": step_s * 1e3,
            "ms_per_step_cpu": step_cpu_s * 1e3, "bound_beats_per_s": bound, "first_call_s": timing.wall_s[0],
            "extrapolated": bool(note)}


def measure() -> list[dict]:
    """Every sampler at every batch size in this process; returns the rows (also printed)."""
    overrides = {"compute_dtype": _DTYPE.value} if _DTYPE.value else {}
    config = model_config(_SIZE.value, **overrides)
    model = SFSModel(config, rngs=nnx.Rngs(0))
    n_frames = _BARS.value * FRAMES_PER_BAR
    one = pad_contexts(window_batch(_BARS.value, _MAX_TOKENS.value, config.vae.latent_dim), _CONTEXT_TOKENS.value)
    prefix_len = int(np.count_nonzero(one["target_type"])) if _FORCE.value else 0
    sampler = SegmentSampler(model, SamplingConfig(max_tokens=_MAX_TOKENS.value))
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    real_context = int(np.count_nonzero(one["context_slot"]))
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()} ({jax.default_backend()}), "
          f"jax {jax.__version__}, {len(os.sched_getaffinity(0))} CPU core(s) for this process")
    print(f"model: {_SIZE.value} ({n_params / 1e6:.1f}M parameters, {config.compute_dtype}), random init; "
          f"window {_BARS.value} bars = {n_frames} frames, budget {_MAX_TOKENS.value} tokens, "
          f"context {one['context_slot'].shape[1]} slots ({real_context} real), "
          f"{'real window forced: ' + str(prefix_len) + ' tokens' if prefix_len else 'sampled freely'}, "
          f"top_p {sampler.config.top_p}; median of {_REPEATS.value} interleaved rounds after a warm-up round")
    batch_sizes = [int(b) for b in _BATCH_SIZES.value]
    batches = {b: replicate(one, b) for b in batch_sizes}
    max_steps = _NO_CACHE_TOKENS.value or None
    runners: dict[tuple[str, int], Callable[[jax.Array], SamplerState]] = {}
    for b in batch_sizes:
        runners[("cached", b)] = lambda key, b=b: decode_window(sampler, batches[b], key, n_frames, prefix_len)
        runners[("no cache", b)] = lambda key, b=b: sampler.sample_window_no_cache(batches[b], key, n_frames,
                                                                                    prefix_len, max_steps=max_steps)
    big = max(batch_sizes)
    if big > 1:  # every other row a 2-bar window: it ends long before the 8-bar rows
        short_frames = n_frames // 4
        frame_count = np.cumsum(one["target_type"][0] == int(TokenType.FRAME))
        short_prefix = int(np.argmax(frame_count > short_frames)) if prefix_len else 0
        odd = np.arange(big) % 2 == 1
        uneven_frames, uneven_prefix = np.where(odd, short_frames, n_frames), np.where(odd, short_prefix, prefix_len)
        keeping = SegmentSampler(model, sampler.config, drop_finished_rows=False)
        for name, which in (("rows stay", keeping), ("rows leave", sampler)):
            runners[(name, big)] = lambda key, which=which: decode_window(which, batches[big], key, uneven_frames,
                                                                         uneven_prefix)
    timings = time_interleaved(runners, _REPEATS.value)
    rate = bandwidth.stream_rate(bandwidth.decoder_matrices(model))
    rows = []
    for (name, b), timing in timings.items():
        window = timings[(name if name.startswith("rows") else "cached", b)].state
        attended = (int(window.step) + 1) / 2  # slots 0..t on average over the window's steps
        bound_s = bandwidth.step_bytes(model, config, b, attended, real_context) / rate
        rows.append({**report(name, timing, window, bound_s), "stream_gb_s": rate / 1e9})
    print(f"memory-traffic bound: the weights a step uses and the keys/values it attends to, streamed at "
          f"{rate / 1e9:.1f} GB/s (this machine, one matrix-vector product per decoder matrix)")
    if big > 1:
        stay, leave = (next(r for r in rows if r["sampler"] == n) for n in ("rows stay", "rows leave"))
        print(f"B={big}, every other row a 2-bar window: rows that finish leave the batch: "
              f"{leave['beats_per_s'] / stay['beats_per_s']:.2f}x the beats/s of keeping them to the end")
    for b in batch_sizes:
        cached, no_cache = timings[("cached", b)].state, timings[("no cache", b)].state
        steps = int(no_cache.step)
        same = np.array_equal(np.asarray(no_cache.tokens_BxTx5)[:, :steps], np.asarray(cached.tokens_BxTx5)[:, :steps])
        fast, slow = (next(r for r in rows if r["sampler"] == n and r["batch"] == b) for n in ("cached", "no cache"))
        print(f"B={b}: speed-up of the cache {slow['ms_per_step'] / fast['ms_per_step']:.1f}x wall, "
              f"{slow['ms_per_step_cpu'] / fast['ms_per_step_cpu']:.1f}x CPU time (goal >= 30x); no-cache tokens "
              f"equal the cached sampler's (same key, first {steps}): {same}")
    return rows


def run_on_cores(cores: list[int]) -> list[dict]:
    """This benchmark once per core count, each in a process pinned to that many cores; all rows."""
    rows = []
    for n in cores:
        print(f"--- {n} core(s) ---", flush=True)
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            argv = [a for a in sys.argv[1:] if not a.startswith(("--cores", "--rows_json"))]
            subprocess.run([sys.executable, "-m", "benchmarks.generation", f"--cores={n}", f"--rows_json={out.name}",
                            *argv], check=True, preexec_fn=lambda n=n: os.sched_setaffinity(0, range(n)))
            rows += [{**row, "cores": n} for row in json.loads(Path(out.name).read_text())]
    return rows


def print_table(rows: list[dict]) -> None:
    print("\n| cores | sampler | B | beats/s | ms/token (wall) | memory-traffic bound, beats/s |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        mark = " (extrapolated)" if row["extrapolated"] else ""
        print(f"| {row['cores']} | {row['sampler']} | {row['batch']} | {row['beats_per_s']:.2f}{mark} | "
              f"{row['ms_per_step'] / row['batch']:.2f} | {row['bound_beats_per_s']:.0f} |")


def main(argv: list[str]) -> None:
    del argv
    cli.quiet_by_default()  # no compilation cache: first calls time compilation
    cores = [int(c) for c in _CORES.value]
    if len(cores) > 1:
        print_table(run_on_cores(cores))
        return
    if cores and len(os.sched_getaffinity(0)) != cores[0]:
        os.sched_setaffinity(0, range(cores[0]))  # before the backend starts: its thread pool follows
    rows = [{**row, "cores": len(os.sched_getaffinity(0))} for row in measure()]
    if _ROWS_JSON.value:
        Path(_ROWS_JSON.value).write_text(json.dumps(rows))
    elif cores:
        print_table(rows)


if __name__ == "__main__":
    app.run(main)
