"""Python client for voxwire: real-time voice over plain HTTP/1.1.

``VoxwireClient``/``Session`` are the async (trio) API, ``Client``/``SyncSession`` the
blocking one; both speak the same HTTP API (docs/api.md) through one sans-IO core.
"""

from voxwire_client._async import AudioStream, EventStream, Session, VoxwireClient
from voxwire_client._core import (
    ALLOWED_RATES,
    NO_RECONNECT,
    Event,
    ReconnectPolicy,
    VoxwireError,
)
from voxwire_client._sync import Client, SyncAudioStream, SyncEventStream, SyncSession

__all__ = [
    "ALLOWED_RATES",
    "NO_RECONNECT",
    "AudioStream",
    "Client",
    "Event",
    "EventStream",
    "ReconnectPolicy",
    "Session",
    "SyncAudioStream",
    "SyncEventStream",
    "SyncSession",
    "VoxwireClient",
    "VoxwireError",
]
