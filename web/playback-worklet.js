// stream_audio PCM → speakers, on the audio thread, through a small ring buffer.
//
// The server paces audio in real time with ~100 ms of lead, so the ring normally holds
// about that much. Two clocks (the server's and the sound card's) drift apart slowly: when
// the ring grows past HIGH it is cut back to TARGET, so latency (and what a barge-in has
// left to play) stays bounded. A `flush` drops everything at once: the page sends it when
// the user starts speaking, so a barge-in is silent here before the server even answers.

const TARGET_S = 0.12;
const PRIME_S = 0.04; // after an underrun, wait for this much before playing again
const GAP_S = 0.05; // a quieter stretch than this ends a voiced span
const MAX_SPANS = 200;
const HIGH_S = 0.4;
const CAPACITY_S = 2;
const VOICED = 300 / 32768; // same threshold as the page's received-sample count

class PlaybackProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const { inputRate } = options.processorOptions;
    this.step = inputRate / sampleRate; // source samples per output sample
    this.ring = new Float32Array(Math.ceil(inputRate * CAPACITY_S));
    this.head = 0; // index of the oldest sample
    this.size = 0;
    this.frac = 0;
    this.target = Math.round(inputRate * TARGET_S);
    this.high = Math.round(inputRate * HIGH_S);
    this.prime = Math.round(inputRate * PRIME_S);
    this.priming = true;
    this.spans = []; // [start, end] context times when sound (not silence) was played
    this.stats = { played: 0, playedVoiced: 0, underruns: 0, trimmed: 0, flushed: 0 };
    this.quanta = 0;
    this.port.onmessage = (e) => {
      if (e.data.pcm) this.write(e.data.pcm);
      if (e.data.flush) {
        this.stats.flushed += this.size;
        this.size = 0;
        this.frac = 0;
        this.priming = true;
      }
    };
  }

  write(pcm) {
    const cap = this.ring.length;
    for (let i = 0; i < pcm.length; i++) {
      if (this.size === cap) {
        // Full: the oldest sample goes (the reader fell far behind; keep it live).
        this.head = (this.head + 1) % cap;
        this.size -= 1;
        this.stats.trimmed += 1;
      }
      this.ring[(this.head + this.size) % cap] = pcm[i];
      this.size += 1;
    }
    if (this.size > this.high) {
      const drop = this.size - this.target;
      this.head = (this.head + drop) % cap;
      this.size -= drop;
      this.stats.trimmed += drop;
    }
  }

  voiced(t) {
    const last = this.spans[this.spans.length - 1];
    if (last && t - last[1] <= GAP_S) last[1] = t;
    else {
      this.spans.push([t, t]);
      if (this.spans.length > MAX_SPANS) this.spans.shift();
    }
  }

  process(_inputs, outputs) {
    const out = outputs[0];
    const frames = out[0].length;
    const cap = this.ring.length;
    if (this.priming && this.size >= this.prime) this.priming = false;
    for (let i = 0; i < frames; i++) {
      let v = 0;
      if (!this.priming && this.size >= 2) {
        const a = this.ring[this.head];
        const b = this.ring[(this.head + 1) % cap];
        v = a + (b - a) * this.frac;
        this.frac += this.step;
        while (this.frac >= 1 && this.size > 0) {
          this.frac -= 1;
          this.head = (this.head + 1) % cap;
          this.size -= 1;
        }
        this.stats.played += 1;
        if (Math.abs(v) > VOICED) {
          this.stats.playedVoiced += 1;
          this.voiced(currentTime + i / sampleRate);
        }
      } else if (!this.priming) {
        // Ran dry mid-stream (a late network read): refill a little before going on, so
        // one late packet is one short gap rather than a crackle of many.
        this.stats.underruns += 1;
        this.priming = true;
      }
      for (let c = 0; c < out.length; c++) out[c][i] = v;
    }
    if (++this.quanta % 32 === 0) {
      this.port.postMessage({ ...this.stats, buffered: this.size, spans: this.spans });
    }
    return true;
  }
}

registerProcessor("voxwire-playback", PlaybackProcessor);
