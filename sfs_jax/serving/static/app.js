// The co-creation app: state, undo/redo, the structure bar, generation with live streaming,
// takes, playback, MIDI and project files. The server checks every request; the app keeps the
// song unchanged whenever a request is refused, cancelled or fails.

import { cancelJob, getJSON, importMidi, postForBlob, postJSON, streamGenerate } from "./api.js";
import { Piano, Player } from "./piano.js";
import { SampledPlayer } from "./sampled.js";
import { FRAMES_PER_BAR, KEYS_W, MAX_PITCH, MIN_PITCH, PianoRoll, labelHue } from "./roll.js";
import * as song from "./song.js";

const $ = (id) => document.getElementById(id);
const MAX_UNDO = 200;
const CLIENT_ID = (window.crypto && crypto.randomUUID) ? crypto.randomUUID() : `c${Math.random().toString(36).slice(2)}`;

function randomSeed() {
  return Math.floor(Math.random() * 1e9);
}

function download(blob, name) {
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 5000);
}

class App {
  constructor() {
    this.doc = { segments: [{ label: "A", bars: 8, seed: false }, { label: "B", bars: 8, seed: false },
      { label: "A", bars: 8, seed: false }, { label: "C", bars: 4, seed: false }], notes: [], tempo: 100, takes: {} };
    this.ui = {
      selection: new Set(), tool: "draw", velocity: 80, lastDuration: 8, cursor: 0, playhead: null, range: null,
      selectedSegment: 0, gen: null, fresh: new Map(), fillOrder: [], clipboard: [], contexts: [],
    };
    this.undoStack = [];
    this.redoStack = [];
    this.editBefore = null;
    this.nextId = 1;
    this.orderTimer = null;
    this.orderRequest = 0;  // id of the latest /api/order request; only it may set the fill order
    this.info = null;
    this.maxBars = 200;
    this.piano = new Piano();
    this.synthPlayer = new Player(this.piano);
    this.sampledPlayer = new SampledPlayer(this.piano, async (body) => (await postForBlob("/api/audio", body)).arrayBuffer(),
      (err) => this.sampledFailed(err));
    this.player = null;  // the player of the playback in progress
    this.roll = new PianoRoll($("roll-scroll"), $("roll-sizer"), $("roll"), this);
    this.roll.onScroll = () => this.syncStructureScroll();
    this.bind();
    this.changed();
    this.roll.scrollToPitch(66);
    this.pollInfo();
  }

  // -- document helpers -------------------------------------------------------------------------
  newId() { return this.nextId++; }
  totalBars() { return song.totalBars(this.doc.segments); }
  segmentBars() { return song.segmentBars(this.doc.segments); }
  generating() { return this.ui.gen !== null; }
  editable() { return !this.generating(); }

  snapshot() {
    return structuredClone(this.doc);
  }

  record(before, label) {
    this.undoStack.push({ doc: before, label });
    if (this.undoStack.length > MAX_UNDO) this.undoStack.shift();
    this.redoStack = [];
  }

  // One undoable step: everything `fn` changes in the document.
  commit(label, fn) {
    if (!this.editable()) { this.toast("wait for the generation to finish or cancel it (Esc)"); return false; }
    const before = this.snapshot();
    const result = fn();
    if (result === false) return false;
    song.pruneTakes(this.doc);
    this.record(before, label);
    this.changed();
    return true;
  }

  beginEdit() { this.editBefore = this.snapshot(); }

  endEdit(label) {
    const before = this.editBefore;
    this.editBefore = null;
    if (before && JSON.stringify(before.notes) !== JSON.stringify(this.doc.notes)) this.record(before, label);
    this.changed();
  }

  restore(doc) {
    this.doc = doc;
    this.ui.selection = new Set();
    this.changed();
  }

  undo() {
    if (!this.editable() || !this.undoStack.length) return;
    const step = this.undoStack.pop();
    this.redoStack.push({ doc: this.snapshot(), label: step.label });
    this.restore(step.doc);
    this.setStatus("idle", `Undid ${step.label}.`);
  }

  redo() {
    if (!this.editable() || !this.redoStack.length) return;
    const step = this.redoStack.pop();
    this.undoStack.push({ doc: this.snapshot(), label: step.label });
    this.restore(step.doc);
    this.setStatus("idle", `Redid ${step.label}.`);
  }

  addNote({ onset, pitch, velocity, duration }) {
    const note = { id: this.newId(), onset, pitch, velocity, duration };
    this.doc.notes.push(note);
    return note;
  }

  rowsToNotes(rows) {
    return rows.map(([onset, pitch, velocity, duration]) => ({ id: this.newId(), onset, pitch, velocity, duration }));
  }

  // -- rendering --------------------------------------------------------------------------------
  changed() {
    const segs = this.segmentBars();
    this.ui.selectedSegment = Math.min(this.ui.selectedSegment, segs.length - 1);
    if (this.ui.range && this.ui.range[1] > this.totalBars()) this.ui.range = null;
    this.ui.cursor = Math.min(this.ui.cursor, this.totalBars() * FRAMES_PER_BAR);
    this.roll.layout();
    this.renderStructure();
    this.renderTakes();
    this.renderButtons();
    this.refreshFillOrder();
    $("tempo").value = String(this.doc.tempo);
    document.body.dataset.notes = String(this.doc.notes.length);
    document.body.dataset.structure = song.structureText(this.doc.segments);
    $("note-count").textContent = `${this.doc.notes.length} notes · ${this.totalBars()} bars`;
  }

