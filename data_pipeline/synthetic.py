"""Procedural structured piano songs, so every command runs with nothing downloaded.

Place in the data flow: [0] the dataset builder's embedded default source. A song here
is what a MIDI reader plus a segmentation stage would produce: ``notes_Nx4`` on the SFS
grid (``sfs_jax.music.notes``) and a tuple of ``Segment`` (``sfs_jax.music.structure``).
When no corpus is given the model trains on these, so they carry real, learnable
structure rather than noise:

- a pop form (intro, verse, pre-chorus, chorus, bridge, outro); roles become labels
  A, B, C... by first appearance, and every section of a label shares its material;
- one key per song; per label a diatonic chord progression, a motivic melody whose
  beats are chord tones, and a left-hand accompaniment pattern;
- small differences between repeats (cadence chord, a few melody notes, velocities),
  so the model has to learn "similar", not "copy";
- the tokenizer's edge cases arise naturally: notes tied across bar lines, same-pitch
  notes back to back, and notes longer than 64 frames (a final pedal tone).

Intros are accompaniment only (no melody) but, like every other bar, never empty.
Every random draw comes from ``np.random.default_rng([seed, index])``: a song is a pure
function of (seed, index), so a dataset rebuilds bit for bit on any machine.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from sfs_jax.music.notes import (
    DURATION,
    FRAMES_PER_BAR,
    FRAMES_PER_BEAT,
    NOTE_FIELDS,
    ONSET,
    PITCH,
    VELOCITY,
    normalize_notes,
)
from sfs_jax.music.structure import Segment, segments_from_lengths

MIN_TEMPO_BPM = 70.0
MAX_TEMPO_BPM = 150.0
MIN_SONG_BARS = 16
MAX_SONG_BARS = 64
FRAMES_PER_HALF_BAR = FRAMES_PER_BAR // 2
HALVES_PER_BAR = 2

# Keys: scale steps in semitones from the tonic. Chords are diatonic triads stacked in
# thirds on a scale degree, so one progression table serves both modes.
MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)
MINOR_SCALE = (0, 2, 3, 5, 7, 8, 10)
MAJOR_KEY_PROBABILITY = 0.6
DEGREES_PER_OCTAVE = 7
TONIC_DEGREE, DOMINANT_DEGREE = 0, 4
TRIAD_TONE_DEGREES = (0, 2, 4)
# Chord-tone masks over "scale degrees above the chord root" (0..6), for table lookups.
TRIAD_TONE_MASK_7 = np.isin(np.arange(DEGREES_PER_OCTAVE), TRIAD_TONE_DEGREES)
ROOT_TONE_MASK_7 = np.arange(DEGREES_PER_OCTAVE) == 0
MIDI_OCTAVES = 11  # MIDI pitches 0..127 span fewer than 11 octaves

# Registers (MIDI pitch). Triads sit just below the melody so the hands never share a key.
MELODY_LOW_PITCH, MELODY_HIGH_PITCH = 62, 84
BASS_LOW_PITCH = 38  # bass roots and fifths in [38, 50), low octaves in [26, 38)
TRIAD_LOW_PITCH = 50  # closed triads in [50, 62)

# Four-chord progressions as scale-degree roots (0 = tonic): I-V-vi-IV, I-vi-IV-V, ...
PROGRESSIONS = (
    (0, 4, 5, 3), (0, 5, 3, 4), (5, 3, 0, 4), (0, 3, 4, 0),
    (1, 4, 0, 5), (0, 3, 5, 4), (3, 4, 2, 5), (0, 2, 3, 4),
)
TWO_CHORDS_PER_BAR_PROBABILITY = 0.25

# Forms: sequences of section roles. Most songs use a pop template, the rest a random walk.
POP_FORMS = (
    ("verse", "chorus", "verse", "chorus"),
    ("intro", "verse", "chorus", "verse", "chorus", "outro"),
    ("verse", "verse", "chorus", "verse", "chorus"),
    ("intro", "verse", "prechorus", "chorus", "verse", "prechorus", "chorus", "bridge", "chorus"),
    ("verse", "verse", "bridge", "verse"),
    ("verse", "chorus", "verse", "chorus", "bridge", "chorus", "chorus"),
    ("intro", "verse", "verse", "chorus", "bridge", "chorus", "outro"),
)
POP_FORM_PROBABILITY = 0.7
NEXT_ROLE = {  # role -> (next roles, probabilities) for the random forms
    "verse": (("verse", "prechorus", "chorus"), (0.25, 0.15, 0.6)),
    "prechorus": (("chorus",), (1.0,)),
    "chorus": (("verse", "chorus", "bridge"), (0.4, 0.15, 0.45)),
    "bridge": (("chorus", "verse"), (0.7, 0.3)),
}
RANDOM_FORM_BODY_SECTIONS = (3, 8)  # [low, high) sections after the optional intro
RANDOM_INTRO_PROBABILITY = 0.4
RANDOM_OUTRO_PROBABILITY = 0.35

SECTION_BARS = (2, 4, 8, 16)
SECTION_BARS_PROBABILITIES = {
    "intro": (0.25, 0.55, 0.2, 0.0),
    "outro": (0.25, 0.55, 0.2, 0.0),
    "prechorus": (0.1, 0.6, 0.3, 0.0),
    "other": (0.02, 0.3, 0.6, 0.08),
}
REPEAT_LENGTH_CHANGE_PROBABILITY = 0.08  # a repeat twice or half as long, like "C8 ... C16"

# Melody rhythm cells: durations in frames summing to one bar; negative = rest.
BODY_CELLS = (
    (8, 8, 8, 8), (8, 8, 16), (16, 8, 8), (4, 4, 8, 8, 8), (8, 4, 4, 16), (12, 4, 8, 8),
    (8, 8, 4, 4, 8), (4, 4, 4, 4, 8, 8), (-8, 8, 8, 8), (-4, 4, 8, 8, 8), (8, -8, 8, 8),
    (8, 8, 8, -8), (16, -8, 8), (2, 2, 4, 8, 8, 8), (12, 4, 12, 4), (4, 8, 4, 16), (24, 8), (8, 24),
    (4, 4, 4, 4, 4, 4, 8), (4, 4, 8, 4, 4, 8), (2, 2, 4, 4, 4, 8, 8), (-4, 4, 4, 4, 4, 4, 8),
    (4, 4, 4, 4, 4, 4, 4, 4), (8, 4, 4, 4, 4, 8), (4, 4, 8, -4, 4, 8), (2, 2, 4, 4, 4, 4, 4, 8),
)
CADENCE_CELLS = ((8, 8, 16), (16, 16), (8, 24), (4, 4, 24), (32,), (8, 8, 8, -8), (24, -8))
BODY_CELLS_PER_LABEL = 3


def _zero_padded(rows: tuple[tuple, ...]) -> np.ndarray:
    """Stacks variable-length tuples into one read-only table, zero-padded at the end.

    Songs then pick cells or patterns for all their bars with one gather instead of a
    Python loop; a zero duration marks padding.
    """
    first = np.asarray(rows[0])
    table = np.zeros((len(rows), max(len(r) for r in rows), *first.shape[1:]), np.int64)
    for i, row in enumerate(rows):
        table[i, :len(row)] = row
    table.setflags(write=False)
    return table


CELL_DURATION_CxS = _zero_padded(BODY_CELLS + CADENCE_CELLS)  # signed, 0 = padding
CADENCE_BAR_TYPE = BODY_CELLS_PER_LABEL  # bar types 0..2 use body cells, 3 the cadence cell
# Bar types of a 4-bar phrase: repeated types give the melody its motifs.
PHRASE_TEMPLATES = ((0, 1, 0, 3), (0, 1, 2, 3), (0, 0, 1, 3), (0, 1, 0, 2), (0, 1, 2, 1))
CONTOUR_STEPS = (-2, -1, 0, 1, 2)  # scale steps between notes; 0 = same pitch again
CONTOUR_STEP_PROBABILITIES = (0.15, 0.3, 0.1, 0.3, 0.15)
MAX_TIE_PROBABILITY = 0.6  # chance a note is held over the rest after it
SNAP_OFFSETS = (0, -1, 1, -2, 2, -3, 3)  # nearest first; reaches a root from anywhere
HARMONIZE_PROBABILITY = {"chorus": 0.9, "other": 0.5}
MELODY_VARIATION_PROBABILITY = 0.08  # per note, in repeats of a label
RESOLVE_REPEAT_CADENCE_PROBABILITY = 0.4  # a repeat ends on I instead of the material's V

# Accompaniment: (onset in bar, voice, duration) over one bar. Voices index _voicing().
BASS, FIFTH, LOW_OCTAVE, TRIAD_LOW, TRIAD_MID, TRIAD_HIGH = range(6)


def _twice(half_bar: tuple[tuple[int, int, int], ...]) -> tuple[tuple[int, int, int], ...]:
    """A bar pattern from a half-bar one, so the second chord of a bar gets the same figure."""
    return half_bar + tuple((onset + FRAMES_PER_HALF_BAR, voice, dur) for onset, voice, dur in half_bar)


_TRIAD = (TRIAD_LOW, TRIAD_MID, TRIAD_HIGH)
_CHORDS_ON_BEATS = tuple((t, v, 8) for t in (0, 8) for v in _TRIAD)
_OCTAVE_EIGHTHS = ((0, LOW_OCTAVE, 4), (4, BASS, 4), (8, LOW_OCTAVE, 4), (12, BASS, 4))
_ARPEGGIO = (FIFTH, TRIAD_LOW, TRIAD_MID, TRIAD_HIGH, TRIAD_MID, TRIAD_LOW, FIFTH)
_ALBERTI = (TRIAD_LOW, TRIAD_HIGH, TRIAD_MID, TRIAD_HIGH) * 2
ACCOMPANIMENT_PATTERNS = {
    "block": _twice(((0, LOW_OCTAVE, 16), (0, BASS, 16), *_CHORDS_ON_BEATS)),
    "pulse": _twice((*_OCTAVE_EIGHTHS, *((t, v, 4) for t in (0, 4, 8, 12) for v in _TRIAD))),
    "arpeggio": _twice(((0, BASS, 16), *((2 * (i + 1), v, 2) for i, v in enumerate(_ARPEGGIO)))),
    "alberti": _twice(((0, BASS, 16), *((2 * i, v, 2) for i, v in enumerate(_ALBERTI)))),
    "broken_octaves": _twice((*_OCTAVE_EIGHTHS, *((t, v, 8) for t in (0, 8) for v in _TRIAD[1:]))),
    "stride": ((0, LOW_OCTAVE, 8), (0, BASS, 8), (16, FIFTH, 8),
               *((t, v, 4) for t in (8, 12, 24, 28) for v in _TRIAD)),
}
PATTERN_NAMES = tuple(ACCOMPANIMENT_PATTERNS)
PATTERN_TABLE_KxPx3 = _zero_padded(tuple(ACCOMPANIMENT_PATTERNS.values()))  # duration 0 = padding
INTRO_PATTERN_IDS = tuple(PATTERN_NAMES.index(name) for name in ("block", "arpeggio", "alberti"))
LABEL_OWN_PATTERN_PROBABILITY = 0.35
FINAL_CHORD_VOICES = (LOW_OCTAVE, BASS, TRIAD_LOW, TRIAD_MID, TRIAD_HIGH)

# Endings: "held" sustains a tonic chord through the last bar; "pedal" adds a low tonic
# held over the last three bars (96 frames), the source of notes longer than 64 frames.
ENDING_STYLES = ("plain", "held", "pedal")
ENDING_PROBABILITIES = (0.3, 0.35, 0.35)
PEDAL_BARS = 3

# Velocities: melody sings over the accompaniment; choruses are louder than intros.
MELODY_VELOCITY_RANGE = (80, 97)  # [low, high) base per song
ACCOMPANIMENT_VELOCITY_RANGE = (52, 67)
ROLE_VELOCITY_OFFSET = {"intro": -8, "verse": 0, "prechorus": 3, "chorus": 8, "bridge": -3, "outro": -6}
SECTION_VELOCITY_JITTER = 3
DOWNBEAT_ACCENT, BEAT_ACCENT = 6, 2
VELOCITY_NOISE_STD = 5.0
HARMONY_VELOCITY_DROP = 10


@dataclasses.dataclass(frozen=True, eq=False)
class SyntheticSong:
    """One generated song: notes on the SFS grid plus its ground-truth structure.

    ``eq=False`` because dataclass equality on arrays is ambiguous; compare fields.
    ``notes_Nx4`` is read-only so the frozen song cannot be changed through it.
    """

    song_id: str
    notes_Nx4: np.ndarray  # int32 [N, 4], NOTE_FIELDS, normalized
    n_bars: int
    tempo_bpm: float
    segments: tuple[Segment, ...]


@dataclasses.dataclass(frozen=True, eq=False)
class _Key:
    """A tonic and a diatonic scale; melody notes live as scale degrees until rendered."""

    tonic_pc: int
    scale_7: np.ndarray  # semitones of the 7 scale steps above the tonic
    melody_low_degree: int  # lowest/highest scale degree inside the melody register
    melody_high_degree: int

    @classmethod
    def create(cls, tonic_pc: int, scale: tuple[int, ...]) -> _Key:
        """Precomputes the melody's degree range once per song instead of once per section."""
        key = cls(tonic_pc, np.asarray(scale, np.int64), 0, 0)
        degree_D = np.arange(DEGREES_PER_OCTAVE * MIDI_OCTAVES)
        pitch_D = key.pitch(degree_D)
        inside = degree_D[(pitch_D >= MELODY_LOW_PITCH) & (pitch_D <= MELODY_HIGH_PITCH)]
        return dataclasses.replace(key, melody_low_degree=int(inside[0]), melody_high_degree=int(inside[-1]))

    def pitch(self, degree: np.ndarray) -> np.ndarray:
        """MIDI pitch of absolute scale degrees (degree 0 = tonic in MIDI octave -1)."""
        octave, step = np.divmod(degree, DEGREES_PER_OCTAVE)
        return self.tonic_pc + 12 * octave + self.scale_7[step]

    def chord_pcs(self, root_H: np.ndarray) -> np.ndarray:
        """[H, 3] pitch classes (root, third, fifth) of the diatonic triads on root_H."""
        return self.pitch(root_H[:, None] + np.asarray(TRIAD_TONE_DEGREES)) % 12


