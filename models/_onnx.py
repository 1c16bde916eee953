"""One way to open an onnxruntime session: fixed thread counts, the providers chosen by
models/device.py (the models share the CPU, so none may take one thread per core)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import onnxruntime as ort

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

CPU = ("CPUExecutionProvider",)


def session(
    path: Path | str,
    *,
    threads: int = 1,
    providers: Sequence[str] = CPU,
    arena: bool = True,
) -> ort.InferenceSession:
    """An inference session on ``threads`` intra-op threads (one inter-op thread).

    ``arena=False`` uses plain malloc: for models whose input shapes vary with every call,
    onnxruntime's arena would keep growing and fragmenting (RSS creep in bench/soak.py).
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.enable_cpu_mem_arena = arena
    return ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