  notesChanged() {
    document.body.dataset.notes = String(this.doc.notes.length);
    $("note-count").textContent = `${this.doc.notes.length} notes · ${this.totalBars()} bars`;
    this.roll.redraw();
  }

  selectionChanged() {
    this.roll.redraw();
  }

  renderButtons() {
    const busy = this.generating();
    const seg = this.segmentBars()[this.ui.selectedSegment];
    $("undo").disabled = busy || !this.undoStack.length;
    $("redo").disabled = busy || !this.redoStack.length;
    $("undo").title = this.undoStack.length ? `Undo ${this.undoStack.at(-1).label} (Ctrl+Z)` : "Nothing to undo";
    $("redo").title = this.redoStack.length ? `Redo ${this.redoStack.at(-1).label} (Ctrl+Shift+Z)` : "Nothing to redo";
    $("cancel").disabled = !busy;
    for (const id of ["gen-segment", "gen-range", "gen-fill", "seg-add", "seg-split", "seg-delete", "seg-seed",
      "seg-seed-import", "structure-apply", "presets", "import-midi", "load-project"]) $(id).disabled = busy;
    $("gen-segment").textContent = seg ? `Generate ${seg.label} (segment ${seg.index})` : "Generate segment";
    if (seg && seg.seed) $("gen-segment").disabled = true;
    $("gen-range").disabled = busy || !this.ui.range;
    $("gen-range").textContent = this.ui.range ? `Generate bars ${this.ui.range[0]}–${this.ui.range[1]}` : "Generate bars (drag on the ruler)";
    $("gen-fill").disabled = busy || !this.ui.fillOrder.length;
    $("seg-delete").disabled = busy || this.doc.segments.length < 2;
    $("seg-seed").textContent = seg && seg.seed ? "Unmark seed" : "Mark as seed";
    if (document.activeElement !== $("seg-label")) $("seg-label").value = seg ? seg.label : "";
    // The text follows the song unless the user has typed into it since (then it waits for Apply or Esc).
    if (!this.ui.structureEdited) $("structure-text").value = song.structureText(this.doc.segments);
  }

  renderStructure() {
    const inner = $("structure-inner");
    inner.replaceChildren();
    const pxPerBar = this.roll.pxPerBar;
    const contextSlots = {};
    if (this.ui.gen && this.ui.gen.contexts) {
      for (const [slot, c] of Object.entries(this.ui.gen.contexts)) if (c) (contextSlots[c.segment] ||= []).push(slot);
    }
    for (const s of this.segmentBars()) {
      const block = document.createElement("div");
      block.className = "seg" + (s.index === this.ui.selectedSegment ? " selected" : "") + (s.seed ? " seed" : "");
      block.dataset.index = String(s.index);
      block.style.left = `${s.start * pxPerBar}px`;
      block.style.width = `${s.bars * pxPerBar}px`;
      block.style.setProperty("--hue", String(labelHue(s.label)));
      const name = document.createElement("span");
      name.className = "seg-name";
      name.textContent = `${s.label}${s.bars}`;
      block.append(name);
      if (s.seed) {
        const badge = document.createElement("span");
        badge.className = "badge";
        badge.textContent = "seed";
        block.append(badge);
      }
      if (this.ui.gen && this.ui.gen.segment === s.index) block.classList.add("writing");
      for (const slot of contextSlots[s.index] || []) {
        const tag = document.createElement("span");
        tag.className = `ctx ctx-${slot}`;
        tag.textContent = slot;
        block.append(tag);
      }
      const handle = document.createElement("div");
      handle.className = "handle";
      handle.title = "Drag to resize";
      handle.addEventListener("mousedown", (e) => this.startResize(e, s.index));
      block.append(handle);
      block.addEventListener("mousedown", (e) => {
        if (e.target === handle) return;
        this.ui.selectedSegment = s.index;
        this.changed();
      });
      block.addEventListener("dblclick", () => $("seg-label").focus());
      inner.append(block);
    }
    inner.style.width = `${this.totalBars() * pxPerBar + 200}px`;
    this.syncStructureScroll();
  }

  syncStructureScroll() {
    $("structure-inner").style.transform = `translateX(${KEYS_W - $("roll-scroll").scrollLeft}px)`;
  }

  startResize(e, index) {
    e.preventDefault();
    e.stopPropagation();
    if (!this.editable()) return;
    const block = e.target.parentElement;
    const pxPerBar = this.roll.pxPerBar;
    const original = this.doc.segments[index].bars;
    const others = this.totalBars() - original;
    const x0 = e.clientX;
    let bars = original;
    const move = (ev) => {
      bars = Math.max(1, Math.min(this.maxBars - others, original + Math.round((ev.clientX - x0) / pxPerBar)));
      block.style.width = `${bars * pxPerBar}px`;
      block.querySelector(".seg-name").textContent = `${this.doc.segments[index].label}${bars}`;
    };
    const up = () => {
      window.removeEventListener("mousemove", move);
      window.removeEventListener("mouseup", up);
      if (bars !== original) this.commit(`resize segment ${index}`, () => song.resizeSegment(this.doc, index, bars));
      else this.changed();
    };
    window.addEventListener("mousemove", move);
    window.addEventListener("mouseup", up);
  }

