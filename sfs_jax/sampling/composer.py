"""Compose a whole song segment by segment, in any order (SFS.md sections 1 and 4).

Place in the data flow: [6]->[7]. For each segment in compose order the composer
builds, for every sample in the batch, exactly the example the model was trained
on (``examples.build_example`` with a plan whose "composed" segments are the ones
written so far), so contexts, known bars and positions cannot drift between
training and generation. Segments longer than the window slide one bar at a time:
the window's earlier bars are a teacher-forced prefix and bars that left the
window are known to G through their bar-VAE embeddings. After every segment (and
every slide) the new bars are embedded and marked known. A model trained on
song-scope windows (the GPT-like Flat) writes its segments left to right instead,
each window free to reach back across segment boundaries (``window_steps``).

Any segment can be regenerated while the rest of a song is kept (``regenerate``),
a seed segment can be given as notes, and callbacks stream notes and contexts out
and can cancel between compiled chunks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import numpy as np
from flax import nnx

from sfs_jax.data import bars as bars_lib
from sfs_jax.data import loader
from sfs_jax.data.examples import (
    CONTEXT_KEYS,
    TARGET_KEYS,
    ExampleConfig,
    ExamplePlan,
    build_example,
    context_crop_offset,
)
from sfs_jax.model import bar_vae
from sfs_jax.music import notes as notes_lib
from sfs_jax.music import tokenizer
from sfs_jax.music.contexts import ContextSlot, context_bars, select_contexts
from sfs_jax.music.song import Song
from sfs_jax.music.structure import Segment, StructureError, default_compose_order, validate_compose_order
from sfs_jax.sampling.segment import SamplingConfig, SegmentSampler, window_notes
from sfs_jax.training.restore import load_trained
from sfs_jax.training.tasks import check_window_scope, example_config_from

FRAMES_PER_BAR = notes_lib.FRAMES_PER_BAR
SEED_FITS = ("error", "pad", "trim", "fit")


class CompositionCancelled(Exception):
    """Raised between chunks when ``should_cancel`` says so; nothing is returned or written."""


@dataclasses.dataclass
class Callbacks:
    """Hooks for streaming clients (the web app) and progress bars; all optional."""

    on_segment_start: Callable[[int, dict[str, int | None]], None] | None = None  # segment, contexts
    on_note: Callable[[int, int, np.ndarray], None] | None = None  # sample, segment, note [4] (song frames)
    on_segment_done: Callable[[int], None] | None = None
    should_cancel: Callable[[], bool] | None = None


@dataclasses.dataclass(frozen=True)
class ComposeRequest:
    """What to compose: structure, optional seed, order, and what to keep of an existing song."""

    segments: tuple[Segment, ...]
    tempo_bpm: float = 100.0
    seed_notes_Nx4: np.ndarray | None = None  # onsets relative to the seed segment's start
    seed_segment: int | None = None  # default: the default order's first segment
    seed_fit: str = "error"  # what to do when the seed's bars differ from the segment's
    compose_order: tuple[int, ...] | None = None
    existing_notes_Nx4: np.ndarray | None = None  # a song to keep, bars outside ``regenerate``
    regenerate: tuple[int, ...] | None = None  # segments to (re)write; default: all but the seed


@dataclasses.dataclass
class ComposedSong:
    song: Song
    seed_segment: int | None
    compose_order: tuple[int, ...]
    contexts: dict[int, dict[str, int | None]]


def fit_seed(seed_notes_Nx4: np.ndarray, n_bars: int, seed_fit: str) -> np.ndarray:
    """The seed's notes inside a segment of ``n_bars`` (its first bar at bar 0).

    ``error``: a different length is refused; ``pad``: a shorter seed leaves silent
    bars; ``trim``: a longer seed loses its last bars; ``fit``: pad or trim as needed.
    """
    if seed_fit not in SEED_FITS:
        raise ValueError(f"seed_fit must be one of {SEED_FITS}, got {seed_fit!r}")
    notes = notes_lib.normalize_notes(seed_notes_Nx4)[0]
    seed_bars = notes_lib.bars_spanned(notes)
    if seed_bars == 0:
        raise StructureError("the seed has no notes")
    if seed_bars != n_bars:
        allowed = {"pad": seed_bars < n_bars, "trim": seed_bars > n_bars, "fit": True}.get(seed_fit, False)
        if not allowed:
            raise StructureError(f"the seed has {seed_bars} bars but its segment has {n_bars}; "
                                 "pass seed_fit='pad', 'trim' or 'fit' to adjust it")
    return notes_lib.notes_in_bars(notes, 0, n_bars)


def plan_order(request: ComposeRequest, rng: np.random.Generator,
               left_to_right: bool = False) -> tuple[list[int], list[int], int | None]:
    """(kept segments, segments to write in order, seed segment).

    Kept segments (the seed, and with an existing song every segment not being
    regenerated) are "composed" from the start; the seed comes first among them
    because SFS.md's Seed context is the first composed segment. ``left_to_right``
    (a song-scope model, the GPT-like Flat) writes in song order: a seed without a
    ``seed_segment`` still goes where the default order puts it, and a given order must
    already be ascending.
    """
    n = len(request.segments)
    order = (validate_compose_order(request.compose_order, n) if request.compose_order is not None
             else default_compose_order(request.segments, rng))
    seed = request.seed_segment
    if seed is None and request.seed_notes_Nx4 is not None:
        seed = order[0]
    if seed is not None and not 0 <= seed < n:
        raise StructureError(f"seed segment {seed} is not in 0..{n - 1}")
    if request.regenerate is not None:
        regenerate = {int(i) for i in request.regenerate}
        bad = sorted(i for i in regenerate if not 0 <= i < n)
        if bad:
            raise StructureError(f"cannot regenerate segment {bad[0]}: the structure has segments 0..{n - 1}")
        given = {seed} if request.seed_notes_Nx4 is not None else set()
        if request.existing_notes_Nx4 is None and set(range(n)) - regenerate - given:
            raise StructureError("keeping some segments needs the existing song's notes")
    else:
        regenerate = set(range(n)) - ({seed} if request.seed_notes_Nx4 is not None else set())
    kept = [i for i in order if i not in regenerate]
    if seed is not None and seed in kept:
        kept.remove(seed)
        kept.insert(0, seed)
    to_write = [i for i in order if i in regenerate]
    if left_to_right:
        if request.compose_order is not None and to_write != sorted(to_write):
            raise StructureError(f"this model writes the song left to right (window_scope='song', the Flat "
                                 f"baseline): it cannot write segments in the order {to_write}; give them in "
                                 "ascending order or no order")
        to_write.sort()
    return kept, to_write, seed


class Composer:
    """A trained SFS model (and its bar VAE when G is on) ready to compose songs."""

    def __init__(self, model: nnx.Module, example_config: ExampleConfig, vae: nnx.Module | None = None,
                 sampling: SamplingConfig | None = None, chunk_tokens: int = 0) -> None:
        if model.config.use_global_view and vae is None:
            raise ValueError("this model uses the global view G: pass its bar VAE")
        check_window_scope(model.config, example_config)
        self.model, self.example_config, self.vae = model, example_config, vae
        self.sampling = sampling or SamplingConfig(max_tokens=example_config.target_buckets[-1])
        self.sampler = SegmentSampler(model, self.sampling)
        self.chunk_tokens = chunk_tokens or self.sampling.max_tokens or example_config.target_buckets[-1]
        self._embed = bar_vae.make_embed_fn(vae) if vae is not None else None
        self.left_to_right = example_config.window_scope == "song"
        # The slots the decoder's mask lets through: reports name only the contexts the model sees.
        self.visible_slots = (set(model.config.context_slots) if model.config.use_cross_attention
                              and not self.left_to_right else set())

    def _embeddings(self, songs: Sequence[Song]) -> list[np.ndarray | None]:
        if self._embed is None:
            return [None] * len(songs)
        table = bars_lib.compute_bar_embeddings(self._embed, songs, self.vae.config.max_bar_tokens, 16)
        return [table[s.song_id] for s in songs]

    def _batch(self, songs: Sequence[Song], plan: ExamplePlan, embeddings: Sequence[np.ndarray | None]):
        examples = [build_example(song, plan, self.example_config, emb) for song, emb in zip(songs, embeddings,
                                                                                             strict=True)]
        batch = loader.collate(examples, self.example_config)
        # One shape for every window of every song, so the sampler compiles once per batch size: the
        # whole token budget (not the bucket of the short prefix) and the largest context bucket.
        budget = self.sampling.max_tokens or self.example_config.target_buckets[-1]
        for keys, length in ((TARGET_KEYS, budget), (CONTEXT_KEYS, self.example_config.context_buckets[-1])):
            for key in keys:
                batch[key] = np.pad(batch[key], ((0, 0), (0, length - batch[key].shape[1])))
        return batch

    def compose(self, request: ComposeRequest, key: jax.Array, num_samples: int = 1,
                callbacks: Callbacks | None = None, seed: int = 0,
                sampling: SamplingConfig | None = None) -> list[ComposedSong]:
        """``num_samples`` songs for one request, batched; ``seed`` draws the default order.

        ``sampling`` overrides the composer's temperature / top-p / top-k for this call
        (its token budget stays the composer's); they are values of the compiled sampler,
        so any setting runs without compiling again.
        """
        callbacks = callbacks or Callbacks()
        segments = request.segments
        n_bars = segments[-1].end_bar
        kept, to_write, seed_index = plan_order(request, np.random.default_rng(seed), self.left_to_right)
        base = notes_lib.empty_notes()
        if request.existing_notes_Nx4 is not None:
            base = notes_lib.normalize_notes(request.existing_notes_Nx4)[0]
            base = base[base[:, notes_lib.ONSET] < n_bars * FRAMES_PER_BAR]
        keep_mask = np.zeros(n_bars, bool)
        for index in kept:
            keep_mask[segments[index].start_bar:segments[index].end_bar] = True
        base = base[keep_mask[base[:, notes_lib.ONSET] // FRAMES_PER_BAR]] if len(base) else base
        if request.seed_notes_Nx4 is not None:
            seg = segments[seed_index]
            seed_notes = fit_seed(request.seed_notes_Nx4, seg.n_bars, request.seed_fit)
            seed_notes[:, notes_lib.ONSET] += seg.start_bar * FRAMES_PER_BAR
            outside = (base[:, notes_lib.ONSET] < seg.start_bar * FRAMES_PER_BAR) | (
                base[:, notes_lib.ONSET] >= seg.end_bar * FRAMES_PER_BAR)
            base = np.concatenate([base[outside], seed_notes])
        order = tuple(kept + to_write)
        songs_notes = [base.copy() for _ in range(num_samples)]
        contexts: dict[int, dict[str, int | None]] = {}
        for position in range(len(kept), len(order)):
            target = order[position]
            chosen = {slot.name.lower(): index if slot.name.lower() in self.visible_slots else None
                      for slot, index in select_contexts(segments, list(order[:position]), target).items()}
            contexts[target] = chosen
            if callbacks.on_segment_start:
                callbacks.on_segment_start(target, chosen)
            key, segment_key = jax.random.split(key)
            songs_notes = self._write_segment(request, order, position, songs_notes, segment_key, callbacks,
                                              sampling)
            if callbacks.on_segment_done:
                callbacks.on_segment_done(target)
        return [ComposedSong(self._song(request, notes, f"composed-{i}"), seed_index, order, contexts)
                for i, notes in enumerate(songs_notes)]

    def _song(self, request: ComposeRequest, notes_Nx4: np.ndarray, song_id: str) -> Song:
        n_bars = request.segments[-1].end_bar
        notes = notes_lib.end_at_bar(notes_lib.normalize_notes(notes_Nx4)[0], n_bars)
        return Song(song_id, notes, n_bars, request.tempo_bpm, request.segments, "user")

    def _write_segment(self, request: ComposeRequest, order: tuple[int, ...], position: int,
                       songs_notes: list[np.ndarray], key: jax.Array, callbacks: Callbacks,
                       sampling: SamplingConfig | None = None) -> list[np.ndarray]:
        """Writes segment ``order[position]`` of every sample, window by window (``window_steps``)."""
        segment = request.segments[order[position]]
        window = self.example_config.window_bars
        floor = 0 if self.left_to_right else segment.start_bar
        for step_index, (window_start, new_bar) in enumerate(window_steps(segment, window, floor)):
            window_end = min(window_start + window, segment.end_bar)
            songs = [self._song(request, notes, f"partial-{i}") for i, notes in enumerate(songs_notes)]
            window_start, batch = self._fitting_batch(songs, order, position, window_start, new_bar, window_end)
            window_bars = window_end - window_start
            prefix_len = _prefix_lengths(batch["target_type"], (new_bar - window_start) * FRAMES_PER_BAR)
            state = initial = self.sampler.start(batch, jax.random.fold_in(key, step_index),
                                                 n_frames_B=window_bars * FRAMES_PER_BAR, prefix_len_B=prefix_len)
            emitted = [0] * len(songs)
            for state, _ in self.sampler.stream(initial, self.chunk_tokens, sampling):
                if callbacks.should_cancel and callbacks.should_cancel():
                    raise CompositionCancelled(f"cancelled while writing segment {order[position]}")
                if callbacks.on_note:
                    frames_done = np.asarray(state.frames_emitted_B)
                    emitted = self._stream_notes(state, window_start, new_bar, frames_done, emitted,
                                                 order[position], callbacks, final=False,
                                                 song_bars=request.segments[-1].end_bar)
            if callbacks.on_note:
                self._stream_notes(state, window_start, new_bar, None, emitted, order[position], callbacks,
                                   final=True, song_bars=request.segments[-1].end_bar)
            tokens_BxTx5 = np.asarray(state.tokens_BxTx5)
            for i in range(len(songs_notes)):
                new = _new_notes(tokens_BxTx5[i], window_start, new_bar, segment.end_bar)
                songs_notes[i] = np.concatenate([songs_notes[i], new])
        return songs_notes

    def _fitting_batch(self, songs: Sequence[Song], order: tuple[int, ...], position: int, window_start: int,
                       new_bar: int, window_end: int) -> tuple[int, dict[str, np.ndarray]]:
        """(window start, batch) of the window ending at ``window_end``, its prefix cut from the front to fit.

        A prefix (the written bars before ``new_bar``) denser than the largest target
        bucket would be re-windowed by ``build_example`` from its start, dropping the bars
        the step must write and the teacher forcing with them; each bar cut here is one
        the model no longer hears, but nothing is written out of place.
        """
        embeddings = self._embeddings(songs)
        while True:
            batch = self._batch(songs, ExamplePlan(order, position, window_start, window_end - window_start),
                                embeddings)
            if not int(batch["truncated_target"]):
                return window_start, batch
            if window_start == new_bar:
                raise ValueError(f"bars {new_bar}-{window_end} do not fit the largest target bucket "
                                 f"({self.example_config.target_buckets[-1]} tokens) even without a prefix")
            window_start += 1

    @staticmethod
    def _stream_notes(state, window_start: int, new_bar: int, frames_done: np.ndarray | None,
                      emitted: list[int], segment_index: int, callbacks: Callbacks, final: bool,
                      song_bars: int) -> list[int]:
        """Sends each sample's new notes once their bar is complete (durations final, cut at the song's end)."""
        tokens_BxTx5 = np.asarray(state.tokens_BxTx5[:, : int(state.step)])
        for i in range(tokens_BxTx5.shape[0]):
            notes = notes_lib.end_at_bar(_new_notes(tokens_BxTx5[i], window_start, new_bar, None), song_bars)
            if not final:
                complete_bars = max(int(frames_done[i]) - 1, 0) // FRAMES_PER_BAR
                limit = (window_start + complete_bars) * FRAMES_PER_BAR
                notes = notes[notes[:, notes_lib.ONSET] < limit]
            for note in notes[emitted[i]:]:
                callbacks.on_note(i, segment_index, note)
            emitted[i] = max(emitted[i], len(notes))
        return emitted


def window_steps(segment: Segment, window_bars: int, floor_bar: int) -> list[tuple[int, int]]:
    """(window start bar, first new bar) of each sampler call that writes ``segment``.

    Windows never start before ``floor_bar``: the segment's own start for SFS (a
    window stays inside its segment), 0 for a left-to-right model, whose first window
    takes up to ``window_bars - 1`` earlier bars of the song as its prefix. The first
    window writes from the segment's start to its own end, then each slide writes one more bar.
    """
    first_start = max(floor_bar, segment.start_bar - window_bars + 1)
    first_end = min(first_start + window_bars, segment.end_bar)
    return [(first_start, segment.start_bar)] + [(bar - window_bars + 1, bar)
                                                 for bar in range(first_end, segment.end_bar)]


def _prefix_lengths(target_type_BxT: np.ndarray, prefix_frames: int) -> np.ndarray:
    """Tokens before the FRAME that opens frame ``prefix_frames`` (the already written bars)."""
    if prefix_frames == 0:
        return np.zeros(target_type_BxT.shape[0], np.int32)
    frame_count_BxT = np.cumsum(target_type_BxT == tokenizer.TokenType.FRAME, axis=1)
    return np.argmax(frame_count_BxT > prefix_frames, axis=1).astype(np.int32)


def _new_notes(tokens_Tx5: np.ndarray, window_start: int, new_bar: int, end_bar: int | None) -> np.ndarray:
    """Song-frame notes of a sampled window from ``new_bar`` on (the prefix bars are already in the song)."""
    notes = window_notes(tokens_Tx5, window_start)
    keep = notes[:, notes_lib.ONSET] >= new_bar * FRAMES_PER_BAR
    if end_bar is not None:
        keep &= notes[:, notes_lib.ONSET] < end_bar * FRAMES_PER_BAR
    return notes[keep]


def context_summary(segments: Sequence[Segment], chosen: dict[str, int | None], config: ExampleConfig,
                    target: int) -> dict[str, dict | None]:
    """Which segment (and song bars) each slot used for ``target``, for reports and the app's ``context`` events.

    ``bars`` span every window of the target, from the first window's crop to the last
    one's: they differ only where the crop follows the window
    (``examples.context_crop_offset``, the aligned REF of a target longer than the window).
    """
    last_window = max(segments[target].n_bars - config.window_bars, 0)
    out: dict[str, dict | None] = {}
    for name, index in chosen.items():
        if index is None:
            out[name] = None
            continue
        slot = ContextSlot[name.upper()]
        start = context_bars(segments[index], slot, config.context_bars, context_crop_offset(slot, config, 0))[0]
        end = context_bars(segments[index], slot, config.context_bars,
                           context_crop_offset(slot, config, last_window))[1]
        out[name] = {"segment": index, "label": segments[index].label, "bars": [start, end]}
    return out


def load_composer(workdir: str, sampling: SamplingConfig | None = None, chunk_tokens: int = 0,
                  compute_dtype: str | None = None) -> tuple[Composer, dict]:
    """A Composer from an SFS training workdir (best checkpoint) and the bar VAE its config names."""
    model, config, meta = load_trained(workdir, compute_dtype=compute_dtype)
    if config.get("task") != "sfs":
        raise ValueError(f"{workdir} holds a {config.get('task')!r} checkpoint, not an SFS model")
    vae = None
    if model.config.use_global_view:
        vae_dir = config.get("vae_workdir", "")
        if not vae_dir:
            raise FileNotFoundError(f"{workdir}'s config names no vae_workdir, but the model uses G")
        vae, _, _ = load_trained(vae_dir, compute_dtype=compute_dtype)
        if config.get("vae_fingerprint") and bar_vae.vae_fingerprint(vae) != config.vae_fingerprint:
            raise ValueError(f"the bar VAE in {vae_dir} is not the one {workdir} was trained with")
    examples = example_config_from(config)
    if sampling is None:
        sampling = SamplingConfig(max_tokens=examples.target_buckets[-1])
    elif sampling.max_tokens is None:
        sampling = dataclasses.replace(sampling, max_tokens=examples.target_buckets[-1])
    return Composer(model, examples, vae, sampling, chunk_tokens), meta