@dataclasses.dataclass(frozen=True, eq=False)
class _Material:
    """What every section of one label shares; sections render it with small variation."""

    role: str
    chord_root_H: np.ndarray  # scale degree 0..6 of the chord per half bar
    melody_onset_M: np.ndarray  # frames from the section start
    melody_duration_M: np.ndarray  # frames
    melody_degree_M: np.ndarray  # scale degree before snapping to the chords
    pattern_id: int  # row of PATTERN_TABLE_KxPx3
    harmonize: bool  # double the melody a third (or fourth) below


@dataclasses.dataclass(frozen=True)
class _Dynamics:
    """Per-song base velocities; roles and humanization move around them."""

    melody: int
    accompaniment: int


# ---------------------------------------------------------------- form


def _categorical(rng: np.random.Generator, probabilities: tuple[float, ...],
                 size: int | tuple[int, ...] | None = None) -> np.ndarray:
    """Indices drawn with the given probabilities.

    Same distribution as ``rng.choice(len(p), p=p)`` without its per-call validation,
    which dominated the generator's time.
    """
    cdf = np.cumsum(probabilities)
    return np.minimum(np.searchsorted(cdf, rng.random(size) * cdf[-1], side="right"), len(cdf) - 1)



def _random_roles(rng: np.random.Generator) -> list[str]:
    """A role sequence from a small Markov chain, for forms outside the templates."""
    roles = ["intro"] if rng.random() < RANDOM_INTRO_PROBABILITY else []
    role = "verse"
    for _ in range(rng.integers(*RANDOM_FORM_BODY_SECTIONS)):
        roles.append(role)
        choices, probabilities = NEXT_ROLE[role]
        role = choices[_categorical(rng, probabilities)]
    if rng.random() < RANDOM_OUTRO_PROBABILITY:
        roles.append("outro")
    return roles


