"""Handing freed native memory back to the OS (glibc only; a no-op elsewhere).

The model threads (onnxruntime, CTranslate2) allocate and free large working buffers on
every call. glibc keeps what they free inside its heaps unless the top of a heap is free,
so the process's RSS creeps up over hours although nothing leaks: in the soak the Python
heap stayed flat while RSS rose, and one ``malloc_trim(0)`` took it from 847 to 593 MB
(bench/README.md). Two arenas instead of eight per core and a periodic trim keep it flat.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger(__name__)

_M_ARENA_MAX = -8  # glibc's mallopt parameter number


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    # musl and macOS libc have neither call.
    if not (hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt")):
        return None
    return libc


_LIBC = _glibc()


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas; call before threads start. Returns whether it applied.

    glibc gives each allocating thread its own arena (up to eight per core), and the model
    threads' short-lived buffers fragment every one of them.
    """
    if _LIBC is None:
        return False
    return bool(_LIBC.mallopt(_M_ARENA_MAX, arenas))


def malloc_trim() -> bool:
    """Return free pages in every glibc arena to the OS. Returns whether any were released.

    Blocking (it walks the arenas, a few ms on a large heap): run it in a thread.
    """
    if _LIBC is None:
        return False
    return bool(_LIBC.malloc_trim(0))


async def trim_periodically(
    interval_s: float,
    *,
    trim: Callable[[], bool] = malloc_trim,
    on_trim: Callable[[bool], None] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Call ``trim`` in a worker thread every ``interval_s`` seconds, forever.

    ``interval_s <= 0`` or a libc without ``malloc_trim`` means off: the task returns.
    """
    task_status.started()
    if interval_s <= 0 or (trim is malloc_trim and _LIBC is None):
        return
    while True:
        await trio.sleep(interval_s)
        released = await trio.to_thread.run_sync(trim)
        if on_trim is not None:
            on_trim(released)
