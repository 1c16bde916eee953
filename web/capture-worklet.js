// Microphone → 16 kHz PCM16 chunks, on the audio thread.
//
// Browsers give no streaming resampler: OfflineAudioContext works on whole buffers only, and
// an AudioContext opened at 16 kHz is refused by some browsers for a microphone at another
// rate. So this downsamples itself: a windowed-sinc low-pass (anti-aliasing below the new
// Nyquist) followed by linear interpolation at the output instants. 63 taps at 48 kHz cost
// ~8k multiply-adds per 128-sample render quantum.

const TAPS = 63;

function lowPass(cutoff) {
  // cutoff in cycles per input sample; Blackman window.
  const taps = new Float32Array(TAPS);
  const mid = (TAPS - 1) / 2;
  let sum = 0;
  for (let i = 0; i < TAPS; i++) {
    const x = i - mid;
    const sinc = x === 0 ? 2 * cutoff : Math.sin(2 * Math.PI * cutoff * x) / (Math.PI * x);
    const w = 0.42 - 0.5 * Math.cos((2 * Math.PI * i) / (TAPS - 1)) +
      0.08 * Math.cos((4 * Math.PI * i) / (TAPS - 1));
    taps[i] = sinc * w;
    sum += taps[i];
  }
  for (let i = 0; i < TAPS; i++) taps[i] /= sum; // unity gain at DC
  return taps;
}

class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const { targetRate, chunkSamples } = options.processorOptions;
    this.step = sampleRate / targetRate; // input samples per output sample
    // 0.85 × the output Nyquist: speech keeps its consonants, aliasing stays small.
    this.taps = sampleRate > targetRate ? lowPass((0.85 * targetRate) / 2 / sampleRate) : null;
    this.ring = new Float32Array(TAPS);
    this.ringAt = 0;
    this.count = 0; // filtered input samples seen
    this.next = 0; // input position of the next output sample
    this.prev = 0; // the previous filtered sample
    this.chunkSamples = chunkSamples;
    this.chunk = new Int16Array(chunkSamples);
    this.fill = 0;
    this.enabled = true;
    this.peak = 0;
    this.quanta = 0;
    this.port.onmessage = (e) => {
      if ("enabled" in e.data) this.enabled = e.data.enabled;
      if (e.data.flush) this.flush();
    };
  }

  // Send what has been captured so far (push-to-talk release) without waiting for a full chunk.
  flush() {
    if (this.fill > 0) {
      const part = this.chunk.slice(0, this.fill);
      this.port.postMessage({ pcm: part }, [part.buffer]);
      this.fill = 0;
    }
    this.port.postMessage({ flushed: true });
  }

  push(v) {
    const s = Math.max(-1, Math.min(1, v));
    this.chunk[this.fill++] = s < 0 ? s * 0x8000 : s * 0x7fff;
    if (this.fill === this.chunkSamples) {
      this.port.postMessage({ pcm: this.chunk }, [this.chunk.buffer]);
      this.chunk = new Int16Array(this.chunkSamples);
      this.fill = 0;
    }
  }

  filter(x) {
    if (this.taps === null) return x;
    this.ring[this.ringAt] = x;
    let acc = 0;
    let j = this.ringAt;
    for (let k = 0; k < TAPS; k++) {
      acc += this.taps[k] * this.ring[j];
      j = j === 0 ? TAPS - 1 : j - 1;
    }
    this.ringAt = (this.ringAt + 1) % TAPS;
    return acc;
  }

  process(inputs) {
    const input = inputs[0];
    if (!input || input.length === 0 || !this.enabled) return true;
    const frames = input[0].length;
    for (let i = 0; i < frames; i++) {
      let x = input[0][i];
      if (input.length > 1) {
        for (let c = 1; c < input.length; c++) x += input[c][i];
        x /= input.length;
      }
      const peak = Math.abs(x);
      if (peak > this.peak) this.peak = peak;
      const y = this.filter(x);
      // Output instants that fall between the previous filtered sample and this one.
      while (this.next <= this.count) {
        const frac = this.next - (this.count - 1);
        this.push(this.prev + (y - this.prev) * frac);
        this.next += this.step;
      }
      this.prev = y;
      this.count += 1;
    }
    if (++this.quanta % 16 === 0) {
      this.port.postMessage({ level: this.peak });
      this.peak = 0;
    }
    return true;
  }
}

registerProcessor("voxwire-capture", CaptureProcessor);
