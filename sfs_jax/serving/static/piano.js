// A small piano synthesized with Web Audio (no samples, so playback works offline), and a
// look-ahead player that schedules notes from a start frame and reports the playhead.
// Why synthesized: the app must sound without any download; a few detuned partials with a
// pitch-dependent exponential decay and a velocity-dependent low-pass read as a piano well
// enough to judge a take.

const FRAMES_PER_BEAT = 8;

export function midiToHz(pitch) {
  return 440 * Math.pow(2, (pitch - 69) / 12);
}

export class Piano {
  constructor() {
    this.ctx = null;
    this.master = null;
    this.voices = new Set();
  }

  // The AudioContext may only start after a user gesture; every entry point calls this first.
  ensure() {
    if (!this.ctx) {
      const Ctx = window.AudioContext || window.webkitAudioContext;
      this.ctx = new Ctx();
      const compressor = this.ctx.createDynamicsCompressor();
      compressor.threshold.value = -18;
      compressor.ratio.value = 4;
      this.master = this.ctx.createGain();
      this.master.gain.value = 0.5;
      this.master.connect(compressor).connect(this.ctx.destination);
    }
    if (this.ctx.state === "suspended") this.ctx.resume();
    return this.ctx;
  }

  // One note: partials 1, 2, 3 (slightly detuned), hammer-fast attack, decay longer for low keys.
  play(pitch, velocity, when, seconds) {
    const ctx = this.ensure();
    const f = midiToHz(pitch);
    const amp = 0.05 + 0.25 * Math.pow(velocity / 127, 1.5);
    const decay = 0.4 + 3.2 * Math.pow((108 - pitch) / 87, 1.5);
    const end = when + Math.max(seconds, 0.05);
    const out = ctx.createGain();
    out.gain.setValueAtTime(0, when);
    out.gain.linearRampToValueAtTime(amp, when + 0.004);
    out.gain.setTargetAtTime(amp * 0.25, when + 0.004, decay / 3);
    out.gain.setTargetAtTime(0, end, 0.06);
    const filter = ctx.createBiquadFilter();
    filter.type = "lowpass";
    filter.frequency.value = Math.min(f * (3 + 6 * velocity / 127), 14000);
    filter.Q.value = 0.7;
    filter.connect(out).connect(this.master);
    const partials = [[1, 1.0, "triangle", 0], [2, 0.35, "sine", 3], [3, 0.12, "sine", -4]];
    const oscillators = partials.filter(([n]) => f * n < 16000).map(([n, gain, type, cents]) => {
      const osc = ctx.createOscillator();
      osc.type = type;
      osc.frequency.value = f * n;
      osc.detune.value = cents;
      const g = ctx.createGain();
      g.gain.value = gain;
      osc.connect(g).connect(filter);
      osc.start(when);
      osc.stop(end + 0.5);
      return osc;
    });
    const voice = { oscillators, out };
    this.voices.add(voice);
    oscillators[0].onended = () => {
      this.voices.delete(voice);
      out.disconnect();
    };
  }

  stopAll() {
    if (!this.ctx) return;
    const now = this.ctx.currentTime;
    for (const voice of this.voices) {
      voice.out.gain.cancelScheduledValues(now);
      voice.out.gain.setTargetAtTime(0, now, 0.02);
      for (const osc of voice.oscillators) {
        try { osc.stop(now + 0.1); } catch (e) { /* already stopped */ }
      }
    }
  }
}

// Schedules notes a little ahead of time (so timing does not depend on the UI thread) and
// calls onFrame(frame) on every animation frame with the playhead's song frame.
export class Player {
  constructor(piano) {
    this.piano = piano;
    this.timer = null;
    this.raf = null;
    this.playing = false;
  }

  start(notes, startFrame, endFrame, tempoBpm, onFrame, onEnd) {
    this.stop();
    const ctx = this.piano.ensure();
    const secondsPerFrame = 60 / tempoBpm / FRAMES_PER_BEAT;
    const sorted = notes.filter((n) => n.onset >= startFrame).sort((a, b) => a.onset - b.onset);
    const t0 = ctx.currentTime + 0.08;
    let next = 0;
    this.playing = true;
    const schedule = () => {
      const horizon = ctx.currentTime + 0.25;
      while (next < sorted.length) {
        const n = sorted[next];
        const when = t0 + (n.onset - startFrame) * secondsPerFrame;
        if (when > horizon) break;
        this.piano.play(n.pitch, n.velocity, when, n.duration * secondsPerFrame);
        next += 1;
      }
    };
    schedule();
    this.timer = setInterval(schedule, 40);
    const tick = () => {
      if (!this.playing) return;
      const frame = startFrame + (ctx.currentTime - t0) / secondsPerFrame;
      if (frame >= endFrame) {
        this.stop();
        onEnd();
        return;
      }
      onFrame(Math.max(frame, startFrame));
      this.raf = requestAnimationFrame(tick);
    };
    this.raf = requestAnimationFrame(tick);
  }

  stop() {
    this.playing = false;
    if (this.timer) clearInterval(this.timer);
    if (this.raf) cancelAnimationFrame(this.raf);
    this.timer = this.raf = null;
    this.piano.stopAll();
  }
}