def _section_lengths(rng: np.random.Generator, roles: list[str]) -> list[int]:
    """Bars per section: one length per role, rarely doubled or halved in a repeat."""
    role_bars = {}
    for role in dict.fromkeys(roles):
        probabilities = SECTION_BARS_PROBABILITIES.get(role, SECTION_BARS_PROBABILITIES["other"])
        role_bars[role] = SECTION_BARS[_categorical(rng, probabilities)]
    lengths, seen = [], set()
    for role in roles:
        n_bars = role_bars[role]
        if role in seen and rng.random() < REPEAT_LENGTH_CHANGE_PROBABILITY:
            n_bars = n_bars * 2 if n_bars <= max(SECTION_BARS) // 2 else n_bars // 2
        lengths.append(n_bars)
        seen.add(role)
    return _fit_total_bars(roles, lengths)


def _fit_total_bars(roles: list[str], lengths: list[int]) -> list[int]:
    """Halves the biggest role / doubles the smallest until the song has 16..64 bars.

    Halving removes at most half of a song over 64 bars and doubling adds at most 16 to
    one under 16, so the loop cannot oscillate.
    """
    lengths = list(lengths)
    while sum(lengths) > MAX_SONG_BARS:
        role = roles[int(np.argmax(lengths))]
        lengths = [max(n // 2, min(SECTION_BARS)) if r == role else n
                   for r, n in zip(roles, lengths, strict=True)]
    while sum(lengths) < MIN_SONG_BARS:
        role = roles[int(np.argmin(lengths))]
        lengths = [n * 2 if r == role else n for r, n in zip(roles, lengths, strict=True)]
    return lengths


def _plan_form(rng: np.random.Generator) -> tuple[list[str], tuple[Segment, ...]]:
    """Roles per section and the labelled segments (labels A, B, ... by first appearance)."""
    if rng.random() < POP_FORM_PROBABILITY:
        roles = list(POP_FORMS[rng.integers(len(POP_FORMS))])
    else:
        roles = _random_roles(rng)
    lengths = _section_lengths(rng, roles)
    letter = {role: chr(ord("A") + i) for i, role in enumerate(dict.fromkeys(roles))}
    segments = segments_from_lengths([(letter[r], n) for r, n in zip(roles, lengths, strict=True)])
    return roles, segments


# ---------------------------------------------------------------- material


def _chord_roots(rng: np.random.Generator, progression: tuple[int, ...], n_bars: int) -> np.ndarray:
    """Chord root per half bar: the progression at one or two chords a bar, ending on V."""
    prog = np.asarray(progression)
    if rng.random() < TWO_CHORDS_PER_BAR_PROBABILITY:
        root_H = prog[np.arange(n_bars * HALVES_PER_BAR) % len(prog)]
    else:
        root_H = np.repeat(prog[np.arange(n_bars) % len(prog)], HALVES_PER_BAR)
    root_H[-HALVES_PER_BAR:] = DOMINANT_DEGREE  # a half cadence; sections may resolve it
    return root_H


def _fold_into_range(x: np.ndarray, low: int, high: int) -> np.ndarray:
    """Reflects values at the range ends (a triangle wave), keeping contour shapes intact."""
    span = high - low
    y = (x - low) % (2 * span)
    return low + np.where(y > span, 2 * span - y, y)


def _melody_bar_types(rng: np.random.Generator, n_bars: int) -> np.ndarray:
    """[B] bar type per bar: a 4-bar phrase template repeated, the last bar a cadence."""
    template = PHRASE_TEMPLATES[rng.integers(len(PHRASE_TEMPLATES))]
    bar_type_B = np.resize(np.asarray(template), n_bars)
    bar_type_B[-1] = CADENCE_BAR_TYPE
    return bar_type_B


def _compose_melody(rng: np.random.Generator, chord_root_H: np.ndarray,
                    key: _Key) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A motivic melody: bar types with their own rhythm cell and contour, repeated in phrases.

    Returns (onset_M frames, duration_M frames, degree_M scale degrees). Bars of one type
    share rhythm and contour, starting near the bar's chord root so repeats sequence with
    the harmony. Rests are dropped; a note before a rest is sometimes held over it, which
    ties notes across bar lines when a bar starts with a rest.
    """
    n_bars = len(chord_root_H) // HALVES_PER_BAR
    bar_type_B = _melody_bar_types(rng, n_bars)
    cell_T = np.append(rng.choice(len(BODY_CELLS), BODY_CELLS_PER_LABEL, replace=False),
                       len(BODY_CELLS) + rng.integers(len(CADENCE_CELLS)))
    signed_TxS = CELL_DURATION_CxS[cell_T]
    step_TxS = np.asarray(CONTOUR_STEPS)[_categorical(rng, CONTOUR_STEP_PROBABILITIES, signed_TxS.shape)]
    step_TxS[:, 0] = 0
    center = (key.melody_low_degree + key.melody_high_degree) // 2 + int(rng.integers(-2, 3))
    root_shift_B = (chord_root_H[::HALVES_PER_BAR] + 3) % DEGREES_PER_OCTAVE - 3
    start_B = center + rng.integers(-2, 3, size=len(cell_T))[bar_type_B] + root_shift_B

    signed_BxS = signed_TxS[bar_type_B]
    duration_BxS = np.abs(signed_BxS)
    onset_BxS = np.cumsum(duration_BxS, axis=1) - duration_BxS + np.arange(n_bars)[:, None] * FRAMES_PER_BAR
    degree_BxS = start_B[:, None] + np.cumsum(step_TxS, axis=1)[bar_type_B]
    slot = signed_BxS != 0  # drop padding; time order is row-major order
    signed_S, onset_S, degree_S = signed_BxS[slot], onset_BxS[slot], degree_BxS[slot]

    duration_S, rest_S = np.abs(signed_S), signed_S < 0
    tie_S = (rng.random(len(rest_S)) < rng.uniform(0, MAX_TIE_PROBABILITY)) & ~rest_S
    tie_S[:-1] &= rest_S[1:]
    duration_S[:-1] += np.where(tie_S[:-1], duration_S[1:], 0)
    note = ~rest_S
    degree_M = _fold_into_range(degree_S[note], key.melody_low_degree, key.melody_high_degree)
    return onset_S[note], duration_S[note], degree_M


def _make_materials(rng: np.random.Generator, roles: list[str], segments: tuple[Segment, ...],
                    key: _Key) -> dict[str, _Material]:
    """One material per label, long enough for its longest section.

    Labels get distinct progressions so different labels really differ; most share the
    song's accompaniment pattern, some get their own (a chorus that changes texture).
    """
    role_of_label = dict(zip((s.label for s in segments), roles, strict=True))  # repeats agree
    max_bars: dict[str, int] = {}
    for seg in segments:
        max_bars[seg.label] = max(max_bars.get(seg.label, 0), seg.n_bars)
    progression_ids = rng.permutation(len(PROGRESSIONS))
    song_pattern_id = int(rng.integers(len(PATTERN_NAMES)))
    no_melody = (np.zeros(0, np.int64),) * 3
    materials = {}
    for i, (label, role) in enumerate(role_of_label.items()):
        progression = PROGRESSIONS[progression_ids[i % len(PROGRESSIONS)]]
        chord_root_H = _chord_roots(rng, progression, max_bars[label])
        if role == "intro":
            melody = no_melody
            pattern_id = INTRO_PATTERN_IDS[rng.integers(len(INTRO_PATTERN_IDS))]
        else:
            melody = _compose_melody(rng, chord_root_H, key)
            own = rng.random() < LABEL_OWN_PATTERN_PROBABILITY
            pattern_id = int(rng.integers(len(PATTERN_NAMES))) if own else song_pattern_id
        harmonize_p = HARMONIZE_PROBABILITY.get(role, HARMONIZE_PROBABILITY["other"])
        materials[label] = _Material(
            role=role, chord_root_H=chord_root_H, melody_onset_M=melody[0],
            melody_duration_M=melody[1], melody_degree_M=melody[2], pattern_id=pattern_id,
            harmonize=bool(rng.random() < harmonize_p))
    return materials


# ---------------------------------------------------------------- arrangement


@dataclasses.dataclass(frozen=True, eq=False)
class _Arrangement:
    """The song laid out section by section as flat arrays.

    Rendering then runs vectorized once per song instead of once per section.
    """

    chord_root_H: np.ndarray  # chord root degree per half bar of the song
    pattern_id_B: np.ndarray  # accompaniment pattern per bar
    loudness_B: np.ndarray  # velocity offset per bar: role plus section jitter
    melody_RxN: np.ndarray  # rows MELODY_ROWS, one column per melody note of the song


MELODY_ROWS = ("onset", "duration", "degree", "section_end", "is_repeat", "harmonize")
M_ONSET, M_DURATION, M_DEGREE, M_SECTION_END, M_IS_REPEAT, M_HARMONIZE = range(len(MELODY_ROWS))


def _section_melody(material: _Material, segment: Segment, is_repeat: bool) -> np.ndarray:
    """[len(MELODY_ROWS), N] melody of one section: its material cropped to the section."""
    start, end = segment.start_bar * FRAMES_PER_BAR, segment.end_bar * FRAMES_PER_BAR
    keep = material.melody_onset_M < end - start
    n = int(keep.sum())
    return np.stack([material.melody_onset_M[keep] + start, material.melody_duration_M[keep],
                     material.melody_degree_M[keep], np.full(n, end), np.full(n, is_repeat),
                     np.full(n, material.harmonize)])


def _arrange(rng: np.random.Generator, segments: tuple[Segment, ...],
             materials: dict[str, _Material]) -> _Arrangement:
    """Places each label's material in its sections.

    Repeats may resolve the material's half cadence (V) to I; the last section always
    does. Each section gets its own small loudness jitter.
    """
    chords, patterns, loudness, melodies, seen = [], [], [], [], set()
    for i, segment in enumerate(segments):
        material = materials[segment.label]
        is_repeat = segment.label in seen
        seen.add(segment.label)
        root_H = material.chord_root_H[:segment.n_bars * HALVES_PER_BAR].copy()
        if i == len(segments) - 1 or (is_repeat and rng.random() < RESOLVE_REPEAT_CADENCE_PROBABILITY):
            root_H[-HALVES_PER_BAR:] = TONIC_DEGREE
        jitter = int(rng.integers(-SECTION_VELOCITY_JITTER, SECTION_VELOCITY_JITTER + 1))
        chords.append(root_H)
        patterns.append(np.full(segment.n_bars, material.pattern_id))
        loudness.append(np.full(segment.n_bars, ROLE_VELOCITY_OFFSET[material.role] + jitter))
        melodies.append(_section_melody(material, segment, is_repeat))
    return _Arrangement(np.concatenate(chords), np.concatenate(patterns), np.concatenate(loudness),
                        np.concatenate(melodies, axis=1).astype(np.int64))


# ---------------------------------------------------------------- rendering
# Renderers write each note's *base* velocity (part, role and section loudness); the
# song is humanized once at the end.


def _stack_notes(onset_N: np.ndarray, pitch_N: np.ndarray, base_velocity_N: np.ndarray | int,
                 duration_N: np.ndarray | int) -> np.ndarray:
    """[N, 4] int64 notes in NOTE_FIELDS order."""
    notes_Nx4 = np.empty((len(onset_N), len(NOTE_FIELDS)), np.int64)
    notes_Nx4[:, ONSET] = onset_N
    notes_Nx4[:, PITCH] = pitch_N
    notes_Nx4[:, VELOCITY] = base_velocity_N
    notes_Nx4[:, DURATION] = duration_N
    return notes_Nx4


def _snap_to_chord(degree_N: np.ndarray, root_N: np.ndarray, key: _Key, tone_7: np.ndarray) -> np.ndarray:
    """The nearest in-range scale degree that is a chord tone (tone_7: mask over degrees above root)."""
    candidate_NxC = degree_N[:, None] + np.asarray(SNAP_OFFSETS)
    in_range_NxC = (candidate_NxC >= key.melody_low_degree) & (candidate_NxC <= key.melody_high_degree)
    ok_NxC = tone_7[(candidate_NxC - root_N[:, None]) % DEGREES_PER_OCTAVE] & in_range_NxC
    return candidate_NxC[np.arange(len(candidate_NxC)), np.argmax(ok_NxC, axis=1)]


def _render_melody(rng: np.random.Generator, arrangement: _Arrangement, key: _Key,
                   base_velocity: int) -> np.ndarray:
    """Melody notes [N, 4]: beats snapped to the chords, each section ending on a held root.

    In repeats a few notes move by a scale step, so repeats are similar, not identical.
    Harmonized sections add parallel thirds below (a fourth below a beat on the root).
    """
    melody = arrangement.melody_RxN
    onset_N, section_end_N = melody[M_ONSET], melody[M_SECTION_END]
    duration_N, degree_N = melody[M_DURATION].copy(), melody[M_DEGREE].copy()
    nudge_N = (melody[M_IS_REPEAT] == 1) & (rng.random(len(onset_N)) < MELODY_VARIATION_PROBABILITY)
    degree_N += nudge_N * rng.choice((-1, 1), size=len(onset_N))
    root_N = arrangement.chord_root_H[onset_N // FRAMES_PER_HALF_BAR]
    on_beat_N = onset_N % FRAMES_PER_BEAT == 0
    degree_N = np.where(on_beat_N, _snap_to_chord(degree_N, root_N, key, TRIAD_TONE_MASK_7),
                        np.clip(degree_N, key.melody_low_degree, key.melody_high_degree))

    last_N = np.append(section_end_N[1:] != section_end_N[:-1], True)  # last note of its section
    cadence_N = last_N & (onset_N >= section_end_N - FRAMES_PER_BAR)
    degree_N[cadence_N] = _snap_to_chord(degree_N[cadence_N], root_N[cadence_N], key, ROOT_TONE_MASK_7)
    duration_N[cadence_N] = section_end_N[cadence_N] - onset_N[cadence_N]

    velocity_N = base_velocity + arrangement.loudness_B[onset_N // FRAMES_PER_BAR]
    below_N = np.where(on_beat_N & ((degree_N - root_N) % DEGREES_PER_OCTAVE == 0), 3, 2)
    harmony_pitch_N = key.pitch(degree_N - below_N)
    harmony_N = (melody[M_HARMONIZE] == 1) & (harmony_pitch_N >= MELODY_LOW_PITCH)  # above the triads
    return np.concatenate([
        _stack_notes(onset_N, key.pitch(degree_N), velocity_N, duration_N),
        _stack_notes(onset_N[harmony_N], harmony_pitch_N[harmony_N],
                     velocity_N[harmony_N] - HARMONY_VELOCITY_DROP, duration_N[harmony_N]),
    ])


def _voicing(key: _Key, chord_root_H: np.ndarray) -> np.ndarray:
    """[H, 6] pitches per half bar: bass, fifth, low octave, and a closed triad above them."""
    pcs_Hx3 = key.chord_pcs(chord_root_H)
    bass_H = BASS_LOW_PITCH + (pcs_Hx3[:, 0] - BASS_LOW_PITCH) % 12
    fifth_H = BASS_LOW_PITCH + (pcs_Hx3[:, 2] - BASS_LOW_PITCH) % 12
    triad_Hx3 = np.sort(TRIAD_LOW_PITCH + (pcs_Hx3 - TRIAD_LOW_PITCH) % 12, axis=1)
    return np.column_stack([bass_H, fifth_H, bass_H - 12, triad_Hx3])


def _render_accompaniment(arrangement: _Arrangement, voicing_Hx6: np.ndarray,
                          base_velocity: int) -> np.ndarray:
    """Accompaniment notes [N, 4]: each bar's pattern, voiced by the chord of its half bar."""
    pattern_BxPx3 = PATTERN_TABLE_KxPx3[arrangement.pattern_id_B]
    bar_B = np.arange(len(pattern_BxPx3))
    onset_BxP = bar_B[:, None] * FRAMES_PER_BAR + pattern_BxPx3[:, :, 0]
    pitch_BxP = voicing_Hx6[onset_BxP // FRAMES_PER_HALF_BAR, pattern_BxPx3[:, :, 1]]
    velocity_BxP = np.broadcast_to((base_velocity + arrangement.loudness_B)[:, None], onset_BxP.shape)
    duration_BxP = pattern_BxPx3[:, :, 2]
    note = duration_BxP > 0
    return _stack_notes(onset_BxP[note], pitch_BxP[note], velocity_BxP[note], duration_BxP[note])


def _ending_accompaniment(accompaniment_Nx4: np.ndarray, voicing_Hx6: np.ndarray, style: str,
                          base_velocity: int) -> np.ndarray:
    """Replaces the last bar by a held tonic chord ('held', 'pedal'), plus a long low pedal."""
    if style == "plain":
        return accompaniment_Nx4
    n_frames = len(voicing_Hx6) * FRAMES_PER_HALF_BAR
    last_bar = n_frames - FRAMES_PER_BAR
    chord_pitch = voicing_Hx6[-1, list(FINAL_CHORD_VOICES)]
    chord = _stack_notes(np.full(len(chord_pitch), last_bar), chord_pitch, base_velocity, FRAMES_PER_BAR)
    notes = accompaniment_Nx4[accompaniment_Nx4[:, ONSET] < last_bar]
    if style == "pedal":
        pedal_pitch = voicing_Hx6[-1, LOW_OCTAVE]
        start = n_frames - PEDAL_BARS * FRAMES_PER_BAR
        notes = notes[(notes[:, PITCH] != pedal_pitch) | (notes[:, ONSET] < start)]
        chord = chord[chord[:, PITCH] != pedal_pitch]
        pedal = _stack_notes([start], [pedal_pitch], base_velocity, n_frames - start)
        notes = np.concatenate([notes, pedal])
    return np.concatenate([notes, chord])


def _humanize_velocities(rng: np.random.Generator, notes_Nx4: np.ndarray) -> None:
    """Adds downbeat and beat accents and Gaussian noise to the base velocities, in place."""
    onset_N = notes_Nx4[:, ONSET]
    accent_N = np.where(onset_N % FRAMES_PER_BAR == 0, DOWNBEAT_ACCENT,
                        np.where(onset_N % FRAMES_PER_BEAT == 0, BEAT_ACCENT, 0))
    noise_N = np.rint(rng.normal(0.0, VELOCITY_NOISE_STD, len(onset_N))).astype(np.int64)
    notes_Nx4[:, VELOCITY] = np.clip(notes_Nx4[:, VELOCITY] + accent_N + noise_N, 1, 127)


def _render(rng: np.random.Generator, arrangement: _Arrangement, key: _Key, dynamics: _Dynamics,
            ending: str) -> np.ndarray:
    """All notes [N, 4] of the song, humanized, nothing ringing past the last bar."""
    voicing_Hx6 = _voicing(key, arrangement.chord_root_H)
    accompaniment = _render_accompaniment(arrangement, voicing_Hx6, dynamics.accompaniment)
    accompaniment = _ending_accompaniment(accompaniment, voicing_Hx6, ending,
                                          dynamics.accompaniment + int(arrangement.loudness_B[-1]))
    notes_Nx4 = np.concatenate([_render_melody(rng, arrangement, key, dynamics.melody), accompaniment])
    _humanize_velocities(rng, notes_Nx4)
    n_frames = len(arrangement.chord_root_H) * FRAMES_PER_HALF_BAR
    notes_Nx4[:, DURATION] = np.minimum(notes_Nx4[:, DURATION], n_frames - notes_Nx4[:, ONSET])
    return notes_Nx4


# ---------------------------------------------------------------- public API


def generate_song(seed: int, index: int) -> SyntheticSong:
    """Song ``index`` of the synthetic corpus ``seed``; a pure function of both."""
    rng = np.random.default_rng([seed, index])
    roles, segments = _plan_form(rng)
    scale = MAJOR_SCALE if rng.random() < MAJOR_KEY_PROBABILITY else MINOR_SCALE
    key = _Key.create(int(rng.integers(12)), scale)
    tempo_bpm = round(float(rng.uniform(MIN_TEMPO_BPM, MAX_TEMPO_BPM)), 1)
    dynamics = _Dynamics(melody=int(rng.integers(*MELODY_VELOCITY_RANGE)),
                         accompaniment=int(rng.integers(*ACCOMPANIMENT_VELOCITY_RANGE)))
    materials = _make_materials(rng, roles, segments, key)
    ending = ENDING_STYLES[_categorical(rng, ENDING_PROBABILITIES)]
    arrangement = _arrange(rng, segments, materials)
    notes_Nx4, _ = normalize_notes(_render(rng, arrangement, key, dynamics, ending))
    notes_Nx4.setflags(write=False)
    return SyntheticSong(song_id=f"synthetic-{seed}-{index:05d}", notes_Nx4=notes_Nx4,
                         n_bars=segments[-1].end_bar, tempo_bpm=tempo_bpm, segments=segments)


def generate_songs(seed: int, count: int) -> list[SyntheticSong]:
    """Songs 0..count-1 of corpus ``seed``; any one can be regenerated alone by index."""
    return [generate_song(seed, index) for index in range(count)]
