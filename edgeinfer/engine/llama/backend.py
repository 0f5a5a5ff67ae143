"""Process-wide llama.cpp state: the backend initialised once, its log routed into ours, and the
one thread that runs every CPU model's ``llama_decode``.

Every way into llama.cpp (an engine or vocab-only load, ``quantize``, ``system_info``) calls
:func:`init_backend` first; :class:`~edgeinfer.engine.llama.LlamaEngine` asks :func:`cpu_compute`
for the shared ``ggml-cpu`` thread. One lock, ``_init_lock``, guards both.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import llama_cpp.llama_cpp as C

log = logging.getLogger("edgeinfer.llama")

# ggml_log_level: NONE=0, DEBUG=1, INFO=2, WARN=3, ERROR=4, CONT=5
_GGML_LEVELS = {3: logging.WARNING, 4: logging.ERROR}
_init_lock = threading.Lock()
_initialised = False
_compute: ThreadPoolExecutor | None = None


def cpu_compute() -> ThreadPoolExecutor:
    """The one thread that runs every CPU model's ``llama_decode`` in this process.

    ggml's CPU backend computes a graph with an OpenMP team, and libgomp keeps one team per
    calling thread. The daemon runs each model in a runner process of its own (one team each,
    ``pool/process.py`` tunes how long an idle team spins); this keeps one team per process
    where several engines share one (tests, benchmarks, in-process runners): with one team per
    runner thread there were more workers than cores, libgomp throttled their spin-wait, and
    a daemon moving requests between tiny, small and large took 1.32x its single-model time.
    GPU-offloaded models keep decoding on their own runner thread, so several models can keep
    a GPU busy together.
    """
    global _compute
    with _init_lock:
        if _compute is None:
            _compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ggml-cpu")
        return _compute


@C.llama_log_callback  # type: ignore[untyped-decorator]
def _log_callback(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
    # llama.cpp logs chattily at INFO on every load; keep warnings and errors, drop the rest.
    if level in _GGML_LEVELS:
        log.log(_GGML_LEVELS[level], text.decode("utf-8", "replace").rstrip())


def init_backend() -> None:
    """Initialise llama.cpp's backend and route its log, once per process."""
    global _initialised
    with _init_lock:
        if not _initialised:
            C.llama_log_set(_log_callback, ctypes.c_void_p(0))
            C.llama_backend_init()
            _initialised = True


def physical_cores() -> int:
    """The default thread count for decoding and quantizing (logical cores halved past four)."""
    return max(1, (os.cpu_count() or 2) // (2 if (os.cpu_count() or 1) > 4 else 1))
