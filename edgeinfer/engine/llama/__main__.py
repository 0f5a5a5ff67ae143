"""The extra-buffer probe child, ``python -m edgeinfer.engine.llama probe MODEL THREADS
GPU_LAYERS``.

:func:`~edgeinfer.engine.llama.probe_argv` builds this command and ``engine/extra_buffers.py``
runs it before a model with ``extra_buffers = "auto"`` first loads on this machine: only a clean
exit reads as "extra buffers work".
"""

from __future__ import annotations

import faulthandler
import sys
from pathlib import Path

from edgeinfer.core.values import Sampling
from edgeinfer.engine.base import BatchItem, EngineParams
from edgeinfer.engine.llama import LlamaEngine


def probe(path: Path, threads: int, gpu_layers: int) -> None:
    """The probe child's work: load with extra buffers on, then run a prompt chunk and a few
    single-token steps (the two kernel shapes of a request). A crash ends this process only."""
    faulthandler.enable()  # a native crash leaves a stack trace on stderr for the verdict
    params = EngineParams(n_ctx=256, slots=1, n_batch=64, threads=threads, gpu_layers=gpu_layers)
    engine = LlamaEngine(path, params, extra_buffers=True)
    try:
        tokens = engine.tokenize(
            "The quick brown fox jumps over the lazy dog. " * 3, add_special=True
        )
        tokens = tokens[:48]
        engine.decode([BatchItem(0, i, t, i == len(tokens) - 1) for i, t in enumerate(tokens)])
        sampler = engine.new_sampler(Sampling(temperature=0.0))
        token = engine.sample(sampler, len(tokens) - 1)
        for pos in range(len(tokens), len(tokens) + 4):
            engine.decode([BatchItem(0, pos, token, True)])
            token = engine.sample(sampler, 0)
        engine.free_sampler(sampler)
    finally:
        engine.close()


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[1] != "probe":
        # anything but a clean run must not read as "extra buffers work"
        sys.exit("usage: python -m edgeinfer.engine.llama probe MODEL THREADS GPU_LAYERS")
    probe(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