  renderTakes() {
    const box = $("takes");
    box.replaceChildren();
    const seg = this.segmentBars()[this.ui.selectedSegment];
    if (!seg) return;
    const entry = this.doc.takes[song.takeKey(seg)];
    if (!entry || !entry.list.length) {
      box.textContent = `No takes of ${seg.label} (segment ${seg.index}) yet: each generation adds one.`;
      return;
    }
    const take = entry.list[entry.index];
    const head = document.createElement("div");
    head.className = "take-head";
    const prev = document.createElement("button");
    prev.textContent = "◀";
    prev.disabled = entry.index === 0 || this.generating();
    prev.addEventListener("click", () => this.flipTake(seg, -1));
    const next = document.createElement("button");
    next.textContent = "▶";
    next.disabled = entry.index === entry.list.length - 1 || this.generating();
    next.addEventListener("click", () => this.flipTake(seg, 1));
    const label = document.createElement("span");
    label.id = "take-label";
    label.textContent = `Take ${entry.index + 1} of ${entry.list.length}`;
    head.append(prev, label, next);
    const meta = document.createElement("div");
    meta.className = "take-meta";
    meta.textContent = take.seed === null ? `${take.note} · ${take.rows.length} notes`
      : `seed ${take.seed} · T ${take.sampling.temperature} · top-p ${take.sampling.top_p} · top-k ${take.sampling.top_k}`
        + ` · ${take.rows.length} notes${entry.accepted === entry.index ? " · accepted" : ""}`;
    const actions = document.createElement("div");
    actions.className = "take-actions";
    const accept = document.createElement("button");
    accept.textContent = "Accept";
    accept.title = "Keep this take and drop the others";
    accept.disabled = this.generating() || entry.list.length < 2;
    accept.addEventListener("click", () => this.acceptTake(seg));
    actions.append(accept);
    if (take.seed !== null) {
      const reuse = document.createElement("button");
      reuse.textContent = "Use its settings";
      reuse.addEventListener("click", () => this.setSampling(take.sampling, take.seed));
      actions.append(reuse);
    }
    box.append(head, meta, actions);
  }

  renderContexts() {
    const box = $("contexts");
    box.replaceChildren();
    if (!this.ui.contexts.length) {
      box.textContent = "Generate to see which segments each one was conditioned on.";
      return;
    }
    for (const c of this.ui.contexts.slice(-6)) {
      const row = document.createElement("div");
      row.className = "ctx-row";
      const describe = (slot) => {
        const v = c.contexts[slot];
        return v ? `${v.label} (seg ${v.segment}, bars ${v.bars[0]}–${v.bars[1]})` : "—";
      };
      row.textContent = `Segment ${c.segment} bars ${c.bars[0]}–${c.bars[1]}: Left ${describe("left")} · `
        + `Right ${describe("right")} · Seed ${describe("seed")} · Ref ${describe("ref")}`;
      box.append(row);
    }
  }

  setStatus(state, text) {
    const el = $("status");
    el.dataset.state = state;
    el.textContent = text;
  }

  toast(text) {
    const el = $("toast");
    el.textContent = text;
    el.classList.add("show");
    clearTimeout(this.toastTimer);
    this.toastTimer = setTimeout(() => el.classList.remove("show"), 6000);
  }

  // -- cursor, range, selection -----------------------------------------------------------------
  setCursor(frame) {
    this.ui.cursor = Math.max(0, Math.min(frame, this.totalBars() * FRAMES_PER_BAR));
    this.roll.redraw();
  }

  setRange(start, end) {
    this.ui.range = start === null ? null : [start, Math.min(end, this.totalBars())];
    if (this.ui.range && this.ui.range[0] >= this.ui.range[1]) this.ui.range = null;
    this.renderButtons();
    this.roll.redraw();
  }

  deleteSelection() {
    if (!this.ui.selection.size) return;
    const ids = this.ui.selection;
    this.commit("delete notes", () => { this.doc.notes = this.doc.notes.filter((n) => !ids.has(n.id)); });
    this.ui.selection = new Set();
    this.roll.redraw();
  }

  copySelection() {
    const chosen = this.doc.notes.filter((n) => this.ui.selection.has(n.id));
    if (!chosen.length) return false;
    const first = Math.min(...chosen.map((n) => n.onset));
    this.ui.clipboard = chosen.map((n) => ({ onset: n.onset - first, pitch: n.pitch, velocity: n.velocity, duration: n.duration }));
    this.setStatus("idle", `Copied ${chosen.length} notes: paste at the cursor with Ctrl+V.`);
    return true;
  }

  paste() {
    const total = this.totalBars() * FRAMES_PER_BAR;
    const notes = this.ui.clipboard.map((n) => ({ ...n, onset: n.onset + this.ui.cursor })).filter((n) => n.onset < total);
    if (!notes.length) return;
    const ids = new Set();
    this.commit("paste", () => { for (const n of notes) ids.add(this.addNote(n).id); });
    this.ui.selection = ids;
    this.roll.redraw();
  }

  nudge(dFrames, dPitch) {
    const chosen = this.doc.notes.filter((n) => this.ui.selection.has(n.id));
    if (!chosen.length) return;
    const total = this.totalBars() * FRAMES_PER_BAR;
    const ok = chosen.every((n) => n.onset + dFrames >= 0 && n.onset + dFrames < total
      && n.pitch + dPitch >= MIN_PITCH && n.pitch + dPitch <= MAX_PITCH);
    if (!ok) return;
    this.commit("move notes", () => { for (const n of chosen) { n.onset += dFrames; n.pitch += dPitch; } });
  }

  preview(pitch, velocity) {
    if (pitch < MIN_PITCH || pitch > MAX_PITCH) return;
    const ctx = this.piano.ensure();
    this.piano.play(pitch, velocity, ctx.currentTime + 0.01, 0.35);
  }

