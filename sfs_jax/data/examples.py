"""One song -> one training example: target window, contexts and global view (SFS.md section 3).

Place in the data flow: [4] ``sfs_jax.data.loader`` decodes a ``Song`` from the TFDS
source and calls ``make_example`` inside grain's seeded ``random_map``; ``collate``
then pads the unpadded arrays made here into bucketed batches for the model [5].

The recipe (SFS.md section 3, "Training sample"): compute the song's compose order,
draw a uniform target index t, call the segments before t "composed", take the
target (a random ``window_bars`` window if it is longer), its contexts chosen by
``sfs_jax.music.contexts`` (the same code the composer uses), and the bar embeddings
with only composed bars and the target's bars before the window marked known. The
GPT-like Flat baseline (``window_scope="song"``) instead takes a window anywhere in
the song, with no contexts and the bars before it known.

The random draws (``sample_plan``) are split from the deterministic construction
(``build_example``) so tests can check an example against the plan that made it,
and every draw comes from the ``np.random.Generator`` passed in: an example is a pure
function of (song, seed, config, embeddings).

Length limits never drop an example: a target over the largest target bucket is
re-windowed to fewer bars, contexts over their share lose the notes farthest from
the target, and the global view of a song over ``max_song_bars`` is a range around
the window. Each of these sets a flag in the example (``FLAG_KEYS``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from sfs_jax.music import tokenizer
from sfs_jax.music.contexts import SFS_SLOTS, ContextSlot, context_bars, select_contexts
from sfs_jax.music.notes import BEATS_PER_BAR, FRAMES_PER_BAR, ONSET, notes_in_bars
from sfs_jax.music.song import Song
from sfs_jax.music.structure import Segment, default_compose_order

CONTEXT_MODES = ("sfs", "all_previous")
REF_CROPS = ("first", "aligned")
WINDOW_SCOPES = ("segment", "song")

# Keys of an example, grouped by how ``loader.collate`` pads them.
TARGET_KEYS = ("target_type", "target_pitch", "target_velocity", "target_duration", "target_frame",
               "target_song_frame", "target_bar")
CONTEXT_KEYS = ("context_pitch", "context_velocity", "context_duration", "context_song_frame",
                "context_slot", "context_segment_start_frame", "context_segment_end_frame")
BAR_KEYS = ("bar_embedding", "bar_known")
SCALAR_KEYS = ("segment_start_frame", "segment_end_frame", "song_n_frames", "window_start_bar",
               "n_beats", "n_bars", "global_start_bar")
FLAG_KEYS = ("truncated_target", "truncated_context", "truncated_bars")


@dataclasses.dataclass(frozen=True)
class ExampleConfig:
    """How examples are cut and bounded; the buckets are the only lengths jit will see.

    ``context_mode="sfs"`` gives the four SFS slots; ``"all_previous"`` (ablation) every
    composed segment, most recent first, up to ``previous_token_budget`` tokens.
    ``bar_buckets`` are the global view's lengths G; ``max_song_bars`` must fit in the
    largest. The largest context bucket is the total context budget, shared fairly
    between the SFS slots (a slot shorter than its share leaves the rest to others).

    ``ref_crop="first"`` crops REF to its first ``context_bars`` bars (SFS.md section 1);
    ``"aligned"`` to the bars at the window's offset in the target segment, so a window
    deep in a segment longer than ``context_bars`` still sees the same bars of its
    reference (with 4-bar windows, a training window starting at bar k of an 8-bar
    segment sees only 4 - k of the bars it repeats under "first", none at k = 4; in
    generation every slid window's new bar lies past them).

    ``window_scope="segment"`` (SFS) keeps the target window inside one segment;
    ``"song"`` (the GPT-like Flat baseline) draws it anywhere in the song, across
    segment boundaries, with no contexts and every bar before the window known, so the
    model learns to continue the song left to right (SFS.md section 5: "GPT-like").
    """

    window_bars: int = 8
    context_bars: int = 8
    context_mode: str = "sfs"
    ref_crop: str = "first"
    window_scope: str = "segment"
    previous_token_budget: int = 1024
    target_buckets: tuple[int, ...] = (384, 512, 768, 1024)
    context_buckets: tuple[int, ...] = (128, 256, 512, 1024, 1536)
    max_song_bars: int = 256
    bar_buckets: tuple[int, ...] = (64, 128, 256)

    def __post_init__(self) -> None:
        if self.context_mode not in CONTEXT_MODES:
            raise ValueError(f"context_mode {self.context_mode!r} not in {CONTEXT_MODES}")
        if self.ref_crop not in REF_CROPS:
            raise ValueError(f"ref_crop {self.ref_crop!r} not in {REF_CROPS}")
        if self.window_scope not in WINDOW_SCOPES:
            raise ValueError(f"window_scope {self.window_scope!r} not in {WINDOW_SCOPES} (an experiment config's "
                             "'auto' is resolved by training.tasks.example_config_from)")
        if self.window_bars < 1 or self.context_bars < 1:
            raise ValueError("window_bars and context_bars must be >= 1")
        for name in ("target_buckets", "context_buckets", "bar_buckets"):
            buckets = getattr(self, name)
            if not buckets or any(b <= 0 for b in buckets) or list(buckets) != sorted(set(buckets)):
                raise ValueError(f"{name} must be positive and strictly ascending, got {buckets}")
        if self.target_buckets[-1] < FRAMES_PER_BAR + 1:
            raise ValueError("the largest target bucket must hold an empty bar "
                             f"({FRAMES_PER_BAR + 1} tokens)")
        if not 1 <= self.max_song_bars <= self.bar_buckets[-1]:
            raise ValueError(f"max_song_bars {self.max_song_bars} must be in 1..{self.bar_buckets[-1]} "
                             "(the largest bar bucket)")
        if not 0 <= self.previous_token_budget <= self.context_buckets[-1]:
            raise ValueError(f"previous_token_budget {self.previous_token_budget} must be in "
                             f"0..{self.context_buckets[-1]} (the largest context bucket)")


@dataclasses.dataclass(frozen=True)
class ExamplePlan:
    """The random draws of one example: compose order, target index t, window start."""

    compose_order: tuple[int, ...]
    target_position: int
    window_start_bar: int
    window_bars: int

    @property
    def target(self) -> int:
        """Index (in the song's segments) of the target segment."""
        return self.compose_order[self.target_position]

    @property
    def composed(self) -> tuple[int, ...]:
        """Segments composed before the target, earliest first."""
        return self.compose_order[: self.target_position]


def sample_plan(song: Song, rng: np.random.Generator, config: ExampleConfig) -> ExamplePlan:
    """Draws the order, a uniform target index and a window start uniform over bar offsets.

    With ``window_scope="song"`` only the window start is drawn, uniform over the song's
    bars; the plan's order is the song's (left to right) and its target the segment
    the window starts in.
    """
    if config.window_scope == "song":
        window_bars = min(song.n_bars, config.window_bars)
        window_start = int(rng.integers(song.n_bars - window_bars + 1))
        return left_to_right_plan(song.segments, window_start, window_bars)
    order = tuple(default_compose_order(song.segments, rng))
    position = int(rng.integers(len(order)))
    segment = song.segments[order[position]]
    window_bars = min(segment.n_bars, config.window_bars)
    window_start = segment.start_bar + int(rng.integers(segment.n_bars - window_bars + 1))
    return ExamplePlan(order, position, window_start, window_bars)


def left_to_right_plan(segments: Sequence[Segment], window_start_bar: int, window_bars: int) -> ExamplePlan:
    """The plan of a song written left to right, at a window starting at ``window_start_bar``."""
    position = next(i for i, seg in enumerate(segments) if seg.start_bar <= window_start_bar < seg.end_bar)
    return ExamplePlan(tuple(range(len(segments))), position, window_start_bar, window_bars)


def make_example(song: Song, rng: np.random.Generator, config: ExampleConfig,
                 bar_embeddings_GxE: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """A training example of ``song`` drawn with ``rng`` (SFS.md section 3); see ``build_example``."""
    return build_example(song, sample_plan(song, rng, config), config, bar_embeddings_GxE)


def build_example(song: Song, plan: ExamplePlan, config: ExampleConfig,
                  bar_embeddings_GxE: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The unpadded arrays of one example (keys: the ``*_KEYS`` tuples of this module).

    ``bar_embeddings_GxE`` holds one frozen bar-VAE vector per song bar (G = the
    song's bars here); None gives zeros of width 1 so the pipeline runs before a VAE
    exists. Embeddings of unknown bars are zeroed here, so no later stage can leak a
    bar the model must not see, whatever it does with ``bar_known``.
    """
    # A song-scope window's "segment" is the whole song: it may cross any boundary.
    span = (Segment(0, song.n_bars, "song") if config.window_scope == "song"
            else song.segments[plan.target])
    window_bars, target, truncated_target = _target_tokens(song, plan, config.target_buckets[-1])
    window_end_bar = plan.window_start_bar + window_bars
    context, truncated_context = _context_tokens(song, plan, config, window_end_bar)
    global_start, global_end = _global_range(song.n_bars, plan.window_start_bar, window_end_bar,
                                             config.max_song_bars)
    known_G = known_bars(song, plan, config.window_scope)
    bars = _global_view(song, known_G, bar_embeddings_GxE, global_start, global_end)
    scalars = {
        "segment_start_frame": np.int32(span.start_bar * FRAMES_PER_BAR),
        "segment_end_frame": np.int32(span.end_bar * FRAMES_PER_BAR),
        "song_n_frames": np.int32(song.n_bars * FRAMES_PER_BAR),
        "window_start_bar": np.int32(plan.window_start_bar),
        "n_beats": np.float32(window_bars * BEATS_PER_BAR),
        "n_bars": np.int32(song.n_bars),
        "global_start_bar": np.int32(global_start),
    }
    flags = {
        "truncated_target": np.int32(truncated_target),
        "truncated_context": np.int32(truncated_context),
        "truncated_bars": np.int32(global_end - global_start < song.n_bars),
    }
    return {**target, **context, **bars, **{k: np.asarray(v) for k, v in {**scalars, **flags}.items()}}


# ---------------------------------------------------------------------------
# Target
# ---------------------------------------------------------------------------


def _target_tokens(song: Song, plan: ExamplePlan,
                   max_tokens: int) -> tuple[int, dict[str, np.ndarray], bool]:
    """Target fields of the window, halving the window (same start) until it fits max_tokens.

    Returns the window's final length in bars, the fields, and whether it was cut.
    """
    window_bars = plan.window_bars
    while True:
        end_bar = plan.window_start_bar + window_bars
        window_notes = notes_in_bars(song.notes_Nx4, plan.window_start_bar, end_bar)
        tokens_Tx5, _ = tokenizer.encode_target(window_notes, window_bars * FRAMES_PER_BAR)
        if len(tokens_Tx5) <= max_tokens:
            break
        if window_bars == 1:
            raise ValueError(f"song {song.song_id}: bar {plan.window_start_bar} alone needs "
                             f"{len(tokens_Tx5)} target tokens, more than the largest bucket {max_tokens}")
        window_bars //= 2
    window_start_frame = plan.window_start_bar * FRAMES_PER_BAR
    song_frame_T = window_start_frame + tokens_Tx5[:, tokenizer.FRAME]
    # END sits one frame past the window; it belongs to the window's last bar.
    bar_T = np.minimum(song_frame_T // FRAMES_PER_BAR, end_bar - 1)
    fields = {
        "target_type": tokens_Tx5[:, tokenizer.TYPE],
        "target_pitch": tokens_Tx5[:, tokenizer.PITCH],
        "target_velocity": tokens_Tx5[:, tokenizer.VEL],
        "target_duration": tokens_Tx5[:, tokenizer.DUR],
        "target_frame": tokens_Tx5[:, tokenizer.FRAME],
        "target_song_frame": song_frame_T,
        "target_bar": bar_T,
    }
    return window_bars, {k: v.astype(np.int32) for k, v in fields.items()}, window_bars < plan.window_bars


# ---------------------------------------------------------------------------
# Contexts
# ---------------------------------------------------------------------------


def context_sources(segments: Sequence[Segment], plan: ExamplePlan,
                    context_mode: str) -> list[tuple[ContextSlot, int]]:
    """(slot, segment index) of each context, in concatenation order.

    ``sfs``: the filled slots of ``select_contexts`` in the order LEFT, RIGHT, SEED,
    REF. ``all_previous``: every composed segment as PREVIOUS, most recently composed
    first, so a token budget keeps the most recent material.
    """
    if context_mode == "all_previous":
        return [(ContextSlot.PREVIOUS, i) for i in reversed(plan.composed)]
    chosen = select_contexts(segments, plan.composed, plan.target)
    return [(slot, chosen[slot]) for slot in SFS_SLOTS if chosen[slot] is not None]


def context_crop_offset(slot: ContextSlot, config: ExampleConfig, window_offset_bars: int) -> int:
    """Bars into its segment where a context's crop starts, for a window ``window_offset_bars`` into its target.

    The window's offset for an aligned REF, else 0 (the one place this rule lives:
    training examples, generation and the context summaries all ask here).
    """
    if slot == ContextSlot.REF and config.ref_crop == "aligned":
        return window_offset_bars
    return 0


def _cropped_notes(song: Song, segment: Segment, slot: ContextSlot, max_bars: int,
                   offset_bars: int) -> np.ndarray:
    """The context's notes with onsets in song frames (crop per ``context_bars``)."""
    start_bar, end_bar = context_bars(segment, slot, max_bars, offset_bars)
    notes_Nx4 = notes_in_bars(song.notes_Nx4, start_bar, end_bar)
    notes_Nx4[:, ONSET] += start_bar * FRAMES_PER_BAR
    return notes_Nx4


def fair_shares(lengths: Sequence[int], budget: int) -> list[int]:
    """Tokens each context may keep: at most its length, the budget split fairly.

    Shortest first, each gets min(length, what is left / contexts left), so a short
    context's unused share goes to the longer ones and nothing is cut unless the
    total exceeds the budget.
    """
    shares, remaining = [0] * len(lengths), budget
    for done, i in enumerate(sorted(range(len(lengths)), key=lambda j: lengths[j])):
        shares[i] = min(lengths[i], remaining // (len(lengths) - done))
        remaining -= shares[i]
    return shares


def _greedy_shares(lengths: Sequence[int], budget: int) -> list[int]:
    """Tokens each context may keep when earlier ones come first (``all_previous``)."""
    shares, remaining = [], budget
    for length in lengths:
        shares.append(min(length, remaining))
        remaining -= shares[-1]
    return shares


def keep_nearest(notes_Nx4: np.ndarray, n_keep: int, start_frame: int, end_frame: int) -> np.ndarray:
    """The n_keep notes nearest in time to frames [start_frame, end_frame), in their order.

    Truncation keeps what is closest to the target (the end of a left context, the
    start of a right one); among equally near notes the earlier ones stay.
    """
    if len(notes_Nx4) <= n_keep:
        return notes_Nx4
    onset_N = notes_Nx4[:, ONSET].astype(np.int64)
    distance_N = np.maximum(np.maximum(start_frame - onset_N, onset_N - (end_frame - 1)), 0)
    keep = np.sort(np.argsort(distance_N, kind="stable")[:n_keep])
    return notes_Nx4[keep]


def _context_tokens(song: Song, plan: ExamplePlan, config: ExampleConfig,
                    window_end_bar: int) -> tuple[dict[str, np.ndarray], bool]:
    """Concatenated context fields and whether any context lost notes to its share.

    In ``all_previous`` mode older segments left out by ``previous_token_budget`` count
    as lost notes too, so the flag measures how often the budget binds.
    """
    sources = context_sources(song.segments, plan, config.context_mode) if config.window_scope == "segment" else []
    window_offset = plan.window_start_bar - song.segments[plan.target].start_bar
    notes = [_cropped_notes(song, song.segments[i], slot, config.context_bars,
                            context_crop_offset(slot, config, window_offset)) for slot, i in sources]
    lengths = [len(n) for n in notes]
    if config.context_mode == "all_previous":
        shares = _greedy_shares(lengths, config.previous_token_budget)
    else:
        shares = fair_shares(lengths, config.context_buckets[-1])
    start_frame = plan.window_start_bar * FRAMES_PER_BAR
    end_frame = window_end_bar * FRAMES_PER_BAR
    parts = []
    for (slot, index), notes_Nx4, share in zip(sources, notes, shares, strict=True):
        # Encoded after truncation: duration code 0 refers to the notes kept.
        tokens_Cx5 = tokenizer.encode_context(keep_nearest(notes_Nx4, share, start_frame, end_frame))
        segment = song.segments[index]
        n = len(tokens_Cx5)
        parts.append({
            "context_pitch": tokens_Cx5[:, tokenizer.PITCH],
            "context_velocity": tokens_Cx5[:, tokenizer.VEL],
            "context_duration": tokens_Cx5[:, tokenizer.DUR],
            "context_song_frame": tokens_Cx5[:, tokenizer.FRAME],
            "context_slot": np.full(n, int(slot)),
            "context_segment_start_frame": np.full(n, segment.start_bar * FRAMES_PER_BAR),
            "context_segment_end_frame": np.full(n, segment.end_bar * FRAMES_PER_BAR),
        })
    fields = {key: np.concatenate([p[key] for p in parts] + [np.zeros(0)]).astype(np.int32)
              for key in CONTEXT_KEYS}
    return fields, any(s < n for s, n in zip(shares, lengths, strict=True))


# ---------------------------------------------------------------------------
# Global view
# ---------------------------------------------------------------------------


def _global_range(n_bars: int, window_start_bar: int, window_end_bar: int,
                  max_bars: int) -> tuple[int, int]:
    """Song bars [start, end) that G sees: all of them, or max_bars centred on the window."""
    if n_bars <= max_bars:
        return 0, n_bars
    start = window_start_bar - (max_bars - (window_end_bar - window_start_bar)) // 2
    start = int(np.clip(start, 0, n_bars - max_bars))
    return start, start + max_bars


def known_bars(song: Song, plan: ExamplePlan, window_scope: str = "segment") -> np.ndarray:
    """bool [n_bars]: bars of composed segments and the target's bars before the window.

    A song-scope window (written left to right) knows every bar before it and nothing after.
    """
    known_G = np.zeros(song.n_bars, bool)
    if window_scope == "song":
        known_G[:plan.window_start_bar] = True
        return known_G
    for index in plan.composed:
        segment = song.segments[index]
        known_G[segment.start_bar:segment.end_bar] = True
    known_G[song.segments[plan.target].start_bar:plan.window_start_bar] = True
    return known_G


def _global_view(song: Song, known_G: np.ndarray, bar_embeddings_GxE: np.ndarray | None,
                 start_bar: int, end_bar: int) -> dict[str, np.ndarray]:
    """bar_embedding [G, E] (unknown bars zeroed) and bar_known [G] over bars [start, end)."""
    if bar_embeddings_GxE is None:
        bar_embeddings_GxE = np.zeros((song.n_bars, 1), np.float32)
    embeddings_GxE = np.asarray(bar_embeddings_GxE, np.float32)
    if embeddings_GxE.ndim != 2 or embeddings_GxE.shape[0] != song.n_bars:
        raise ValueError(f"song {song.song_id}: bar embeddings of shape {embeddings_GxE.shape}, "
                         f"expected ({song.n_bars}, E)")
    embeddings_GxE = np.where(known_G[:, None], embeddings_GxE, np.float32(0))
    return {"bar_embedding": embeddings_GxE[start_bar:end_bar], "bar_known": known_G[start_bar:end_bar]}
