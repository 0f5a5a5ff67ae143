"""The llama.cpp engine, on llama-cpp-python's low-level C bindings.

This package is the only place that imports ``llama_cpp``. :class:`LlamaEngine` uses one context
with ``slots`` sequences (``n_seq_max``) so the runner can put one token of every generating
request, plus prompt chunks, into a single ``llama_decode`` call. Everything here runs on the
model's runner thread, except that CPU models hand their ``llama_decode`` to one shared compute
thread (see :func:`~edgeinfer.engine.llama.backend.cpu_compute`).

Here: the engine, the :class:`Loader` that decides how each model loads, and the tools beside
them (``quantize``, ``llama_defaults``, ``system_info``). Beside it: ``backend`` (process-wide
llama.cpp state), ``vocab`` (tokenizer calls and the vocab-only load), ``sampler`` (sampler
chains) and ``__main__`` (the extra-buffer probe child).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import math
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import llama_cpp.llama_cpp as C
import numpy as np

from edgeinfer.core.values import Sampling, TokenLogprob
from edgeinfer.engine.base import BatchItem, EngineParams
from edgeinfer.engine.extra_buffers import ExtraBuffers, VerdictStore, files_digest
from edgeinfer.engine.llama.backend import cpu_compute, init_backend, physical_cores
from edgeinfer.engine.llama.sampler import Sampler, build_sampler
from edgeinfer.engine.llama.vocab import LlamaVocab, VocabCalls
from edgeinfer.errors import ContextLengthExceeded, EngineError, ModelUnavailable

_FTYPES = {
    "Q4_0": C.LLAMA_FTYPE_MOSTLY_Q4_0,
    "Q4_1": C.LLAMA_FTYPE_MOSTLY_Q4_1,
    "Q5_0": C.LLAMA_FTYPE_MOSTLY_Q5_0,
    "Q5_1": C.LLAMA_FTYPE_MOSTLY_Q5_1,
    "Q8_0": C.LLAMA_FTYPE_MOSTLY_Q8_0,
    "Q4_K_M": C.LLAMA_FTYPE_MOSTLY_Q4_K_M,
    "Q5_K_M": C.LLAMA_FTYPE_MOSTLY_Q5_K_M,
    "Q6_K": C.LLAMA_FTYPE_MOSTLY_Q6_K,
}
_KV_TYPES = {"f16": C.GGML_TYPE_F16, "q8_0": C.GGML_TYPE_Q8_0}


class LlamaEngine(VocabCalls):
    """One GGUF model and one multi-sequence context. See :class:`edgeinfer.engine.Engine`."""

    def __init__(
        self,
        path: Path,
        params: EngineParams,
        *,
        extra_buffers: bool = False,
        alone: bool = False,
    ) -> None:
        """Load ``path``. ``extra_buffers`` is the resolved ``params.extra_buffers`` (see
        :class:`Loader`): whether llama.cpp may repack weights into its extra buffer types.
        ``alone``: the only engine of its process (a runner process), so it decodes on its own
        thread instead of handing each step to the shared ``ggml-cpu`` thread."""
        init_backend()
        self.params = params
        mparams = C.llama_model_default_params()
        mparams.n_gpu_layers = params.gpu_layers if params.gpu_layers >= 0 else 999
        mparams.use_extra_bufts = extra_buffers
        self._model = C.llama_model_load_from_file(os.fsencode(path), mparams)
        if not self._model:
            raise ModelUnavailable(f"llama.cpp could not load {path} (not a valid GGUF model?)")
        self._vocab = C.llama_model_get_vocab(self._model)
        threads = params.threads or physical_cores()
        cparams = C.llama_context_default_params()
        cparams.n_ctx = params.n_ctx * params.slots
        cparams.n_batch = params.n_batch
        cparams.n_ubatch = min(params.n_ubatch, params.n_batch)
        cparams.type_k = _KV_TYPES[params.kv_type]
        cparams.type_v = _KV_TYPES[params.kv_type]
        cparams.n_seq_max = params.slots
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.no_perf = True
        cparams.kv_unified = False
        cparams.flash_attn_type = {
            "auto": C.LLAMA_FLASH_ATTN_TYPE_AUTO,
            "on": C.LLAMA_FLASH_ATTN_TYPE_ENABLED,
            "off": C.LLAMA_FLASH_ATTN_TYPE_DISABLED,
        }[params.flash_attn]
        self._ctx = C.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            C.llama_model_free(self._model)
            raise ModelUnavailable(f"llama.cpp could not create a context for {path}")
        self._mem = C.llama_get_memory(self._ctx)
        self._batch = C.llama_batch_init(params.n_batch, 0, 1)
        on_cpu = params.gpu_layers == 0 or not C.llama_supports_gpu_offload()
        self._compute = cpu_compute() if on_cpu and not alone else None
        self._n_vocab = C.llama_vocab_n_tokens(self._vocab)
        self._pieces: dict[int, bytes] = {}
        self.info = self._info(
            C.llama_model_size(self._model),
            can_shift=bool(C.llama_memory_can_shift(self._mem)),
            extra_buffers=extra_buffers,
        )

    def decode(self, batch: Sequence[BatchItem]) -> None:
        if len(batch) > self.params.n_batch:
            # llama_decode aborts the whole process past n_batch; never let it get there.
            raise EngineError(f"batch of {len(batch)} tokens exceeds n_batch {self.params.n_batch}")
        b = self._batch
        for i, item in enumerate(batch):
            b.token[i] = item.token
            b.pos[i] = item.pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = item.seq
            b.logits[i] = 1 if item.logits else 0
        b.n_tokens = len(batch)
        if self._compute is None:
            rc = C.llama_decode(self._ctx, b)
        else:
            rc = self._compute.submit(C.llama_decode, self._ctx, b).result()
        if rc == 1:
            raise ContextLengthExceeded("no room left in the KV cache for this batch")
        if rc != 0:
            raise EngineError(f"llama_decode failed with code {rc}")

    def new_sampler(self, sampling: Sampling) -> Sampler:
        return build_sampler(self._vocab, self._n_vocab, sampling)

    def sample(self, sampler: Any, batch_index: int) -> int:
        if sampler.chain is None:
            ptr = C.llama_get_logits_ith(self._ctx, batch_index)
            return int(np.ctypeslib.as_array(ptr, shape=(self._n_vocab,)).argmax())
        return int(C.llama_sampler_sample(sampler.chain, self._ctx, batch_index))

    def logprobs(self, batch_index: int, token: int, top_n: int) -> TokenLogprob:
        ptr = C.llama_get_logits_ith(self._ctx, batch_index)
        # On llama.cpp's float32 buffer, summing in float64: 0.1 ms per token on a 152k
        # vocabulary (the exact entropy included), which a cascade's draft pays on every token
        # of its head. Alternatives cost 1 ms more (the partition), so only when asked for.
        logits = np.ctypeslib.as_array(ptr, shape=(self._n_vocab,))
        peak = float(logits.max())
        weights = np.exp(logits - peak)
        total = float(weights.sum(dtype=np.float64))
        logz = peak + math.log(total)
        entropy = logz - float(np.dot(weights, logits)) / total  # H = log Z - E[logit]
        top: tuple[tuple[bytes, float], ...] = ()
        if top_n > 0:
            best = np.argpartition(logits, -top_n)[-top_n:]
            best = best[np.argsort(-logits[best])]
            top = tuple((self.token_to_piece(int(t)), float(logits[t]) - logz) for t in best)
        lp = float(logits[token]) - logz
        return TokenLogprob(self.token_to_piece(token), lp, top, max(entropy, 0.0))

    def free_sampler(self, sampler: Any) -> None:
        if sampler.chain:
            C.llama_sampler_free(sampler.chain)
            sampler.chain = None

    def seq_rm(self, seq: int, start: int, end: int = -1) -> None:
        C.llama_memory_seq_rm(self._mem, seq, start, end)

    def seq_cp(self, src: int, dst: int) -> None:
        C.llama_memory_seq_rm(self._mem, dst, -1, -1)
        C.llama_memory_seq_cp(self._mem, src, dst, -1, -1)

    def seq_shift(self, seq: int, start: int, delta: int) -> None:
        C.llama_memory_seq_add(self._mem, seq, start, -1, delta)

    def state_get(self, seq: int) -> bytes:
        size = C.llama_state_seq_get_size(self._ctx, seq)
        buf = (ctypes.c_uint8 * size)()
        written = C.llama_state_seq_get_data(self._ctx, buf, size, seq)
        return bytes(buf)[:written]

    def state_set(self, seq: int, state: bytes) -> None:
        C.llama_memory_seq_rm(self._mem, seq, -1, -1)
        buf = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        if C.llama_state_seq_set_data(self._ctx, buf, len(state), seq) == 0:
            raise EngineError("llama.cpp refused a saved sequence state")

    def close(self) -> None:
        if self._ctx:
            C.llama_batch_free(self._batch)
            C.llama_free(self._ctx)
            C.llama_model_free(self._model)
            self._ctx = None
            self._model = None


def library_files() -> list[Path]:
    """The llama.cpp shared libraries llama-cpp-python loads (what a verdict is keyed on)."""
    lib = Path(C.__file__).parent / "lib"
    suffixes = (".so", ".dylib", ".dll")
    return [f for f in lib.iterdir() if f.is_file() and any(s in f.name for s in suffixes)]


def system_info() -> str:
    """llama.cpp's own one-line summary of the CPU features its build uses."""
    init_backend()
    return bytes(C.llama_print_system_info()).decode("utf-8", "replace").strip()