  // -- structure --------------------------------------------------------------------------------
  selectedSegmentInfo() {
    return this.segmentBars()[this.ui.selectedSegment];
  }

  async applyStructureText(text) {
    this.ui.structureEdited = false;
    try {
      const parsed = await postJSON("/api/structure", { text });
      this.commit("change structure", () => song.setStructure(this.doc, parsed.segments));
      this.setStatus("idle", `Structure ${song.structureText(this.doc.segments)}.`);
    } catch (err) {
      this.toast(err.message);
      $("structure-text").value = song.structureText(this.doc.segments);
    }
  }

  addSegment() {
    const at = this.ui.selectedSegment + 1;
    const bars = Math.min(8, this.maxBars - this.totalBars());
    if (bars < 1) { this.toast(`the song already has the maximum of ${this.maxBars} bars`); return; }
    const ok = this.commit("add segment", () => song.insertSegment(this.doc, at, { label: song.nextLabel(this.doc.segments), bars, seed: false }));
    if (ok) { this.ui.selectedSegment = at; this.changed(); }
  }

  splitSegment() {
    const seg = this.selectedSegmentInfo();
    const cursorBar = Math.round(this.ui.cursor / FRAMES_PER_BAR);
    const at = cursorBar > seg.start && cursorBar < seg.end ? cursorBar : seg.start + Math.floor(seg.bars / 2);
    if (seg.bars < 2) { this.toast("a one-bar segment cannot be split"); return; }
    this.commit(`split segment ${seg.index}`, () => song.splitSegment(this.doc, seg.index, at));
  }

  deleteSegment() {
    if (this.doc.segments.length < 2) return;
    const index = this.ui.selectedSegment;
    this.commit(`delete segment ${index}`, () => song.deleteSegment(this.doc, index));
  }

  relabel(label) {
    const seg = this.selectedSegmentInfo();
    if (!/^[A-Za-z]$/.test(label)) { this.toast("a label is one letter A–Z or a–z"); this.renderButtons(); return; }
    if (label === seg.label) return;
    this.commit(`relabel segment ${seg.index}`, () => { this.doc.segments[seg.index].label = label; });
  }

  toggleSeed() {
    const index = this.ui.selectedSegment;
    const mark = !this.doc.segments[index].seed;
    this.commit(mark ? `mark segment ${index} as seed` : "unmark the seed", () => {
      this.doc.segments.forEach((s, i) => { s.seed = mark && i === index; });
    });
  }

  // -- files ------------------------------------------------------------------------------------
  songBody() {
    return { segments: this.doc.segments.map((s) => ({ label: s.label, bars: s.bars, seed: !!s.seed })),
      tempo_bpm: this.doc.tempo, notes: song.toRows(this.doc.notes) };
  }

  async importMidiFile(file) {
    try {
      const data = await importMidi(file);
      const segments = data.segments || [{ label: "A", bars: Math.max(1, data.n_bars), seed: false }];
      this.commit(`import ${file.name}`, () => {
        this.doc = { segments, notes: this.rowsToNotes(data.notes), tempo: data.tempo_bpm, takes: {} };
      });
      this.clearContexts();
      const markersRefused = data.warnings.some((w) => w.startsWith("structure not restored"));
      const how = data.segments ? "structure restored from its markers"
        : markersRefused ? "its segment markers could not be used (see the warning): one segment"
          : "no segment markers: one segment";
      this.setStatus("idle", `Imported ${file.name}: ${data.notes.length} notes, ${how}.`);
      if (data.warnings.length) this.toast(data.warnings.join("; "));
    } catch (err) {
      this.toast(`Import failed: ${err.message}`);
    }
  }

  async importSeedFile(file) {
    const seg = this.selectedSegmentInfo();
    try {
      const data = await importMidi(file);
      const limit = seg.bars * FRAMES_PER_BAR;
      const rows = data.notes.filter((r) => r[0] < limit).map(([o, p, v, d]) => [o + seg.start * FRAMES_PER_BAR, p, v, d]);
      if (!rows.length) { this.toast("the file has no notes in its first bars"); return; }
      this.commit(`import seed into segment ${seg.index}`, () => {
        song.replaceNotesIn(this.doc, seg.start, seg.end, rows, () => this.newId());
        this.doc.segments.forEach((s, i) => { s.seed = i === seg.index; });
      });
      const fit = data.n_bars > seg.bars ? `its first ${seg.bars} of ${data.n_bars} bars`
        : data.n_bars < seg.bars ? `${data.n_bars} bars, the rest silent` : `${seg.bars} bars`;
      this.setStatus("idle", `Seed ${file.name} in ${seg.label} (segment ${seg.index}): ${fit}.`);
    } catch (err) {
      this.toast(`Seed import failed: ${err.message}`);
    }
  }

  async exportMidi() {
    try {
      download(await postForBlob("/api/midi/export", this.songBody()), "sfs-song.mid");
      this.setStatus("idle", "Exported sfs-song.mid (tempo, 4/4, one marker per segment).");
    } catch (err) {
      this.toast(`Export failed: ${err.message}`);
    }
  }

  saveProject() {
    const project = { format: "sfs-jax-project", version: 1, ...this.songBody(), takes: this.doc.takes,
      sampling: this.sampling(), seed: this.seed() };
    download(new Blob([JSON.stringify(project)], { type: "application/json" }), "sfs-project.json");
  }

