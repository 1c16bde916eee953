// voxwire in the browser: microphone → 16 kHz PCM16 POSTs (100 ms each, X-Sequence),
// stream_audio → fetch + ReadableStream → AudioWorklet ring buffer, events → EventSource.
//
// Connections (HTTP/1.1 allows 6 per origin): one stream GET, one EventSource, and at most
// one POST at a time (uploads are sent strictly in order), so three are ever in use.

const RATES = [8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000];
const INPUT_RATE = 16000;
const CHUNK_SAMPLES = INPUT_RATE / 10; // 100 ms
const MAX_PENDING_CHUNKS = 50; // 5 s of unsent audio: beyond that the oldest is dropped
const VOICED = 300; // |int16| above this counts as sound, not silence

const MARKED = new Set([
  "input_audio_buffer.speech_started",
  "input_audio_buffer.speech_stopped",
  "response.created",
  "response.done",
]);

const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

class ApiError extends Error {
  constructor(status, body) {
    const error = body && body.error ? body.error : {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || "http_error";
  }
}

async function api(method, url, { token, json, body, headers = {} } = {}) {
  const h = { ...headers };
  if (token) h.Authorization = `Bearer ${token}`;
  if (json !== undefined) {
    h["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  const res = await fetch(url, { method, headers: h, body, cache: "no-store" });
  if (!res.ok) throw new ApiError(res.status, await res.json().catch(() => null));
  return res;
}

// What the page shows and what the browser test reads (window.voxwire.stats).
const stats = {
  sessionId: null,
  state: "idle",
  uploadedChunks: 0,
  droppedChunks: 0,
  streamRate: 0,
  rxSamples: 0, // PCM samples received on stream_audio
  rxVoiced: 0, // ... of which not silence
  played: 0, // samples the worklet played (at the AudioContext rate)
  playedVoiced: 0,
  flushed: 0, // samples dropped by barge-in flushes
  underruns: 0,
  buffered: 0,
  streamGaps: 0, // reconnects the server could not resume (its buffer had moved on)
  streamResumes: 0, // reconnects that resumed where the last response left off
  finals: [], // final user transcripts
  replies: [], // {id, text, status}
  latencies: [], // response.done latency objects
  spans: [], // [start, end] AudioContext times when reply sound was played
  marks: [], // {type, t}: when turn events arrived, on the same clock as spans
  errors: [], // error events and failures
};

class Conversation {
  constructor() {
    this.ctx = null;
    this.session = null;
    this.capture = null;
    this.playback = null;
    this.mic = null;
    this.events = null;
    this.streamAbort = null;
    this.pending = []; // Int16Array chunks, or "commit" markers, in send order
    this.seq = 0;
    this.pumping = false;
    this.active = false;
    this.pushToTalk = false;
    this.userLines = new Map(); // item_id → <li>
    this.replyLines = new Map(); // response_id → <li>
    this.turns = 0;
    this.streamMs = null; // stream timeline received so far (ms); null before the first GET
  }

  async start() {
    this.pushToTalk = $("turns").value === "ptt";
    // Created inside the click handler: browsers only let a user gesture start audio.
    this.ctx = new AudioContext({ latencyHint: "interactive" });
    await this.ctx.resume();
    await Promise.all([
      this.ctx.audioWorklet.addModule("/web/capture-worklet.js"),
      this.ctx.audioWorklet.addModule("/web/playback-worklet.js"),
    ]);
    // The stream comes at the sound card's rate when the server offers it: no resampling here.
    const outputRate = RATES.includes(this.ctx.sampleRate) ? this.ctx.sampleRate : 24000;
    const config = {
      responder: $("responder").value,
      instructions: $("instructions").value,
      input_sample_rate: INPUT_RATE,
      output_sample_rate: outputRate,
    };
    if (this.pushToTalk) config.turn_detection = null;
    const res = await api("POST", "/api/sessions", { json: config });
    this.session = await res.json();
    stats.sessionId = this.session.id;
    this.active = true;

    this.playback = new AudioWorkletNode(this.ctx, "voxwire-playback", {
      numberOfInputs: 0,
      outputChannelCount: [1],
      processorOptions: { inputRate: outputRate },
    });
    this.playback.port.onmessage = (e) => Object.assign(stats, {
      played: e.data.played,
      playedVoiced: e.data.playedVoiced,
      flushed: e.data.flushed,
      underruns: e.data.underruns,
      buffered: e.data.buffered,
      spans: e.data.spans,
    });
    this.playback.connect(this.ctx.destination);

    // Listen before talking: the stream and the events are open before any audio goes up.
    this.openEvents();
    this.streamLoop();

    this.mic = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
    const source = this.ctx.createMediaStreamSource(this.mic);
    this.capture = new AudioWorkletNode(this.ctx, "voxwire-capture", {
      numberOfOutputs: 0,
      processorOptions: { targetRate: INPUT_RATE, chunkSamples: CHUNK_SAMPLES },
    });
    this.capture.port.onmessage = (e) => this.onCapture(e.data);
    this.capture.port.postMessage({ enabled: !this.pushToTalk });
    source.connect(this.capture);
    setState(this.pushToTalk ? "idle-ptt" : "listening");
  }

  async stop() {
    this.active = false;
    if (this.mic) this.mic.getTracks().forEach((t) => t.stop());
    if (this.events) this.events.close();
    if (this.streamAbort) this.streamAbort.abort();
    if (this.session) {
      await api("DELETE", this.session.urls.session, { token: this.session.token }).catch(() => {});
    }
    if (this.ctx) await this.ctx.close();
    setState("idle");
  }

  // ---- upload -------------------------------------------------------------------------

  onCapture(msg) {
    if (msg.level !== undefined) $("level").value = Math.min(1, msg.level * 2);
    if (msg.pcm) this.enqueue(msg.pcm);
    if (msg.flushed && this.pushToTalk) this.enqueue("commit");
  }

  enqueue(item) {
    if (!this.active) return;
    this.pending.push(item);
    while (this.pending.length > MAX_PENDING_CHUNKS) {
      // The network cannot keep up: drop the oldest audio (never a commit) and say so.
      const i = this.pending.findIndex((x) => x !== "commit");
      if (i < 0) break;
      this.pending.splice(i, 1);
      stats.droppedChunks += 1;
    }
    this.pump();
  }

  // One request in flight, in order: X-Sequence makes a resend after a lost answer harmless.
  async pump() {
    if (this.pumping) return;
    this.pumping = true;
    try {
      while (this.active && this.pending.length > 0) {
        const item = this.pending[0];
        try {
          if (item === "commit") {
            await api("POST", this.session.urls.events, {
              token: this.session.token,
              json: { type: "input_audio_buffer.commit" },
            });
          } else {
            await api("POST", this.session.urls.upload_audio, {
              token: this.session.token,
              headers: { "Content-Type": "application/octet-stream", "X-Sequence": String(this.seq) },
              body: item,
            });
            this.seq += 1;
            stats.uploadedChunks += 1;
          }
          this.pending.shift();
        } catch (err) {
          if (err instanceof ApiError && err.status === 429) {
            await sleep(1000); // the session is behind: back off, resend the same chunk
          } else if (err instanceof ApiError) {
            // 404 (session gone), 409, 413...: the server has said why; sending on is useless.
            fail(`upload refused: ${err.code}: ${err.message}`);
            await this.stop();
          } else {
            await sleep(500); // network: resend the same sequence number
          }
        }
      }
    } finally {
      this.pumping = false;
    }
  }

  setTalking(on) {
    if (!this.capture || !this.pushToTalk) return;
    if (on) {
      this.capture.port.postMessage({ enabled: true });
      setState("user-speaking");
    } else {
      this.capture.port.postMessage({ enabled: false, flush: true });
      setState("thinking");
    }
  }

  // ---- stream_audio -------------------------------------------------------------------

  async streamLoop() {
    let backoff = 250;
    while (this.active) {
      this.streamAbort = new AbortController();
      try {
        await this.readStream(this.streamAbort.signal);
        backoff = 250;
      } catch (err) {
        if (!this.active) return;
        if (err instanceof ApiError && err.status === 404) {
          fail("the session has ended");
          return;
        }
      }
      if (!this.active) return;
      await sleep(backoff); // ended (a drop, a proxy): reconnect and resume (?from_ms=)
      backoff = Math.min(backoff * 2, 5000);
    }
  }

  // Resume: the page remembers how far along the stream timeline it has received
  // (this.streamMs) and reconnects with ?from_ms=, so a dropped connection costs neither a
  // gap nor a repeat while the server still holds that part (3 s).
  async readStream(signal) {
    const { urls, token } = this.session;
    const url = this.streamMs === null ? urls.stream_audio
      : `${urls.stream_audio}?from_ms=${Math.floor(this.streamMs)}`;
    const res = await fetch(url, {
      headers: { Authorization: `Bearer ${token}` },
      cache: "no-store",
      signal,
    });
    if (!res.ok) throw new ApiError(res.status, await res.json().catch(() => null));
    const position = Number(res.headers.get("X-Stream-Position-Ms") ?? 0);
    // A live start begins with padding silence: played (it is the lead), but not part of
    // the timeline. A resume may begin up to one frame before what we have: dropped.
    let padding = Number(res.headers.get("X-Stream-Padding-Bytes") ?? 0);
    let skip = 0;
    const resumed = res.headers.get("X-Stream-Resumed") === "true";
    if (this.streamMs !== null && !resumed) stats.streamGaps += 1;
    if (resumed) stats.streamResumes += 1;
    let rate = 0;
    const reader = res.body.getReader();
    let head = new Uint8Array(0);
    let carry = null;
    let headerDone = false;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      let bytes = value;
      if (!headerDone) {
        head = concat(head, bytes);
        if (head.length < 44) continue;
        const view = new DataView(head.buffer, head.byteOffset, 44);
        if (view.getUint32(0, false) !== 0x52494646) throw new Error("stream_audio: not a WAV");
        rate = view.getUint32(24, true);
        stats.streamRate = rate;
        bytes = head.subarray(44);
        headerDone = true;
        if (resumed) skip = 2 * Math.round(((this.streamMs - position) * rate) / 1000);
        this.streamMs = position;
      }
      if (skip > 0) {
        const n = Math.min(skip, bytes.length);
        skip -= n;
        this.streamMs += (n / 2 / rate) * 1000;
        bytes = bytes.subarray(n);
      }
      if (carry) {
        bytes = concat(carry, bytes);
        carry = null;
      }
      if (bytes.length % 2) {
        carry = bytes.slice(bytes.length - 1);
        bytes = bytes.subarray(0, bytes.length - 1);
      }
      if (bytes.length === 0) continue;
      const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
      const pcm = new Float32Array(bytes.length / 2);
      let voiced = 0;
      for (let i = 0; i < pcm.length; i++) {
        const s = view.getInt16(2 * i, true);
        if (s > VOICED || s < -VOICED) voiced += 1;
        pcm[i] = s / 32768;
      }
      stats.rxSamples += pcm.length;
      const unpadded = Math.max(0, pcm.length - padding / 2);
      padding = Math.max(0, padding - 2 * pcm.length);
      this.streamMs += (unpadded / rate) * 1000;
      stats.rxVoiced += voiced;
      this.playback.port.postMessage({ pcm }, [pcm.buffer]);
    }
  }

  // ---- events -------------------------------------------------------------------------

  openEvents() {
    const { urls, token } = this.session;
    // EventSource cannot send headers: this GET is one of the two that take ?token=.
    // It reconnects by itself with Last-Event-ID, and the server resumes after that id.
    this.events = new EventSource(`${urls.events}?token=${encodeURIComponent(token)}`);
    this.events.onmessage = (e) => this.onEvent(JSON.parse(e.data));
  }

  onEvent(ev) {
    if (MARKED.has(ev.type)) stats.marks.push({ type: ev.type, t: this.ctx.currentTime });
    switch (ev.type) {
      case "input_audio_buffer.speech_started":
        // Barge-in, heard at once: drop what the ring holds; the server flushes its side.
        this.playback.port.postMessage({ flush: true });
        this.userLine(ev.item_id);
        setState("user-speaking");
        break;
      case "input_audio_buffer.speech_stopped":
        setState("thinking");
        break;
      case "conversation.item.input_audio_transcription.delta": {
        const li = this.userLine(ev.item_id);
        li.querySelector(".text").textContent += ev.delta;
        break;
      }
      case "conversation.item.input_audio_transcription.completed": {
        const li = this.userLine(ev.item_id);
        li.classList.remove("partial");
        li.querySelector(".text").textContent = ev.transcript;
        stats.finals.push(ev.transcript);
        if (!this.pushToTalk && stats.state === "thinking") setState("listening");
        break;
      }
      case "response.created":
        this.replyLine(ev.response.id);
        setState("assistant-speaking");
        break;
      // The reply's words: spoken (the transcript of its audio) or text-only responses.
      case "response.output_audio_transcript.delta":
      case "response.output_text.delta":
        this.replyLine(ev.response_id).querySelector(".text").textContent += ev.delta;
        break;
      case "response.done":
        this.onResponseDone(ev.response);
        break;
      case "error":
        stats.errors.push(ev.error);
        showError(`${ev.error.code}: ${ev.error.message}`);
        break;
      default:
        break;
    }
    renderStats();
  }

  userLine(itemId) {
    let li = this.userLines.get(itemId);
    if (!li) {
      li = logLine("user", "You");
      li.classList.add("partial");
      this.userLines.set(itemId, li);
    }
    return li;
  }

  replyLine(responseId) {
    let li = this.replyLines.get(responseId);
    if (!li) {
      li = logLine("assistant", "Assistant");
      this.replyLines.set(responseId, li);
    }
    return li;
  }

  onResponseDone(r) {
    const li = this.replyLine(r.id);
    li.classList.add(r.status);
    stats.replies.push({ id: r.id, status: r.status, text: li.querySelector(".text").textContent });
    const lat = r.latency || {};
    stats.latencies.push(lat);
    this.turns += 1;
    const row = document.createElement("tr");
    for (const v of [this.turns, r.status, lat.transcript_ms, lat.first_token_ms,
      lat.first_audio_byte_ms, r.audio_ms]) {
      const td = document.createElement("td");
      td.textContent = v === null || v === undefined ? "–" : String(typeof v === "number" ? Math.round(v) : v);
      row.append(td);
    }
    document.querySelector("#latency tbody").prepend(row);
    if (lat.first_audio_byte_ms !== null && lat.first_audio_byte_ms !== undefined) {
      $("latency-last").textContent =
        `The reply began ${Math.round(lat.first_audio_byte_ms)} ms after you stopped talking.`;
    }
    if (stats.state === "assistant-speaking") setState(this.pushToTalk ? "idle-ptt" : "listening");
  }

  async applySettings() {
    if (!this.active) return;
    try {
      await api("PATCH", this.session.urls.session, {
        token: this.session.token,
        json: { responder: $("responder").value, instructions: $("instructions").value },
      });
    } catch (err) {
      showError(`settings refused: ${err.message}`);
    }
  }
}

// ---- page helpers ---------------------------------------------------------------------

function concat(a, b) {
  const out = new Uint8Array(a.length + b.length);
  out.set(a, 0);
  out.set(b, a.length);
  return out;
}

const STATE_TEXT = {
  "idle": "Not connected",
  "idle-ptt": "Hold \u201cHold to talk\u201d (or the space bar) to speak",
  "listening": "Listening",
  "user-speaking": "You are speaking",
  "thinking": "Thinking",
  "assistant-speaking": "Assistant speaking",
};

function setState(state) {
  stats.state = state;
  $("state").dataset.state = state;
  $("state-text").textContent = STATE_TEXT[state];
}

function logLine(cls, who) {
  const li = document.createElement("li");
  li.className = cls;
  const w = document.createElement("span");
  w.className = "who";
  w.textContent = `${who}:`;
  const t = document.createElement("span");
  t.className = "text";
  li.append(w, t);
  $("log").append(li);
  li.scrollIntoView({ block: "nearest" });
  return li;
}

function showError(text) {
  $("error").hidden = false;
  $("error").textContent = text;
}

function fail(text) {
  stats.errors.push({ code: "client", message: text });
  showError(text);
}

function renderStats() {
  $("stats").textContent =
    `session ${stats.sessionId ?? "–"} · sent ${stats.uploadedChunks} × 100 ms` +
    (stats.droppedChunks ? ` (${stats.droppedChunks} dropped)` : "") +
    ` · received ${(stats.rxSamples / (stats.streamRate || 1)).toFixed(1)} s at ${stats.streamRate} Hz` +
    ` · buffered ${stats.buffered} · underruns ${stats.underruns}`;
}

// ---- wiring ---------------------------------------------------------------------------

let conversation = null;
const talk = $("talk");

async function toggle() {
  talk.disabled = true;
  try {
    if (conversation && conversation.active) {
      await conversation.stop();
      conversation = null;
      talk.textContent = "Start talking";
      talk.setAttribute("aria-pressed", "false");
      ptt.hidden = true;
    } else {
      $("error").hidden = true;
      conversation = new Conversation();
      window.voxwire.conversation = conversation;
      await conversation.start();
      talk.textContent = "Stop";
      ptt.hidden = !conversation.pushToTalk;
      talk.setAttribute("aria-pressed", "true");
    }
  } catch (err) {
    fail(`could not start: ${err.message}`);
    if (conversation) await conversation.stop();
    conversation = null;
    talk.textContent = "Start talking";
  } finally {
    talk.disabled = false;
  }
}

talk.addEventListener("click", toggle);

// Push-to-talk: hold the button or the space bar; releasing commits the turn.
const ptt = $("ptt");
function hold(on) {
  if (!conversation || !conversation.pushToTalk) return;
  ptt.classList.toggle("held", on);
  conversation.setTalking(on);
}
ptt.addEventListener("pointerdown", () => hold(true));
ptt.addEventListener("pointerup", () => hold(false));
ptt.addEventListener("pointerleave", () => ptt.classList.contains("held") && hold(false));
document.addEventListener("keydown", (e) => {
  if (e.code === "Space" && !e.repeat && conversation && conversation.pushToTalk) {
    e.preventDefault();
    hold(true);
  }
});
document.addEventListener("keyup", (e) => {
  if (e.code === "Space" && conversation && conversation.pushToTalk) hold(false);
});
$("responder").addEventListener("change", () => conversation && conversation.applySettings());
$("instructions").addEventListener("change", () => conversation && conversation.applySettings());
window.addEventListener("pagehide", () => conversation && conversation.stop());

window.voxwire = { stats, conversation: null };
setState("idle");
renderStats();
