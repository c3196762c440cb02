"""A checked generate request -> the composer's ``ComposeRequest`` and what to stream back.

Place in the data flow: ``schemas.validate_song`` -> here -> ``worker``. The
composer writes whole segments; the app can also ask for a bar range. A range is
served by splitting the structure at its ends into same-label pieces (the app's
segment indices are kept in ``user_segment``): the bars before and after the
range inside its segment stay as they are and become the Left/Right contexts of
the rewritten bars, which is what "rewrite these bars" means musically.

Which segments count as "composed" (SFS.md section 1: contexts come only from
segments composed before the target): the seed first, then every piece with notes
that is not rewritten, in SFS's default order. Pieces that are empty and not
targets come last in the compose order, after the targets: they are not composed
yet, so they can neither be chosen as contexts nor be known bars of G. The worker
stops the composer when it reaches them (``GenerationPlan.targets`` says where).
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from sfs_jax.music import notes as notes_lib
from sfs_jax.music.structure import Segment, StructureError, default_compose_order
from sfs_jax.sampling.composer import ComposeRequest, fit_seed
from sfs_jax.sampling.segment import SamplingConfig
from sfs_jax.serving.schemas import (
    GenerateIn,
    InvalidRequest,
    Limits,
    OrderIn,
    ValidSong,
    check_seed,
    sampling_config,
    validate_song,
)


@dataclasses.dataclass(frozen=True)
class GenerationPlan:
    """Everything the worker needs for one job, already checked."""

    request: ComposeRequest  # over ``segments`` (the pieces), not the app's structure
    segments: tuple[Segment, ...]  # the pieces the composer sees
    user_segment: tuple[int, ...]  # piece index -> the app's segment index
    targets: tuple[int, ...]  # pieces to write, in compose order
    sampling: SamplingConfig
    seed: int
    client: str

    @property
    def beats(self) -> int:
        return sum(self.segments[i].n_bars for i in self.targets) * notes_lib.BEATS_PER_BAR

    def describe(self, piece: int) -> dict:
        """The app's view of a piece: its segment index and bars."""
        seg = self.segments[piece]
        return {"segment": self.user_segment[piece], "bars": [seg.start_bar, seg.end_bar]}


def _has_notes(notes_Nx4: np.ndarray, segment: Segment) -> bool:
    return len(notes_lib.notes_in_bars(notes_Nx4, segment.start_bar, segment.end_bar)) > 0


def _split(segments: tuple[Segment, ...], cuts: set[int]) -> tuple[tuple[Segment, ...], tuple[int, ...]]:
    """Pieces of the segments cut at the given bars, and each piece's segment index."""
    pieces, owner = [], []
    for index, seg in enumerate(segments):
        edges = [seg.start_bar, *sorted(c for c in cuts if seg.start_bar < c < seg.end_bar), seg.end_bar]
        for start, end in itertools.pairwise(edges):
            pieces.append(Segment(start, end, seg.label))
            owner.append(index)
    return tuple(pieces), tuple(owner)


def _targets(body: GenerateIn, song: ValidSong) -> tuple[tuple[Segment, ...], tuple[int, ...], list[int]]:
    """(pieces, piece -> segment, target pieces in order) for ``targets`` or ``bar_range``."""
    n = len(song.segments)
    if (body.targets is None) == (body.bar_range is None):
        raise InvalidRequest("give either targets (segment indices) or bar_range ([start, end) in bars), not both")
    if body.targets is not None:
        if not body.targets:
            raise InvalidRequest("targets is empty: name at least one segment to write")
        bad = [i for i in body.targets if not 0 <= i < n]
        if bad:
            raise InvalidRequest(f"target segment {bad[0]} is outside the structure's segments 0..{n - 1}")
        if len(set(body.targets)) != len(body.targets):
            raise InvalidRequest(f"targets {body.targets} name a segment twice")
        if song.seed_segment in body.targets:
            raise InvalidRequest(f"segment {song.seed_segment} is the seed: its notes are kept; "
                                 "unmark it as the seed to rewrite it")
        return song.segments, tuple(range(n)), list(body.targets)
    start, end = body.bar_range
    if not 0 <= start < end <= song.n_bars:
        raise InvalidRequest(f"bar range {start}..{end} is not inside the song's bars 0..{song.n_bars}")
    if song.seed_segment is not None:
        seed = song.segments[song.seed_segment]
        if start < seed.end_bar and seed.start_bar < end:
            raise InvalidRequest(f"bars {start}..{end} overlap the seed segment {song.seed_segment} "
                                 f"(bars {seed.start_bar}..{seed.end_bar}), whose notes are kept")
    pieces, owner = _split(song.segments, {start, end})
    return pieces, owner, [i for i, p in enumerate(pieces) if start <= p.start_bar and p.end_bar <= end]


def build_plan(body: GenerateIn, limits: Limits) -> GenerationPlan:
    """Checks a generate request completely and lays out the composer's request.

    ``sampling.max_tokens`` is left None: the worker sets the loaded model's budget.
    """
    song = validate_song(body, limits)
    seed = check_seed(body.seed)
    sampling = sampling_config(body.sampling)
    pieces, owner, targets = _targets(body, song)
    seed_piece = owner.index(song.seed_segment) if song.seed_segment is not None else None
    seed_notes = None
    if seed_piece is not None:
        seg = pieces[seed_piece]
        seed_notes = notes_lib.notes_in_bars(song.notes_Nx4, seg.start_bar, seg.end_bar)
        try:
            fit_seed(seed_notes, seg.n_bars, "pad")
        except StructureError as err:
            raise InvalidRequest(f"the seed segment {song.seed_segment} ({seg.label}{seg.n_bars}): {err}; "
                                 "import a MIDI seed into it or unmark it") from err
    unwritten = [i for i in range(len(pieces))
                 if i not in targets and i != seed_piece and not _has_notes(song.notes_Nx4, pieces[i])]
    kept = [i for i in default_compose_order(pieces, np.random.default_rng(seed))
            if i not in targets and i not in unwritten and i != seed_piece]
    order = ([seed_piece] if seed_piece is not None else []) + kept + targets + unwritten
    request = ComposeRequest(
        segments=pieces, tempo_bpm=song.tempo_bpm, seed_notes_Nx4=seed_notes, seed_segment=seed_piece,
        seed_fit="pad", compose_order=tuple(order), existing_notes_Nx4=song.notes_Nx4,
        regenerate=tuple(targets + unwritten))
    return GenerationPlan(request, pieces, owner, tuple(targets), sampling, seed, body.client)


def fill_order(body: OrderIn, limits: Limits) -> list[int]:
    """SFS's default compose order (structure.default_compose_order) restricted to the empty segments.

    The app shows this order for "fill empty segments" and lets the user edit it;
    the seed segment is never in it (its notes are kept).
    """
    song = validate_song(body, limits)
    rng = np.random.default_rng(check_seed(body.seed))
    return [i for i in default_compose_order(song.segments, rng)
            if i != song.seed_segment and not _has_notes(song.notes_Nx4, song.segments[i])]
