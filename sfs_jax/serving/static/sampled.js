// Playback with the server's sampled piano: the song is fetched a few bars at a time as WAV
// (/api/audio), decoded, and each chunk is scheduled at its start time; the next chunk is fetched
// while the current one plays. A chunk holds the notes that start in it with their whole sound, so
// chunks overlap at their tails and Web Audio sums them into the song. Same interface as Player
// in piano.js (start, stop, playing), so the app can fall back to the oscillator piano.

const FRAMES_PER_BEAT = 8;
export const CHUNK_FRAMES = 4 * 4 * FRAMES_PER_BEAT;  // 4 bars: under 0.2 s to render at 100 BPM
const AHEAD_S = 6;  // fetch a chunk once it is due within this many seconds
const CACHE_SIZE = 64;

export class SampledPlayer {
  // fetchWav(body) -> Promise<ArrayBuffer> of /api/audio; onFailure(error) when a chunk cannot be had.
  constructor(piano, fetchWav, onFailure) {
    this.piano = piano;
    this.fetchWav = fetchWav;
    this.onFailure = onFailure;
    this.cache = new Map();  // key: the chunk's tempo, range and notes -> decoded AudioBuffer
    this.sources = new Set();
    this.raf = null;
    this.run = 0;  // playback generation: a stopped run's pending fetches schedule nothing
    this.playing = false;
    this.chunksPlayed = 0;
  }

  // song: the body the server checks ({segments, tempo_bpm, notes: rows}), captured at start.
  start(song, startFrame, endFrame, onFrame, onEnd) {
    this.stop();
    const ctx = this.piano.ensure();
    const run = ++this.run;
    this.playing = true;
    const secondsPerFrame = 60 / song.tempo_bpm / FRAMES_PER_BEAT;
    let t0 = null;
    const tick = () => {
      if (run !== this.run) return;
      const frame = startFrame + (ctx.currentTime - t0) / secondsPerFrame;
      if (frame >= endFrame) { this.stop(); onEnd(); return; }
      onFrame(Math.max(frame, startFrame));
      this.raf = requestAnimationFrame(tick);
    };
    const feed = async () => {
      for (let a = startFrame; a < endFrame; a += CHUNK_FRAMES) {
        const b = Math.min(a + CHUNK_FRAMES, endFrame);
        while (t0 !== null && t0 + (a - startFrame) * secondsPerFrame - ctx.currentTime > AHEAD_S) {
          await new Promise((resolve) => setTimeout(resolve, 200));
          if (run !== this.run) return;
        }
        const buffer = await this.chunk(ctx, song, a, b);
        if (run !== this.run) return;
        if (t0 === null) {  // the clock starts when the first chunk is ready
          t0 = ctx.currentTime + 0.05;
          this.raf = requestAnimationFrame(tick);
        }
        this.schedule(ctx, buffer, t0 + (a - startFrame) * secondsPerFrame);
      }
      if (t0 === null && run === this.run) { this.stop(); onEnd(); }  // nothing to play (cursor at the end)
    };
    feed().catch((error) => {
      if (run !== this.run) return;
      this.stop();
      this.onFailure(error);
    });
  }

  async chunk(ctx, song, a, b) {
    const rows = song.notes.filter((r) => r[0] >= a && r[0] < b);
    const key = JSON.stringify([song.tempo_bpm, a, b, rows]);
    if (this.cache.has(key)) return this.cache.get(key);
    const wav = await this.fetchWav({ ...song, frames: [a, b] });
    const buffer = await ctx.decodeAudioData(wav);
    if (this.cache.size >= CACHE_SIZE) this.cache.delete(this.cache.keys().next().value);
    this.cache.set(key, buffer);
    return buffer;
  }

  // A chunk that arrives late starts at once, from the point it should have reached.
  schedule(ctx, buffer, when) {
    const source = ctx.createBufferSource();
    source.buffer = buffer;
    source.connect(ctx.destination);  // rendered at its own level: no synth compressor
    const late = Math.max(0, ctx.currentTime - when);
    if (late >= buffer.duration) return;
    source.start(Math.max(when, ctx.currentTime), late);
    this.sources.add(source);
    this.chunksPlayed += 1;
    source.onended = () => { this.sources.delete(source); source.disconnect(); };
  }

  stop() {
    this.run += 1;
    this.playing = false;
    if (this.raf) cancelAnimationFrame(this.raf);
    this.raf = null;
    for (const source of this.sources) {
      try { source.stop(); } catch (e) { /* not started */ }
    }
    this.sources.clear();
  }
}