def probe_argv(path: Path, params: EngineParams) -> list[str]:
    """The child command :class:`ExtraBuffers` runs to try a decode with extra buffers on."""
    cmd = [sys.executable, "-m", "edgeinfer.engine.llama", "probe", str(path)]
    return cmd + [str(params.threads), str(params.gpu_layers)]


class Loader:
    """The :data:`edgeinfer.engine.EngineFactory` for llama.cpp.

    Resolves each model's ``extra_buffers`` setting before loading it: ``auto`` asks the
    verdict store, and on a first load on this machine a probe child (see
    ``engine/extra_buffers.py``), so a llama.cpp build that crashes on its extra buffer types
    costs a child process, never the caller. ``verdicts=None`` remembers them in memory only.
    """

    def __init__(self, verdicts: Path | None = None) -> None:
        self._verdicts = VerdictStore(verdicts)
        self._decider: ExtraBuffers | None = None
        self._lock = threading.Lock()

    def decider(self) -> ExtraBuffers:
        """The decisions, over this llama.cpp build (hashed once, on first use)."""
        with self._lock:
            if self._decider is None:
                library = files_digest(library_files())
                self._decider = ExtraBuffers(self._verdicts, library=library)
            return self._decider

    def extra_buffers(self, path: Path, params: EngineParams) -> bool:
        """``params.extra_buffers`` resolved for ``path`` (may run the probe)."""
        argv = probe_argv(path, params)
        return self.decider().use(params.extra_buffers, path, argv, name=params.name)

    def __call__(self, path: Path, params: EngineParams) -> LlamaEngine:
        return LlamaEngine(path, params, extra_buffers=self.extra_buffers(path, params))

    # -- runner processes: the daemon decides, the child loads ------------------------------

    child_factory = "edgeinfer.engine.llama:open_resolved"
    """What a runner process imports to load the model (``module:function``)."""

    def resolve(self, path: Path, params: EngineParams) -> EngineParams:
        """``params`` with ``extra_buffers`` decided ("on" or "off"), for a runner process."""
        on = self.extra_buffers(path, params)
        return dataclasses.replace(params, extra_buffers="on" if on else "off")

    def vocab(self, path: Path) -> LlamaVocab:
        return LlamaVocab(path)

    def crashed(self, path: Path, reason: str) -> None:
        """A runner using extra buffers died of SIGILL: remember them as off for this model's
        quant type on this CPU and build (the next start pays nothing)."""
        self.decider().record_off(path, reason)


