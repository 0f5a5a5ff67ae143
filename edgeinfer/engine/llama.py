"""The llama.cpp engine, on llama-cpp-python's low-level C bindings.

This is the only module that imports ``llama_cpp``. It uses one context with ``slots`` sequences
(``n_seq_max``) so the runner can put one token of every generating request, plus prompt chunks,
into a single ``llama_decode`` call. Everything here runs on the model's runner thread, except
that CPU models hand their ``llama_decode`` to one shared compute thread (see
:func:`_cpu_compute`).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import faulthandler
import json
import logging
import math
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import llama_cpp.llama_cpp as C
import llama_cpp.llama_grammar as llama_grammar
import numpy as np

from edgeinfer.core.values import Sampling, TokenLogprob
from edgeinfer.engine.base import BatchItem, EngineInfo, EngineParams
from edgeinfer.engine.extra_buffers import ExtraBuffers, VerdictStore, files_digest
from edgeinfer.engine.grammar_limits import check_grammar, check_schema
from edgeinfer.errors import ContextLengthExceeded, EngineError, InvalidRequest, ModelUnavailable

log = logging.getLogger("edgeinfer.llama")

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
# ggml_log_level: NONE=0, DEBUG=1, INFO=2, WARN=3, ERROR=4, CONT=5
_KV_TYPES = {"f16": C.GGML_TYPE_F16, "q8_0": C.GGML_TYPE_Q8_0}
_GGML_LEVELS = {3: logging.WARNING, 4: logging.ERROR}
_init_lock = threading.Lock()
_initialised = False
_compute: ThreadPoolExecutor | None = None


def _cpu_compute() -> ThreadPoolExecutor:
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


def _init_backend() -> None:
    global _initialised
    with _init_lock:
        if not _initialised:
            C.llama_log_set(_log_callback, ctypes.c_void_p(0))
            C.llama_backend_init()
            _initialised = True


def _physical_cores() -> int:
    return max(1, (os.cpu_count() or 2) // (2 if (os.cpu_count() or 1) > 4 else 1))


def _meta(model: Any, key: str) -> str | None:
    buf = ctypes.create_string_buffer(1 << 16)
    n = C.llama_model_meta_val_str(model, key.encode(), buf, len(buf))
    return buf.value.decode("utf-8", "replace") if n >= 0 else None


class _Sampler:
    """A llama.cpp sampler chain, freed by :meth:`LlamaEngine.free_sampler`; ``None`` for plain
    greedy decoding, which :meth:`LlamaEngine.sample` does as an argmax over the logits."""

    def __init__(self, chain: Any) -> None:
        self.chain = chain


class _VocabCalls:
    """Tokenizer calls over a loaded model's vocabulary (``_vocab``), shared by the full
    engine and the daemon's vocab-only load."""

    _vocab: Any
    _pieces: dict[int, bytes]

    _model: Any

    def _info(self, size_bytes: int, **more: Any) -> EngineInfo:
        """What the rest of the system needs to know of this model (``more``: what only a
        loaded context can tell)."""
        return EngineInfo(
            n_ctx_train=C.llama_model_n_ctx_train(self._model),
            n_vocab=C.llama_vocab_n_tokens(self._vocab),
            chat_template=_meta(self._model, "tokenizer.chat_template"),
            bos_text=self._text(C.llama_vocab_bos(self._vocab)),
            eos_text=self._text(C.llama_vocab_eos(self._vocab)),
            size_bytes=size_bytes,
            **more,
        )

    def _text(self, token: int) -> str:
        if token < 0:
            return ""
        raw = C.llama_vocab_get_text(self._vocab, token)
        return raw.decode("utf-8", "replace") if raw else ""

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (C.llama_token * cap)()
        n = C.llama_tokenize(self._vocab, data, len(data), buf, cap, add_special, parse_special)
        if n < 0:
            cap = -n
            buf = (C.llama_token * cap)()
            n = C.llama_tokenize(self._vocab, data, len(data), buf, cap, add_special, parse_special)
        if n < 0:
            raise EngineError(f"tokenizer failed with code {n}")
        return list(buf[:n])

    def token_to_piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            buf = ctypes.create_string_buffer(256)
            n = C.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            piece = buf.raw[: max(n, 0)]
            self._pieces[token] = piece
        return piece

    def is_eog(self, token: int) -> bool:
        return bool(C.llama_vocab_is_eog(self._vocab, token))

    def grammar_for(self, kind: str, schema: str | None) -> str:
        if kind == "json_object":
            return str(llama_grammar.JSON_GBNF)
        try:
            check_schema(json.loads(schema or "{}"))
            grammar = str(llama_grammar.json_schema_to_gbnf(schema or "{}"))
        except InvalidRequest:
            raise
        except Exception as exc:  # the converter raises bare exceptions of several kinds
            raise InvalidRequest(
                f"response_format.json_schema cannot be turned into a grammar: {exc}",
                param="response_format",
            ) from exc
        check_grammar(grammar)  # what reaches llama.cpp's recursive parser stays shallow
        return grammar


