"""What a keep-alive timer costs per response: hypercorn's against voxwire's (a figure).

Not a test. hypercorn's ``TrioSingleTask`` stops the connection's idle task when a request
comes and starts a new one when its response ends (``nursery.start``); voxwire's
``IdleDeadline`` (app/_server.py) keeps one watcher per connection and only moves its
cancel-scope deadline. Prints the CPU time of each per request/response cycle, in a loop.

    .venv/bin/python bench/idle_timer.py
"""

from __future__ import annotations

import math
import time

import trio
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.worker_context import TrioSingleTask

CYCLES = 20000


async def _idle() -> None:
    await trio.sleep(75)


async def main() -> None:
    task = TrioSingleTask()
    async with TaskGroup() as group:
        t0 = time.perf_counter()
        for _ in range(CYCLES):
            await task.stop()  # a request came
            await task.restart(group, _idle)  # its response ended
        spawn = (time.perf_counter() - t0) / CYCLES
        await task.stop()
    scope = trio.CancelScope()
    t0 = time.perf_counter()
    for _ in range(CYCLES):
        scope.deadline = math.inf
        scope.deadline = trio.current_time() + 75
    move = (time.perf_counter() - t0) / CYCLES
    print(f"hypercorn TrioSingleTask stop + restart: {spawn * 1e6:.1f} us per response")
    print(f"voxwire IdleDeadline (two deadline moves): {move * 1e6:.2f} us per response")


if __name__ == "__main__":
    trio.run(main)