def open_resolved(path: Path, params: EngineParams) -> LlamaEngine:
    """A runner process's engine factory: ``params.extra_buffers`` is already decided, and the
    engine has the process to itself."""
    return LlamaEngine(path, params, extra_buffers=params.extra_buffers == "on", alone=True)


@contextlib.contextmanager
def llama_defaults(*, extra_buffers: bool) -> Iterator[None]:
    """Make llama-cpp-python's high-level ``Llama``, which has no such argument, load with
    ``use_extra_bufts`` as given. Benchmarks and tests run it as their baseline: it must use
    the same verdict as edgeinfer, and must not crash on a CPU where extra buffers do."""
    original = C.llama_model_default_params

    def defaults() -> Any:
        mparams = original()
        mparams.use_extra_bufts = extra_buffers
        return mparams

    C.llama_model_default_params = defaults
    try:
        yield
    finally:
        C.llama_model_default_params = original


_default_loader = Loader()


def load(path: Path, params: EngineParams) -> LlamaEngine:
    """Load with verdicts kept for this process only (tests, scripts); the daemon builds a
    :class:`Loader` over the cache dir instead."""
    return _default_loader(path, params)


def quantize(src: Path, dst: Path, ftype: str) -> None:
    """Requantize ``src`` into ``dst`` with llama.cpp's quantizer (the model store's Quantizer)."""
    init_backend()
    if ftype not in _FTYPES:
        raise EngineError(f"unsupported quantization type {ftype!r}; one of {', '.join(_FTYPES)}")
    qparams = C.llama_model_quantize_default_params()
    qparams.ftype = _FTYPES[ftype]
    qparams.allow_requantize = True
    qparams.nthread = physical_cores()
    rc = C.llama_model_quantize(os.fsencode(src), os.fsencode(dst), ctypes.byref(qparams))
    if rc != 0:
        raise EngineError(f"llama.cpp failed to quantize {src} to {ftype} (code {rc})")


__all__ = [
    "LlamaEngine",
    "LlamaVocab",
    "Loader",
    "library_files",
    "llama_defaults",
    "load",
    "open_resolved",
    "quantize",
    "system_info",
]
