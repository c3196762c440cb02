// The piano roll: pitch 21..108 on a bar / beat / frame grid (8 frames per beat, 32 per bar),
// zoom and scroll, and note editing snapped to the frame. It draws only what is visible on one
// canvas that stays over the scrolled area (a sizer element gives the scrollbars their range),
// so a 200-bar song costs the same as an 8-bar one. Edits go through app.beginEdit/endEdit so
// each drag is one undo step.

export const KEYS_W = 52;
export const RULER_H = 30;
export const MIN_PITCH = 21;
export const MAX_PITCH = 108;
export const FRAMES_PER_BEAT = 8;
export const FRAMES_PER_BAR = 32;
export const MAX_NOTE_FRAMES = 16 * FRAMES_PER_BAR;
const N_PITCHES = MAX_PITCH - MIN_PITCH + 1;
const BLACK = new Set([1, 3, 6, 8, 10]);
const EDGE_PX = 5;
const FRESH_MS = 1200;

export function labelHue(label) {
  return (label.toUpperCase().charCodeAt(0) * 47) % 360;
}

export function pitchName(pitch) {
  const names = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"];
  return `${names[pitch % 12]}${Math.floor(pitch / 12) - 1}`;
}

export class PianoRoll {
  constructor(scroller, sizer, canvas, app) {
    this.scroller = scroller;
    this.sizer = sizer;
    this.canvas = canvas;
    this.app = app;
    this.pxPerFrame = 2;
    this.rowH = 10;
    this.drag = null;
    this.pending = false;
    this.onScroll = () => {};
    scroller.addEventListener("scroll", () => { this.place(); this.onScroll(); });
    canvas.addEventListener("mousedown", (e) => this.mouseDown(e));
    window.addEventListener("mousemove", (e) => this.mouseMove(e));
    window.addEventListener("mouseup", (e) => this.mouseUp(e));
    canvas.addEventListener("dblclick", (e) => this.doubleClick(e));
    canvas.addEventListener("wheel", (e) => this.wheel(e), { passive: false });
    new ResizeObserver(() => this.layout()).observe(scroller);
  }

  // -- geometry -------------------------------------------------------------------------------
  get totalFrames() { return this.app.totalBars() * FRAMES_PER_BAR; }
  get pxPerBar() { return this.pxPerFrame * FRAMES_PER_BAR; }
  frameToX(frame) { return KEYS_W + frame * this.pxPerFrame - this.scroller.scrollLeft; }
  xToFrame(x) { return (x - KEYS_W + this.scroller.scrollLeft) / this.pxPerFrame; }
  pitchToY(pitch) { return RULER_H + (MAX_PITCH - pitch) * this.rowH - this.scroller.scrollTop; }
  yToPitch(y) { return MAX_PITCH - Math.floor((y - RULER_H + this.scroller.scrollTop) / this.rowH); }

  layout() {
    this.sizer.style.width = `${KEYS_W + (this.totalFrames + 2 * FRAMES_PER_BAR) * this.pxPerFrame}px`;
    this.sizer.style.height = `${RULER_H + N_PITCHES * this.rowH}px`;
    const dpr = window.devicePixelRatio || 1;
    const w = this.scroller.clientWidth, h = this.scroller.clientHeight;
    this.canvas.style.width = `${w}px`;
    this.canvas.style.height = `${h}px`;
    this.canvas.width = Math.round(w * dpr);
    this.canvas.height = Math.round(h * dpr);
    this.place();
  }

  place() {
    this.canvas.style.left = `${this.scroller.scrollLeft}px`;
    this.canvas.style.top = `${this.scroller.scrollTop}px`;
    this.redraw();
  }