  async loadProject(file) {
    try {
      const p = JSON.parse(await file.text());
      if (p.format !== "sfs-jax-project" || !Array.isArray(p.segments) || !Array.isArray(p.notes)) {
        throw new Error("not an sfs-jax project file");
      }
      const problem = this.projectProblem(p);
      if (problem) throw new Error(problem);
      const segments = p.segments.map((s) => ({ label: s.label, bars: s.bars, seed: s.seed === true }));
      this.commit(`open ${file.name}`, () => {
        this.doc = { segments, notes: this.rowsToNotes(p.notes), tempo: p.tempo_bpm ?? 100, takes: p.takes || {} };
      });
      this.clearContexts();
      if (p.sampling) this.setSampling(p.sampling, p.seed);
      this.setStatus("idle", `Opened ${file.name}.`);
    } catch (err) {
      this.toast(`Open failed: ${err.message}`);
    }
  }

  /** Why a project file is not a song the server would take (its own checks: schemas.validate_song), or null. */
  projectProblem(p) {
    const limits = (this.info && this.info.limits) || { max_segments: 100, max_notes: 20000, max_note_frames: 512 };
    const maxBars = this.maxBars || 200;
    const isInt = (v) => typeof v === "number" && Number.isInteger(v);
    if (p.segments.length < 1 || p.segments.length > limits.max_segments) {
      return `it has ${p.segments.length} segments (1..${limits.max_segments} allowed)`;
    }
    for (const [i, s] of p.segments.entries()) {
      if (typeof s.label !== "string" || !/^[A-Za-z]$/.test(s.label)) return `segment ${i}: the label must be one letter`;
      if (!isInt(s.bars) || s.bars < 1) return `segment ${i}: ${JSON.stringify(s.bars)} is not a whole number of bars >= 1`;
      if (s.seed !== undefined && typeof s.seed !== "boolean") return `segment ${i}: the seed flag must be true or false`;
    }
    const bars = p.segments.reduce((n, s) => n + s.bars, 0);
    if (bars > maxBars) return `its structure has ${bars} bars, more than the limit of ${maxBars}`;
    if (p.segments.filter((s) => s.seed === true).length > 1) return "more than one segment is marked as the seed";
    if (p.tempo_bpm !== undefined && !(typeof p.tempo_bpm === "number" && p.tempo_bpm >= 20 && p.tempo_bpm <= 400)) {
      return `tempo ${JSON.stringify(p.tempo_bpm)} is not a number of BPM in 20..400`;
    }
    if (p.notes.length > limits.max_notes) return `it has ${p.notes.length} notes (the limit is ${limits.max_notes})`;
    const frames = bars * FRAMES_PER_BAR;
    const bad = p.notes.findIndex((r) => !Array.isArray(r) || r.length !== 4 || !r.every(isInt)
      || r[0] < 0 || r[0] >= frames || r[1] < 21 || r[1] > 108 || r[2] < 1 || r[2] > 127 || r[3] < 1 || r[3] > limits.max_note_frames);
    if (bad >= 0) return `note ${bad} ${JSON.stringify(p.notes[bad])} is not [onset, pitch, velocity, duration] inside the song`;
    return null;
  }

  clearContexts() {
    this.ui.contexts = [];
    this.renderContexts();
  }

  // -- generation -------------------------------------------------------------------------------
  sampling() {
    // An empty or unreadable field is its default, not 0 (temperature 0 would be greedy decoding).
    const defaults = (this.info && this.info.sampling_defaults) || { temperature: 1, top_p: 0.975, top_k: 0 };
    const read = (id, key) => {
      const text = $(id).value.trim();
      const value = Number(text);
      if (text === "" || !Number.isFinite(value)) { $(id).value = String(defaults[key]); return defaults[key]; }
      return value;
    };
    return { temperature: read("temperature", "temperature"), top_p: read("top-p", "top_p"), top_k: read("top-k", "top_k") };
  }

  seed() {
    return Number($("seed").value);
  }

  setSampling(sampling, seed) {
    $("temperature").value = String(sampling.temperature);
    $("top-p").value = String(sampling.top_p);
    $("top-k").value = String(sampling.top_k);
    if (seed !== undefined && seed !== null) $("seed").value = String(seed);
  }

  refreshFillOrder() {
    const empty = song.emptySegments(this.doc);
    const current = this.ui.fillOrder.filter((i) => empty.includes(i));
    clearTimeout(this.orderTimer);
    this.orderRequest += 1;
    const request = this.orderRequest;
    if (current.length === empty.length) {
      delete $("fill-order").dataset.pending;
      this.ui.fillOrder = current;
      this.renderFillOrder();
      return;
    }
    // The order is the server's (seeded compose order), so the chips lag the edit by a
    // request; data-pending says so, for anyone (a test, a screen reader) waiting on them.
    // Only the latest request may answer: an older one finishing late would show a stale order.
    $("fill-order").dataset.pending = "true";
    this.orderTimer = setTimeout(async () => {
      try {
        const { order } = await postJSON("/api/order", { ...this.songBody(), seed: this.seed() });
        if (request !== this.orderRequest) return;
        const kept = this.ui.fillOrder.filter((i) => order.includes(i));
        this.ui.fillOrder = [...kept, ...order.filter((i) => !kept.includes(i))];
      } catch (err) {
        if (request !== this.orderRequest) return;
        this.ui.fillOrder = empty;
      }
      delete $("fill-order").dataset.pending;
      this.renderFillOrder();
      this.renderButtons();
    }, 150);
  }

