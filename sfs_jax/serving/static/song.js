// The song document the app edits, and the structure operations on it. Pure functions over
// `doc = {segments: [{label, bars, seed}], notes: [{id, onset, pitch, velocity, duration}], tempo,
// takes}`: segments tile the song from bar 0, notes are on the 32-frames-per-bar grid (onset and
// duration in frames, as on the server). Segments own the notes that start in them: resizing,
// inserting or deleting a segment moves the later notes with their segments.

export const FRAMES_PER_BAR = 32;

export function segmentBars(segments) {
  let bar = 0;
  return segments.map((s, index) => {
    const out = { index, start: bar, end: bar + s.bars, label: s.label, seed: !!s.seed, bars: s.bars };
    bar += s.bars;
    return out;
  });
}

export function totalBars(segments) {
  return segments.reduce((sum, s) => sum + s.bars, 0);
}

export function notesIn(notes, startBar, endBar) {
  const lo = startBar * FRAMES_PER_BAR, hi = endBar * FRAMES_PER_BAR;
  return notes.filter((n) => n.onset >= lo && n.onset < hi);
}

export function structureText(segments) {
  return segments.map((s) => `${s.label}${s.bars}`).join(" ");
}

// Opens `bars` empty bars at `atBar`: the notes from there on move right.
function insertBars(doc, atBar, bars) {
  const from = atBar * FRAMES_PER_BAR;
  for (const n of doc.notes) if (n.onset >= from) n.onset += bars * FRAMES_PER_BAR;
}

export function resizeSegment(doc, index, bars) {
  const seg = segmentBars(doc.segments)[index];
  if (bars === seg.bars) return;
  if (bars < seg.bars) {
    // notes in the cut bars go; later segments move left with their notes
    const cut = (seg.start + bars) * FRAMES_PER_BAR, end = seg.end * FRAMES_PER_BAR;
    doc.notes = doc.notes.filter((n) => n.onset < cut || n.onset >= end);
    for (const n of doc.notes) if (n.onset >= end) n.onset -= end - cut;
  } else {
    insertBars(doc, seg.end, bars - seg.bars);
  }
  doc.segments[index].bars = bars;
}

export function insertSegment(doc, at, segment) {
  const bars = segmentBars(doc.segments);
  const bar = at < bars.length ? bars[at].start : totalBars(doc.segments);
  insertBars(doc, bar, segment.bars);
  doc.segments.splice(at, 0, segment);
}

export function deleteSegment(doc, index) {
  const seg = segmentBars(doc.segments)[index];
  const lo = seg.start * FRAMES_PER_BAR, hi = seg.end * FRAMES_PER_BAR;
  doc.notes = doc.notes.filter((n) => n.onset < lo || n.onset >= hi);
  for (const n of doc.notes) if (n.onset >= hi) n.onset -= hi - lo;
  doc.segments.splice(index, 1);
}

export function splitSegment(doc, index, atBar) {
  const seg = segmentBars(doc.segments)[index];
  const first = atBar - seg.start;
  if (first < 1 || first >= seg.bars) return false;
  const original = doc.segments[index];
  doc.segments.splice(index, 1, { ...original, bars: first }, { label: original.label, bars: seg.bars - first, seed: false });
  return true;
}

// A new structure from the text field or a preset: notes keep their bars; notes past the new end
// go; a seed flag survives only on a segment with the same bars.
export function setStructure(doc, segments) {
  const old = segmentBars(doc.segments);
  const fresh = segmentBars(segments);
  doc.segments = segments.map((s, i) => {
    const o = old[i];
    const keepSeed = o && o.seed && o.start === fresh[i].start && o.end === fresh[i].end;
    return { label: s.label, bars: s.bars, seed: keepSeed };
  });
  const end = totalBars(segments) * FRAMES_PER_BAR;
  doc.notes = doc.notes.filter((n) => n.onset < end);
}

export function nextLabel(segments) {
  const used = new Set(segments.map((s) => s.label.toUpperCase()));
  for (const c of "ABCDEFGHIJKLMNOPQRSTUVWXYZ") if (!used.has(c)) return c;
  return "Z";
}

export function emptySegments(doc) {
  return segmentBars(doc.segments)
    .filter((s) => !s.seed && notesIn(doc.notes, s.start, s.end).length === 0)
    .map((s) => s.index);
}

// Takes are kept per segment, keyed by its bars, so a structure edit elsewhere does not mix them up.
export function takeKey(seg) {
  return `${seg.start}-${seg.end}`;
}

export function pruneTakes(doc) {
  const keys = new Set(segmentBars(doc.segments).map(takeKey));
  for (const key of Object.keys(doc.takes)) if (!keys.has(key)) delete doc.takes[key];
}

export function toRows(notes) {
  return notes.map((n) => [n.onset, n.pitch, n.velocity, n.duration]);
}

export function replaceNotesIn(doc, startBar, endBar, rows, newId) {
  const lo = startBar * FRAMES_PER_BAR, hi = endBar * FRAMES_PER_BAR;
  doc.notes = doc.notes.filter((n) => n.onset < lo || n.onset >= hi);
  for (const [onset, pitch, velocity, duration] of rows) doc.notes.push({ id: newId(), onset, pitch, velocity, duration });
}
