"""Prometheus metrics (prometheus-client), one registry per app so tests stay isolated."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


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