  renderFillOrder() {
    const box = $("fill-order");
    box.replaceChildren();
    const segs = this.segmentBars();
    if (!this.ui.fillOrder.length) {
      box.textContent = "No empty segments.";
      $("gen-fill").textContent = "Fill empty segments";
      return;
    }
    this.ui.fillOrder.forEach((index, position) => {
      const s = segs[index];
      if (!s) return;
      const chip = document.createElement("span");
      chip.className = "chip";
      chip.style.setProperty("--hue", String(labelHue(s.label)));
      const move = (delta, text) => {
        const b = document.createElement("button");
        b.textContent = text;
        b.disabled = position + delta < 0 || position + delta >= this.ui.fillOrder.length;
        b.addEventListener("click", () => {
          const order = this.ui.fillOrder;
          [order[position], order[position + delta]] = [order[position + delta], order[position]];
          this.renderFillOrder();
        });
        return b;
      };
      const name = document.createElement("span");
      name.textContent = `${position + 1}. ${s.label}${s.bars} (seg ${index})`;
      chip.append(move(-1, "‹"), name, move(1, "›"));
      box.append(chip);
    });
    $("gen-fill").textContent = `Fill ${this.ui.fillOrder.length} empty segment${this.ui.fillOrder.length > 1 ? "s" : ""}`;
  }

  async generate(target) {
    if (this.generating()) return;
    const body = { ...this.songBody(), client: CLIENT_ID, sampling: this.sampling(), seed: this.seed() };
    Object.assign(body, target);
    const before = this.snapshot();
    const gen = { before, body, job: null, count: 0, t0: performance.now(), firstNoteMs: null, writing: null,
      contexts: null, segment: null, abort: new AbortController(), written: new Set() };
    this.ui.gen = gen;
    this.ui.contexts = [];
    document.body.dataset.streamed = "0";
    this.ui.selection = new Set();
    this.setStatus("running", "Sending…");
    this.renderButtons();
    this.renderTakes();
    let final;
    try {
      final = await streamGenerate(body, (event) => this.onEvent(gen, event), gen.abort.signal);
    } catch (err) {
      // An abort after the server took the job (its start event came) is a plain cancel.
      const aborted = gen.job ? "cancelled" : "cancelled before the server answered";
      final = { event: "error", message: err.name === "AbortError" ? aborted : err.message, refused: err.status };
    }
    this.finish(gen, final);
  }

  onEvent(gen, e) {
    if (e.event === "start") {
      gen.job = e.job;
      this.setStatus(e.queue_position ? "queued" : "running",
        e.queue_position ? `Queued behind ${e.queue_position} request(s)…` : "Starting…");
    } else if (e.event === "running") {
      this.setStatus("running", "Generating…");
    } else if (e.event === "context") {
      gen.writing = e.bars;
      gen.contexts = e.contexts;
      gen.segment = e.segment;
      gen.written.add(e.segment);
      this.ui.contexts.push(e);
      const lo = e.bars[0] * FRAMES_PER_BAR, hi = e.bars[1] * FRAMES_PER_BAR;
      this.doc.notes = this.doc.notes.filter((n) => n.onset < lo || n.onset >= hi);
      this.roll.scrollToFrame(lo);
      this.renderStructure();
      this.renderContexts();
      this.notesChanged();
    } else if (e.event === "note") {
      const note = this.addNote({ onset: e.onset, pitch: e.pitch, velocity: e.velocity, duration: e.duration });
      this.ui.fresh.set(note.id, performance.now());
      gen.count += 1;
      if (gen.firstNoteMs === null) gen.firstNoteMs = performance.now() - gen.t0;
      document.body.dataset.streamed = String(gen.count);
      this.setStatus("running", `Writing ${this.doc.segments[e.segment].label} (segment ${e.segment}): ${gen.count} notes · `
        + `first note after ${(gen.firstNoteMs / 1000).toFixed(2)} s`);
      this.notesChanged();
    }
  }

  finish(gen, final) {
    this.ui.gen = null;
    if (final.event === "done") {
      this.recordTakes(gen);
      this.record(gen.before, "generation");
      const first = gen.firstNoteMs === null ? "" : `, first note after ${(gen.firstNoteMs / 1000).toFixed(2)} s`;
      this.setStatus("done", `Done: ${final.notes} notes, ${final.beats} beats in ${final.seconds.toFixed(2)} s `
        + `(${final.beats_per_second.toFixed(1)} beats/s${first}); seed ${gen.body.seed}.`);
      if ($("auto-seed").checked) $("seed").value = String(randomSeed());
    } else {
      this.doc = gen.before;  // a cancelled or failed generation leaves the song as it was
      if (final.event === "cancelled") this.setStatus("cancelled", `Cancelled${final.latency_s != null ? ` (stopped ${(final.latency_s * 1000).toFixed(0)} ms after the request)` : ""}; the song is unchanged.`);
      else this.setStatus("error", `Not generated: ${final.message}`);
      if (final.event === "error") this.toast(final.message);
    }
    this.ui.fresh = new Map([...this.ui.fresh].filter(([id]) => this.doc.notes.some((n) => n.id === id)));
    this.changed();
  }

  recordTakes(gen) {
    const segs = this.segmentBars();
    for (const index of gen.written) {
      const seg = segs[index];
      const key = song.takeKey(seg);
      const rows = (doc) => song.toRows(song.notesIn(doc.notes, seg.start, seg.end));
      let entry = this.doc.takes[key];
      if (!entry) {
        entry = { list: [], index: 0, accepted: null };
        const original = rows(gen.before);
        if (original.length) entry.list.push({ seed: null, note: "before generating", rows: original });
        this.doc.takes[key] = entry;
      }
      entry.list.push({ seed: gen.body.seed, sampling: gen.body.sampling, rows: rows(this.doc), note: "" });
      entry.index = entry.list.length - 1;
    }
  }

