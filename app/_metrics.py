"""Prometheus metrics (prometheus-client), one registry per app so tests stay isolated."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0)
INFERENCE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)


class Metrics:
    """The process's counters and gauges."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions = Gauge("voxwire_sessions", "Sessions alive now", registry=r)
        self.sessions_created = Counter("voxwire_sessions_created", "Sessions created", registry=r)
        self.sessions_reaped = Counter(
            "voxwire_sessions_reaped", "Idle sessions ended by the reaper", registry=r
        )
        self.tasks = Gauge(
            "voxwire_trio_tasks", "Trio tasks alive in the process (read at scrape)", registry=r
        )
        self.sessions_failed = Counter(
            "voxwire_sessions_failed", "Sessions ended by an unexpected error (a bug)", registry=r
        )
        self.malloc_trims = Counter(
            "voxwire_malloc_trims",
            "Periodic malloc_trim calls, by whether they returned memory to the OS",
            ["released"],
            registry=r,
        )
        self.sessions_rejected = Counter(
            "voxwire_sessions_rejected", "Session creations refused (cap or draining)", registry=r
        )
        self.bytes_in = Counter("voxwire_audio_in_bytes", "PCM bytes accepted", registry=r)
        self.bytes_out = Counter("voxwire_audio_out_bytes", "Stream bytes written", registry=r)
        self.upload_throttled = Counter(
            "voxwire_upload_throttled", "Uploads answered 429 (backpressure)", registry=r
        )
        self.upload_rejected = Counter(
            "voxwire_upload_rejected", "Uploads refused, by status", ["status"], registry=r
        )
        self.stream_readers = Gauge(
            "voxwire_stream_readers", "stream_audio responses open", registry=r
        )
        self.stream_underruns = Counter(
            "voxwire_stream_underruns",
            "Playout ticks late by more than the lead (the client may have starved)",
            registry=r,
        )
        self.stream_readers_dropped = Counter(
            "voxwire_stream_readers_dropped",
            "stream_audio readers ended because they read slower than real time",
            registry=r,
        )
        self.models_ready = Gauge(
            "voxwire_models_ready", "1 once the models are loaded and warm", registry=r
        )
        self.turn_latency = Histogram(
            "voxwire_turn_latency_seconds",
            "From the end of the user's speech to each stage of the reply",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "voxwire_inference_seconds",
            "Time per inference call in its worker thread (queueing excluded)",
            ["model"],
            buckets=INFERENCE_BUCKETS,
            registry=r,
        )
        self.scheduler_queued = Gauge(
            "voxwire_scheduler_queue_depth",
            "Inference jobs queued in the scheduler, by priority",
            ["priority"],
            registry=r,
        )
        self.scheduler_wait = Histogram(
            "voxwire_scheduler_wait_seconds",
            "Time an inference job waited in the scheduler's queue, by priority",
            ["priority"],
            buckets=INFERENCE_BUCKETS,
            registry=r,
        )
        self.scheduler_dropped = Counter(
            "voxwire_scheduler_dropped",
            "Inference jobs dropped before they ran (stale, cancelled, queue full)",
            ["reason"],
            registry=r,
        )
        self.scheduler_batch = Histogram(
            "voxwire_scheduler_batch_size",
            "Jobs run together in one batched model call",
            ["model"],
            buckets=(2, 3, 4, 6, 8),
            registry=r,
        )
        self.reply_gaps = Counter(
            "voxwire_reply_gaps",
            "Reply pieces queued after the reply's audio before them had all been played out "
            "(the listener may have heard a pause inside the reply)",
            registry=r,
        )
        self.partials_skipped = Counter(
            "voxwire_partials_skipped",
            "Partial decodes not started because the scheduler was behind",
            registry=r,
        )
        self.model_errors = Counter(
            "voxwire_model_errors", "Inference failures, by model", ["model"], registry=r
        )
        self.model_fallbacks = Counter(
            "voxwire_model_fallbacks",
            "Remote speech calls that failed and ran on the embedded model instead",
            ["model"],
            registry=r,
        )
        self.turns = Counter("voxwire_turns", "User turns committed", registry=r)
        self.responses = Counter(
            "voxwire_responses", "Responses finished, by status", ["status"], registry=r
        )
        self.barge_ins = Counter(
            "voxwire_barge_ins", "Responses interrupted by the user speaking", registry=r
        )
        self.false_interruptions = Counter(
            "voxwire_false_interruptions",
            "Replies paused by speech that was not a turn, then resumed",
            registry=r,
        )