  redraw() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => { this.pending = false; this.draw(); });
  }

  zoomX(factor, anchorX = null) {
    const x = anchorX ?? this.scroller.clientWidth / 2;
    const frame = this.xToFrame(x);
    this.pxPerFrame = Math.min(24, Math.max(0.5, this.pxPerFrame * factor));
    this.layout();
    this.scroller.scrollLeft = KEYS_W + frame * this.pxPerFrame - x;
    this.onScroll();
  }

  zoomY(factor) {
    const mid = this.yToPitch(this.scroller.clientHeight / 2);
    this.rowH = Math.min(24, Math.max(4, Math.round(this.rowH * factor)));
    this.layout();
    this.scrollToPitch(mid);
  }

  scrollToPitch(pitch) {
    this.scroller.scrollTop = RULER_H + (MAX_PITCH - pitch) * this.rowH - this.scroller.clientHeight / 2;
  }

  scrollToFrame(frame) {
    const x = this.frameToX(frame);
    if (x < KEYS_W || x > this.scroller.clientWidth - 40) this.scroller.scrollLeft = frame * this.pxPerFrame - 40;
  }

  // -- hit testing ----------------------------------------------------------------------------
  eventPos(e) {
    const r = this.canvas.getBoundingClientRect();
    return { x: e.clientX - r.left, y: e.clientY - r.top };
  }

  hitNote(x, y) {
    const pitch = this.yToPitch(y);
    const notes = this.app.doc.notes;
    for (let i = notes.length - 1; i >= 0; i -= 1) {
      const n = notes[i];
      if (n.pitch !== pitch) continue;
      const x0 = this.frameToX(n.onset), x1 = this.frameToX(n.onset + n.duration);
      if (x >= x0 && x <= x1 + 1) return { note: n, edge: x1 - x <= EDGE_PX && x1 - x0 > 2 * EDGE_PX ? "end" : "body" };
    }
    return null;
  }

  // -- mouse ----------------------------------------------------------------------------------
  mouseDown(e) {
    if (e.button !== 0) return;
    // preventDefault below keeps focus where it was; leave text fields so keyboard shortcuts reach the roll
    if (document.activeElement && document.activeElement !== document.body) document.activeElement.blur();
    const { x, y } = this.eventPos(e);
    const ui = this.app.ui;
    if (y < RULER_H) {
      this.drag = { kind: "ruler", x0: x, frame0: Math.max(0, this.xToFrame(x)), moved: false };
      e.preventDefault();
      return;
    }
    if (x < KEYS_W) {
      this.app.preview(this.yToPitch(y), 90);
      return;
    }
    e.preventDefault();
    const hit = this.hitNote(x, y);
    const editable = this.app.editable();
    if (hit && e.shiftKey) {
      if (ui.selection.has(hit.note.id)) ui.selection.delete(hit.note.id); else ui.selection.add(hit.note.id);
      this.app.selectionChanged();
      return;
    }
    if (hit) {
      if (!ui.selection.has(hit.note.id)) { ui.selection = new Set([hit.note.id]); this.app.selectionChanged(); }
      if (!editable) return;
      this.startNoteDrag(hit.edge === "end" ? "resize" : "move", x, y);
      this.app.preview(hit.note.pitch, hit.note.velocity);
      return;
    }
    if (ui.tool === "select" || e.shiftKey || !editable) {
      this.drag = { kind: "band", x0: x, y0: y, x1: x, y1: y, base: e.shiftKey ? new Set(ui.selection) : new Set() };
      return;
    }
    const onset = Math.floor(this.xToFrame(x)), pitch = this.yToPitch(y);
    if (onset < 0 || onset >= this.totalFrames || pitch < MIN_PITCH || pitch > MAX_PITCH) return;
    this.app.beginEdit();
    const note = this.app.addNote({ onset, pitch, velocity: ui.velocity, duration: ui.lastDuration });
    ui.selection = new Set([note.id]);
    this.app.selectionChanged();
    this.app.preview(pitch, ui.velocity);
    this.drag = { kind: "resize", frame0: this.xToFrame(x), pitch0: pitch, originals: this.originals(), created: true };
  }

  originals() {
    const map = new Map();
    for (const n of this.app.doc.notes) {
      if (this.app.ui.selection.has(n.id)) map.set(n.id, { onset: n.onset, pitch: n.pitch, duration: n.duration });
    }
    return map;
  }

  startNoteDrag(kind, x, y) {
    this.app.beginEdit();
    this.drag = { kind, frame0: this.xToFrame(x), pitch0: this.yToPitch(y), originals: this.originals() };
  }

  mouseMove(e) {
    const { x, y } = this.eventPos(e);
    const d = this.drag;
    if (!d) {
      if (e.target !== this.canvas) return;
      const hit = y > RULER_H && x > KEYS_W ? this.hitNote(x, y) : null;
      this.canvas.style.cursor = hit ? (hit.edge === "end" ? "ew-resize" : "move") : (y < RULER_H ? "text" : "crosshair");
      return;
    }
    const notes = this.app.doc.notes;
    if (d.kind === "ruler") {
      if (Math.abs(x - d.x0) > 4) d.moved = true;
      if (d.moved) {
        const f = Math.max(0, this.xToFrame(x));
        const start = Math.floor(Math.min(f, d.frame0) / FRAMES_PER_BAR);
        const end = Math.ceil(Math.max(f, d.frame0) / FRAMES_PER_BAR);
        this.app.setRange(start, Math.max(end, start + 1));
      }
    } else if (d.kind === "band") {
      d.x1 = x; d.y1 = y;
      const f0 = this.xToFrame(Math.min(d.x0, x)), f1 = this.xToFrame(Math.max(d.x0, x));
      const pHi = this.yToPitch(Math.min(d.y0, y)), pLo = this.yToPitch(Math.max(d.y0, y));
      const sel = new Set(d.base);
      for (const n of notes) {
        if (n.pitch >= pLo && n.pitch <= pHi && n.onset < f1 && n.onset + n.duration > f0) sel.add(n.id);
      }
      this.app.ui.selection = sel;
      this.app.selectionChanged();
    } else if (d.kind === "move") {
      let df = Math.round(this.xToFrame(x) - d.frame0), dp = this.yToPitch(y) - d.pitch0;
      const o = [...d.originals.values()];
      df = Math.max(df, -Math.min(...o.map((v) => v.onset)));
      df = Math.min(df, this.totalFrames - 1 - Math.max(...o.map((v) => v.onset)));
      dp = Math.max(dp, MIN_PITCH - Math.min(...o.map((v) => v.pitch)));
      dp = Math.min(dp, MAX_PITCH - Math.max(...o.map((v) => v.pitch)));
      for (const n of notes) {
        const v = d.originals.get(n.id);
        if (v) { n.onset = v.onset + df; n.pitch = v.pitch + dp; }
      }
      if (dp !== d.lastDp) { d.lastDp = dp; if (dp) this.app.preview(o[0].pitch + dp, 80); }
      this.app.notesChanged(false);
    } else if (d.kind === "resize") {
      const df = Math.round(this.xToFrame(x) - d.frame0);
      for (const n of notes) {
        const v = d.originals.get(n.id);
        if (v) n.duration = Math.min(MAX_NOTE_FRAMES, Math.max(1, v.duration + df));
      }
      this.app.notesChanged(false);
    }
    this.redraw();
  }

  mouseUp() {
    const d = this.drag;
    if (!d) return;
    this.drag = null;
    if (d.kind === "ruler") {
      if (!d.moved) {
        this.app.setCursor(Math.round(d.frame0 / FRAMES_PER_BEAT) * FRAMES_PER_BEAT);
        this.app.setRange(null, null);
      }
    } else if (d.kind === "move" || d.kind === "resize") {
      if (d.kind === "resize" && d.originals.size === 1) {
        const id = [...d.originals.keys()][0];
        const note = this.app.doc.notes.find((n) => n.id === id);
        if (note) this.app.ui.lastDuration = note.duration;
      }
      this.app.endEdit(d.created ? "add note" : d.kind === "move" ? "move notes" : "resize notes");
    }
    this.redraw();
  }

  doubleClick(e) {
    const { x, y } = this.eventPos(e);
    if (y < RULER_H || x < KEYS_W || !this.app.editable()) return;
    const hit = this.hitNote(x, y);
    if (hit) {
      this.app.ui.selection = new Set([hit.note.id]);
      this.app.deleteSelection();
    }
  }

  wheel(e) {
    if (e.ctrlKey || e.metaKey) {
      e.preventDefault();
      this.zoomX(e.deltaY < 0 ? 1.25 : 0.8, this.eventPos(e).x);
    } else if (e.altKey) {
      e.preventDefault();
      this.zoomY(e.deltaY < 0 ? 1.2 : 0.83);
    }
  }

  // -- drawing --------------------------------------------------------------------------------
  draw() {
    const ctx = this.canvas.getContext("2d");
    const dpr = window.devicePixelRatio || 1;
    const W = this.canvas.width / dpr, H = this.canvas.height / dpr;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, W, H);
    const { doc, ui } = this.app;
    const total = this.totalFrames;
    const f0 = Math.max(0, Math.floor(this.xToFrame(KEYS_W))), f1 = Math.min(total, Math.ceil(this.xToFrame(W)));
    const pTop = Math.min(MAX_PITCH, this.yToPitch(RULER_H)), pBottom = Math.max(MIN_PITCH, this.yToPitch(H));
    const xEnd = this.frameToX(total);

    // rows: black keys darker
    for (let p = pBottom; p <= pTop; p += 1) {
      ctx.fillStyle = BLACK.has(p % 12) ? "#191c22" : "#21252c";
      ctx.fillRect(KEYS_W, this.pitchToY(p), Math.max(0, xEnd - KEYS_W), this.rowH);
      if (p % 12 === 0) {
        ctx.fillStyle = "#2d323b";
        ctx.fillRect(KEYS_W, this.pitchToY(p) + this.rowH - 1, Math.max(0, xEnd - KEYS_W), 1);
      }
    }
    // segments: label tint, seed hatch
    const segs = this.app.segmentBars();
    for (const s of segs) {
      const x0 = this.frameToX(s.start * FRAMES_PER_BAR), x1 = this.frameToX(s.end * FRAMES_PER_BAR);
      if (x1 < KEYS_W || x0 > W) continue;
      ctx.fillStyle = `hsla(${labelHue(s.label)}, 60%, 50%, 0.06)`;
      ctx.fillRect(x0, RULER_H, x1 - x0, H - RULER_H);
      if (s.seed) this.hatch(ctx, x0, RULER_H, x1 - x0, H - RULER_H, "rgba(120, 220, 140, 0.07)");
    }
    // generation: the bars being written
    if (ui.gen && ui.gen.writing) {
      const [a, b] = ui.gen.writing;
      const x0 = this.frameToX(a * FRAMES_PER_BAR), x1 = this.frameToX(b * FRAMES_PER_BAR);
      this.hatch(ctx, x0, RULER_H, x1 - x0, H - RULER_H, "rgba(255, 200, 80, 0.08)");
    }
    if (ui.range) {
      const x0 = this.frameToX(ui.range[0] * FRAMES_PER_BAR), x1 = this.frameToX(ui.range[1] * FRAMES_PER_BAR);
      ctx.fillStyle = "rgba(90, 150, 255, 0.12)";
      ctx.fillRect(x0, RULER_H, x1 - x0, H - RULER_H);
    }
    // vertical grid
    const step = this.pxPerFrame >= 6 ? 1 : this.pxPerFrame >= 1.5 ? 2 : FRAMES_PER_BEAT;
    for (let f = f0 - (f0 % step); f <= f1; f += step) {
      const x = Math.round(this.frameToX(f)) + 0.5;
      if (x < KEYS_W) continue;
      ctx.strokeStyle = f % FRAMES_PER_BAR === 0 ? "#5b6270" : f % FRAMES_PER_BEAT === 0 ? "#363c47" : "#272b33";
      ctx.beginPath(); ctx.moveTo(x, RULER_H); ctx.lineTo(x, H); ctx.stroke();
    }
    // notes
    const now = performance.now();
    let fresh = false;
    const hueOf = (frame) => {
      const s = segs.find((seg) => frame < seg.end * FRAMES_PER_BAR);
      return s ? labelHue(s.label) : 200;
    };
    for (const n of doc.notes) {
      if (n.onset > f1 || n.onset + n.duration < f0 || n.pitch < pBottom || n.pitch > pTop) continue;
      const x = this.frameToX(n.onset), y = this.pitchToY(n.pitch);
      const w = Math.max(2, n.duration * this.pxPerFrame - 1);
      const light = 38 + 30 * (n.velocity / 127);
      ctx.fillStyle = `hsl(${hueOf(n.onset)}, 70%, ${light}%)`;
      ctx.fillRect(x, y + 1, w, this.rowH - 2);
      const born = ui.fresh.get(n.id);
      if (born !== undefined && now - born < FRESH_MS) {
        fresh = true;
        ctx.strokeStyle = `rgba(255, 240, 150, ${1 - (now - born) / FRESH_MS})`;
        ctx.lineWidth = 2;
        ctx.strokeRect(x - 1, y, w + 2, this.rowH);
        ctx.lineWidth = 1;
      }
      if (ui.selection.has(n.id)) {
        ctx.strokeStyle = "#ffffff";
        ctx.strokeRect(x + 0.5, y + 1.5, w - 1, this.rowH - 3);
      }
    }
    // rubber band
    if (this.drag && this.drag.kind === "band") {
      const d = this.drag;
      ctx.strokeStyle = "rgba(140, 180, 255, 0.9)";
      ctx.fillStyle = "rgba(140, 180, 255, 0.12)";
      ctx.fillRect(Math.min(d.x0, d.x1), Math.min(d.y0, d.y1), Math.abs(d.x1 - d.x0), Math.abs(d.y1 - d.y0));
      ctx.strokeRect(Math.min(d.x0, d.x1), Math.min(d.y0, d.y1), Math.abs(d.x1 - d.x0), Math.abs(d.y1 - d.y0));
    }
    // song end
    ctx.fillStyle = "rgba(0, 0, 0, 0.35)";
    if (xEnd < W) ctx.fillRect(Math.max(xEnd, KEYS_W), RULER_H, W - xEnd, H - RULER_H);
    this.drawRuler(ctx, W, segs, f0, f1);
    this.drawKeys(ctx, H, pBottom, pTop);
    // cursor and playhead
    this.vline(ctx, ui.cursor, "#5aa0ff", H);
    if (ui.playhead !== null) this.vline(ctx, ui.playhead, "#ff5a5a", H);
    if (fresh) this.redraw();
  }

  vline(ctx, frame, color, H) {
    const x = Math.round(this.frameToX(frame)) + 0.5;
    if (x < KEYS_W) return;
    ctx.strokeStyle = color;
    ctx.beginPath(); ctx.moveTo(x, 0); ctx.lineTo(x, H); ctx.stroke();
    ctx.fillStyle = color;
    ctx.beginPath(); ctx.moveTo(x - 5, 0); ctx.lineTo(x + 5, 0); ctx.lineTo(x, 7); ctx.fill();
  }

  hatch(ctx, x, y, w, h, color) {
    ctx.save();
    ctx.beginPath(); ctx.rect(x, y, w, h); ctx.clip();
    ctx.strokeStyle = color;
    ctx.lineWidth = 6;
    for (let i = -h; i < w; i += 18) { ctx.beginPath(); ctx.moveTo(x + i, y + h); ctx.lineTo(x + i + h, y); ctx.stroke(); }
    ctx.restore();
  }

  drawRuler(ctx, W, segs, f0, f1) {
    const { ui } = this.app;
    ctx.fillStyle = "#15181d";
    ctx.fillRect(0, 0, W, RULER_H);
    for (const s of segs) {
      const x0 = this.frameToX(s.start * FRAMES_PER_BAR), x1 = this.frameToX(s.end * FRAMES_PER_BAR);
      ctx.fillStyle = `hsla(${labelHue(s.label)}, 60%, 45%, 0.55)`;
      ctx.fillRect(x0, RULER_H - 6, x1 - x0 - 1, 6);
    }
    if (ui.gen && ui.gen.contexts) {
      const colors = { left: "#7fd1ff", right: "#ffb86b", seed: "#7ee787", ref: "#d2a8ff" };
      for (const [slot, c] of Object.entries(ui.gen.contexts)) {
        if (!c) continue;
        const x0 = this.frameToX(c.bars[0] * FRAMES_PER_BAR), x1 = this.frameToX(c.bars[1] * FRAMES_PER_BAR);
        const row = { left: 0, right: 0, seed: 1, ref: 2 }[slot];
        ctx.fillStyle = colors[slot];
        ctx.fillRect(x0 + 1, 2 + row * 4, x1 - x0 - 2, 3);
      }
    }
    if (ui.range) {
      const x0 = this.frameToX(ui.range[0] * FRAMES_PER_BAR), x1 = this.frameToX(ui.range[1] * FRAMES_PER_BAR);
      ctx.fillStyle = "rgba(90, 150, 255, 0.45)";
      ctx.fillRect(x0, 0, x1 - x0, RULER_H - 6);
    }
    ctx.fillStyle = "#aab2bf";
    ctx.font = "11px system-ui, sans-serif";
    const everyBars = this.pxPerBar >= 40 ? 1 : this.pxPerBar >= 12 ? 4 : 8;
    for (let bar = Math.floor(f0 / FRAMES_PER_BAR); bar * FRAMES_PER_BAR <= f1; bar += 1) {
      const x = this.frameToX(bar * FRAMES_PER_BAR);
      if (x < KEYS_W - 1) continue;
      ctx.fillStyle = "#5b6270";
      ctx.fillRect(Math.round(x), 12, 1, RULER_H - 18);
      if (bar % everyBars === 0) {
        ctx.fillStyle = "#aab2bf";
        ctx.fillText(String(bar), x + 3, 22);
      }
    }
  }

  drawKeys(ctx, H, pBottom, pTop) {
    ctx.fillStyle = "#0f1115";
    ctx.fillRect(0, 0, KEYS_W, H);
    ctx.font = "9px system-ui, sans-serif";
    for (let p = pBottom; p <= pTop; p += 1) {
      const y = this.pitchToY(p);
      if (y + this.rowH < RULER_H) continue;
      const black = BLACK.has(p % 12);
      ctx.fillStyle = black ? "#22252b" : "#e8e8e8";
      ctx.fillRect(black ? 0 : 0, y, black ? KEYS_W * 0.62 : KEYS_W - 1, this.rowH - 1);
      if (p % 12 === 0 && this.rowH >= 8) {
        ctx.fillStyle = "#333";
        ctx.fillText(pitchName(p), KEYS_W - 24, y + this.rowH - 2);
      }
    }
    ctx.fillStyle = "#15181d";
    ctx.fillRect(0, 0, KEYS_W, RULER_H);
  }
}