  flipTake(seg, delta) {
    const key = song.takeKey(seg);
    this.commit(`take of segment ${seg.index}`, () => {
      const entry = this.doc.takes[key];
      entry.index = Math.max(0, Math.min(entry.list.length - 1, entry.index + delta));
      song.replaceNotesIn(this.doc, seg.start, seg.end, entry.list[entry.index].rows, () => this.newId());
    });
  }

  acceptTake(seg) {
    const key = song.takeKey(seg);
    this.commit(`accept take of segment ${seg.index}`, () => {
      const entry = this.doc.takes[key];
      entry.list = [entry.list[entry.index]];
      entry.index = 0;
      entry.accepted = 0;
    });
  }

  async cancel() {
    const gen = this.ui.gen;
    if (!gen) return;
    this.setStatus("running", "Cancelling…");
    if (!gen.job) { gen.abort.abort(); return; }
    try {
      await cancelJob(gen.job);
    } catch (err) {
      gen.abort.abort();
    }
    // if the server's `cancelled` event does not arrive, drop the stream (the server cancels on disconnect)
    setTimeout(() => { if (this.ui.gen === gen) gen.abort.abort(); }, 3000);
  }

  generateSegment() {
    const seg = this.selectedSegmentInfo();
    if (seg.seed) { this.toast("the seed segment keeps its notes; unmark it to rewrite it"); return; }
    this.generate({ targets: [seg.index] });
  }

  // -- playback ---------------------------------------------------------------------------------
  // The server's sampled piano when it has one and it is chosen, else the browser's oscillator piano.
  useSampled() {
    return $("piano-choice").value === "sampled" && !!(this.info && this.info.piano && this.info.piano.sampled);
  }

  togglePlay() {
    if (this.player && this.player.playing) { this.stopPlayback(); return; }
    const end = this.totalBars() * FRAMES_PER_BAR;
    const onFrame = (frame) => {
      this.ui.playhead = frame;
      this.roll.scrollToFrame(frame);
      this.roll.redraw();
    };
    $("play").textContent = "Stop";
    if (this.useSampled()) {
      this.player = this.sampledPlayer;
      this.player.start(this.songBody(), this.ui.cursor, end, onFrame, () => this.stopPlayback());
    } else {
      this.player = this.synthPlayer;
      this.player.start(this.doc.notes, this.ui.cursor, end, this.doc.tempo, onFrame, () => this.stopPlayback());
    }
    document.body.dataset.playing = this.player === this.sampledPlayer ? "sampled" : "synth";
  }

  stopPlayback() {
    if (this.player) this.player.stop();
    this.player = null;
    this.ui.playhead = null;
    $("play").textContent = "Play";
    delete document.body.dataset.playing;
    this.roll.redraw();
  }

  // A chunk the server could not render: say why, switch to the browser piano and play on with it.
  sampledFailed(err) {
    this.stopPlayback();
    $("piano-choice").value = "synth";
    this.toast(`Sampled piano failed (${err.message}); playing with the browser's synth piano.`);
    this.togglePlay();
  }

  async exportWav() {
    try {
      download(await postForBlob("/api/audio", this.songBody()), "sfs-song.wav");
      this.setStatus("idle", "Exported sfs-song.wav (the server's sampled piano).");
    } catch (err) {
      this.toast(`Audio export failed: ${err.message}`);
    }
  }

  // -- server info ------------------------------------------------------------------------------
  async pollInfo() {
    let delay = 2000;
    try {
      const info = await getJSON("/api/info");
      const first = this.info === null;
      this.info = info;
      this.maxBars = info.max_song_bars;
      if (first) {
        const presets = $("presets");
        for (const p of info.presets) {
          const option = document.createElement("option");
          option.value = p;
          option.textContent = p;
          presets.append(option);
        }
        this.setSampling(info.sampling_defaults);
      }
      const pill = $("server-status");
      if (info.failure) { pill.textContent = "model failed to load"; pill.title = info.failure; pill.dataset.state = "error"; }
      else if (info.warm) {
        pill.textContent = `model warm · queue ${info.queue.waiting}/${info.queue.capacity}`;
        pill.title = `compiled in ${info.warmup_seconds} s; window ${info.model.window_bars} bars`;
        pill.dataset.state = "warm";
        delay = 5000;
      } else { pill.textContent = "compiling the model…"; pill.dataset.state = "loading"; }
      document.body.dataset.warm = String(!!info.warm);
      const sampled = $("piano-choice").querySelector("option[value='sampled']");
      sampled.disabled = !info.piano.sampled;
      sampled.title = info.piano.detail || "FluidR3 GM piano, rendered by the server";
      $("export-wav").disabled = !info.piano.sampled;
      $("export-wav").title = info.piano.detail || "WAV of the whole song with the server's sampled piano";
      if (first && !info.piano.sampled) $("piano-choice").value = "synth";
    } catch (err) {
      $("server-status").textContent = "server unreachable";
      $("server-status").dataset.state = "error";
    }
    setTimeout(() => this.pollInfo(), delay);
  }