class LlamaVocab(_VocabCalls):
    """A vocab-only load (no weights, no context: 0.06 s and ~10 MB for tiny, 0.2 s and ~45 MB
    for a 152k-token vocabulary): the daemon tokenizes and renders prompts with it while the
    model itself runs in its runner process. ``info`` is replaced by the runner's once it has
    loaded."""

    def __init__(self, path: Path) -> None:
        _init_backend()
        mparams = C.llama_model_default_params()
        mparams.vocab_only = True
        self._model = C.llama_model_load_from_file(os.fsencode(path), mparams)
        if not self._model:
            raise ModelUnavailable(f"llama.cpp could not load {path} (not a valid GGUF model?)")
        self._vocab = C.llama_model_get_vocab(self._model)
        self._pieces = {}
        self.info = self._info(path.stat().st_size)

    def close(self) -> None:
        if self._model:
            C.llama_model_free(self._model)
            self._model = None


class LlamaEngine(_VocabCalls):
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
        _init_backend()
        self.params = params
        mparams = C.llama_model_default_params()
        mparams.n_gpu_layers = params.gpu_layers if params.gpu_layers >= 0 else 999
        mparams.use_extra_bufts = extra_buffers
        self._model = C.llama_model_load_from_file(os.fsencode(path), mparams)
        if not self._model:
            raise ModelUnavailable(f"llama.cpp could not load {path} (not a valid GGUF model?)")
        self._vocab = C.llama_model_get_vocab(self._model)
        threads = params.threads or _physical_cores()
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
        self._compute = _cpu_compute() if on_cpu and not alone else None
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

    def new_sampler(self, sampling: Sampling) -> _Sampler:
        plain = not (
            sampling.logit_bias
            or sampling.grammar is not None
            or sampling.repeat_penalty != 1.0
            or sampling.presence_penalty
            or sampling.frequency_penalty
        )
        if sampling.greedy and plain:
            # llama_sampler_sample copies all n_vocab logits into a candidate array before the
            # greedy pick: 6% of a runner's time at 8 clients on tiny (py-spy). An argmax over
            # the logits is the same choice (the first maximum) for a chain that keeps no state.
            return _Sampler(None)
        chain = C.llama_sampler_chain_init(C.llama_sampler_chain_default_params())
        add = C.llama_sampler_chain_add
        if sampling.logit_bias:
            arr = (C.llama_logit_bias * len(sampling.logit_bias))()
            for i, (tok, bias) in enumerate(sampling.logit_bias.items()):
                arr[i].token = tok  # type: ignore[assignment]
                arr[i].bias = bias
            add(chain, C.llama_sampler_init_logit_bias(self._n_vocab, len(arr), arr))
        if (
            sampling.repeat_penalty != 1.0
            or sampling.presence_penalty
            or sampling.frequency_penalty
        ):
            # The C function is (penalty_last_n, repeat, freq, present); llama-cpp-python 0.3.36
            # still declares an old leading n_vocab int. On the x86-64/arm64 C ABIs ints and
            # floats travel in separate registers, so the first int lands in penalty_last_n:
            # pass the window twice. Covered by a real-model test of the penalties.
            window = 64
            add(
                chain,
                C.llama_sampler_init_penalties(
                    window,
                    window,
                    sampling.repeat_penalty,
                    sampling.frequency_penalty,
                    sampling.presence_penalty,
                ),
            )
        if sampling.grammar is not None:
            grammar = C.llama_sampler_init_grammar(self._vocab, sampling.grammar.encode(), b"root")
            if not grammar:
                C.llama_sampler_free(chain)
                raise InvalidRequest("llama.cpp refused the grammar for response_format")
            add(chain, grammar)
        if sampling.greedy:
            add(chain, C.llama_sampler_init_greedy())
            return _Sampler(chain)
        if sampling.top_k > 0:
            add(chain, C.llama_sampler_init_top_k(sampling.top_k))
        if sampling.top_p < 1.0:
            add(chain, C.llama_sampler_init_top_p(sampling.top_p, 1))
        if sampling.min_p > 0.0:
            add(chain, C.llama_sampler_init_min_p(sampling.min_p, 1))
        add(chain, C.llama_sampler_init_temp(sampling.temperature))
        seed = sampling.seed if sampling.seed is not None else C.LLAMA_DEFAULT_SEED
        add(chain, C.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        return _Sampler(chain)

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
    _init_backend()
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


def _probe(path: Path, threads: int, gpu_layers: int) -> None:
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
    _probe(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))


def quantize(src: Path, dst: Path, ftype: str) -> None:
    """Requantize ``src`` into ``dst`` with llama.cpp's quantizer (the model store's Quantizer)."""
    _init_backend()
    if ftype not in _FTYPES:
        raise EngineError(f"unsupported quantization type {ftype!r}; one of {', '.join(_FTYPES)}")
    qparams = C.llama_model_quantize_default_params()
    qparams.ftype = _FTYPES[ftype]
    qparams.allow_requantize = True
    qparams.nthread = _physical_cores()
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