  // -- wiring -----------------------------------------------------------------------------------
  bind() {
    $("undo").addEventListener("click", () => this.undo());
    $("redo").addEventListener("click", () => this.redo());
    $("play").addEventListener("click", () => this.togglePlay());
    $("tempo").addEventListener("change", () => {
      const tempo = Number($("tempo").value);
      if (!(tempo >= 20 && tempo <= 400)) { this.toast("tempo must be 20–400 BPM"); $("tempo").value = String(this.doc.tempo); return; }
      this.commit("change tempo", () => { this.doc.tempo = tempo; });
    });
    $("structure-apply").addEventListener("click", () => this.applyStructureText($("structure-text").value));
    $("structure-text").addEventListener("input", () => { this.ui.structureEdited = true; });
    $("structure-text").addEventListener("blur", () => {
      if (this.ui.structureEdited && $("structure-text").value === song.structureText(this.doc.segments)) this.ui.structureEdited = false;
    });
    $("structure-text").addEventListener("keydown", (e) => {
      if (e.key === "Enter") this.applyStructureText(e.target.value);
      if (e.key === "Escape") { this.ui.structureEdited = false; e.target.value = song.structureText(this.doc.segments); }
    });
    $("presets").addEventListener("change", (e) => {
      if (e.target.value) this.applyStructureText(e.target.value);
      e.target.value = "";
    });
    $("seg-add").addEventListener("click", () => this.addSegment());
    $("seg-split").addEventListener("click", () => this.splitSegment());
    $("seg-delete").addEventListener("click", () => this.deleteSegment());
    $("seg-label").addEventListener("change", (e) => this.relabel(e.target.value));
    $("seg-seed").addEventListener("click", () => this.toggleSeed());
    $("seg-seed-import").addEventListener("click", () => $("seed-file").click());
    $("seed-file").addEventListener("change", (e) => { if (e.target.files[0]) this.importSeedFile(e.target.files[0]); e.target.value = ""; });
    $("import-midi").addEventListener("click", () => $("midi-file").click());
    $("midi-file").addEventListener("change", (e) => { if (e.target.files[0]) this.importMidiFile(e.target.files[0]); e.target.value = ""; });
    $("export-midi").addEventListener("click", () => this.exportMidi());
    $("export-wav").addEventListener("click", () => this.exportWav());
    $("save-project").addEventListener("click", () => this.saveProject());
    $("load-project").addEventListener("click", () => $("project-file").click());
    $("project-file").addEventListener("change", (e) => { if (e.target.files[0]) this.loadProject(e.target.files[0]); e.target.value = ""; });
    $("gen-segment").addEventListener("click", () => this.generateSegment());
    $("gen-range").addEventListener("click", () => this.ui.range && this.generate({ bar_range: this.ui.range }));
    $("gen-fill").addEventListener("click", () => this.generate({ targets: [...this.ui.fillOrder] }));
    $("cancel").addEventListener("click", () => this.cancel());
    $("new-seed").addEventListener("click", () => { $("seed").value = String(randomSeed()); });
    $("zoom-in").addEventListener("click", () => { this.roll.zoomX(1.25); this.renderStructure(); });
    $("zoom-out").addEventListener("click", () => { this.roll.zoomX(0.8); this.renderStructure(); });
    $("zoom-taller").addEventListener("click", () => this.roll.zoomY(1.2));
    $("zoom-shorter").addEventListener("click", () => this.roll.zoomY(0.83));
    $("roll").addEventListener("wheel", (e) => { if (e.ctrlKey || e.metaKey) this.renderStructure(); });
    for (const tool of ["draw", "select"]) {
      $(`tool-${tool}`).addEventListener("change", () => { this.ui.tool = tool; });
    }
    $("velocity").addEventListener("change", (e) => { this.ui.velocity = Math.max(1, Math.min(127, Number(e.target.value) || 80)); });
    $("seed").value = String(randomSeed());
    window.addEventListener("keydown", (e) => this.key(e));
  }

  key(e) {
    const typing = ["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement.tagName)
      && document.activeElement.type !== "checkbox" && document.activeElement.type !== "radio";
    if (e.key === "Escape") {
      if (this.generating()) { e.preventDefault(); this.cancel(); return; }
      if (typing) { document.activeElement.blur(); return; }
      this.ui.selection = new Set();
      this.setRange(null, null);
      return;
    }
    if (typing) return;
    const mod = e.ctrlKey || e.metaKey;
    const k = e.key.toLowerCase();
    if (mod && k === "z") { e.preventDefault(); if (e.shiftKey) this.redo(); else this.undo(); }
    else if (mod && k === "y") { e.preventDefault(); this.redo(); }
    else if (mod && k === "c") { e.preventDefault(); this.copySelection(); }
    else if (mod && k === "x") { e.preventDefault(); if (this.copySelection()) this.deleteSelection(); }
    else if (mod && k === "v") { e.preventDefault(); this.paste(); }
    else if (mod && k === "a") { e.preventDefault(); this.ui.selection = new Set(this.doc.notes.map((n) => n.id)); this.roll.redraw(); }
    else if (e.key === "Delete" || e.key === "Backspace") { e.preventDefault(); this.deleteSelection(); }
    else if (e.key === " ") { e.preventDefault(); this.togglePlay(); }
    else if (e.key === "ArrowUp") { e.preventDefault(); this.nudge(0, e.shiftKey ? 12 : 1); }
    else if (e.key === "ArrowDown") { e.preventDefault(); this.nudge(0, e.shiftKey ? -12 : -1); }
    else if (e.key === "ArrowLeft") { e.preventDefault(); this.nudge(e.shiftKey ? -8 : -1, 0); }
    else if (e.key === "ArrowRight") { e.preventDefault(); this.nudge(e.shiftKey ? 8 : 1, 0); }
  }
}

window.sfsApp = new App();
