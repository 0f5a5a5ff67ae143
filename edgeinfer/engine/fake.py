"""A deterministic fake engine for fast unit tests of scheduling logic.

It keeps a real per-sequence KV model (which tokens sit at which positions), so tests can check
prefix reuse and isolation between sequences; the "model" answers with the next token being a
pure function of the sequence's whole history, so an answer depends on exactly its own context.
It records every decode call. Real-model tests run the same scenarios on ``engine/llama.py``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edgeinfer.core.values import Sampling, TokenLogprob
from edgeinfer.engine.base import BatchItem, EngineInfo, EngineParams
from edgeinfer.errors import EngineError, InvalidRequest

EOS = 0
_WORDS = ["alpha", "beta", "gamma", "delta", "echo", "fox", "golf", "hotel", "india", "juliet"]


@dataclass
class _FakeSampler:
    sampling: Sampling
    eos_after: int | None
    count: int = 0


@dataclass
class FakeEngine:
    """See module docstring. ``eos_after`` makes every answer end after that many tokens."""

    params: EngineParams = field(default_factory=EngineParams)
    eos_after: int | None = None
    decode_delay: float = 0.0
    stuck_on: int | None = None  # a batch holding this token never returns (a native hang)
    info: EngineInfo = field(
        default_factory=lambda: EngineInfo(
            n_ctx_train=8192,
            n_vocab=1000,
            chat_template=None,
            bos_text="",
            eos_text="</s>",
            size_bytes=1,
        )
    )
    batches: list[list[BatchItem]] = field(default_factory=list)
    kv: dict[int, dict[int, int]] = field(default_factory=dict)
    closed: bool = False
    _last: dict[int, int] = field(default_factory=dict)

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool = True) -> list[int]:
        return [10 + int(hashlib.md5(w.encode()).hexdigest(), 16) % 900 for w in text.split()]

    def token_to_piece(self, token: int) -> bytes:
        return b"" if token == EOS else f"{_WORDS[token % len(_WORDS)]} ".encode()

    def is_eog(self, token: int) -> bool:
        return token == EOS

    def decode(self, batch: Sequence[BatchItem]) -> None:
        if len(batch) > self.params.n_batch:
            raise EngineError(f"batch of {len(batch)} exceeds n_batch {self.params.n_batch}")
        if any(item.token == self.stuck_on for item in batch):
            time.sleep(3600)  # as if stuck in native code: only ending the process stops it
        if self.decode_delay:
            time.sleep(self.decode_delay)
        self.batches.append(list(batch))
        for i, item in enumerate(batch):
            seq = self.kv.setdefault(item.seq, {})
            if item.pos != len(seq):
                raise EngineError(f"seq {item.seq}: position {item.pos} leaves a gap at {len(seq)}")
            seq[item.pos] = item.token
            if item.logits:
                self._last[i] = item.seq

    def new_sampler(self, sampling: Sampling) -> _FakeSampler:
        if sampling.grammar is not None and sampling.grammar.startswith("bad"):
            raise InvalidRequest("fake engine refuses grammars starting with 'bad'")
        return _FakeSampler(sampling, self.eos_after)

    def sample(self, sampler: _FakeSampler, batch_index: int) -> int:
        seq = self.kv[self._last[batch_index]]
        sampler.count += 1
        if sampler.eos_after is not None and sampler.count > sampler.eos_after:
            return EOS
        history = ",".join(str(seq[p]) for p in range(len(seq)))
        return 1 + int(hashlib.md5(history.encode()).hexdigest(), 16) % 999

    def grammar_for(self, kind: str, schema: str | None) -> str:
        return f"{kind}:{schema}"

    def logprobs(self, batch_index: int, token: int, top_n: int) -> TokenLogprob:
        piece = self.token_to_piece(token)
        return TokenLogprob(piece, -0.5, tuple((piece, -0.5) for _ in range(top_n)))

    def free_sampler(self, sampler: _FakeSampler) -> None:
        pass

    def seq_rm(self, seq: int, start: int, end: int = -1) -> None:
        kv = self.kv.setdefault(seq, {})
        for pos in [p for p in kv if p >= max(start, 0) and (end < 0 or p < end)]:
            del kv[pos]

    def seq_cp(self, src: int, dst: int) -> None:
        self.kv[dst] = dict(self.kv.get(src, {}))

    def seq_shift(self, seq: int, start: int, delta: int) -> None:
        kv = self.kv.setdefault(seq, {})
        moved = {p + delta if p >= start else p: t for p, t in kv.items()}
        self.kv[seq] = moved

    def state_get(self, seq: int) -> bytes:
        kv = self.kv.get(seq, {})
        return json.dumps([kv[p] for p in sorted(kv)]).encode()

    def state_set(self, seq: int, state: bytes) -> None:
        self.kv[seq] = dict(enumerate(json.loads(state)))

    def close(self) -> None:
        self.closed = True


def factory(**kwargs: object) -> FakeEngineFactory:
    """An EngineFactory building FakeEngines with ``kwargs``; keeps the engines it made."""
    return FakeEngineFactory(kwargs)


@dataclass
class FakeEngineFactory:
    kwargs: dict[str, object]
    made: list[FakeEngine] = field(default_factory=list)

    def __call__(self, path: Path, params: EngineParams) -> FakeEngine:
        if not path.exists():
            raise EngineError(f"no model file at {path}")
        engine = FakeEngine(params=params, **self.kwargs)  # type: ignore[arg-type]
        self.made.append(engine)
        return engine


def slow_engine(path: Path, params: EngineParams) -> FakeEngine:
    """A runner process's engine for the fast tests of ``pool/process.py``: 20 ms a step, so a
    test can cut a generation in the middle."""
    return FakeEngine(params=params, decode_delay=0.02)


STUCK_TOKEN = 666


def stuck_engine(path: Path, params: EngineParams) -> FakeEngine:
    """:func:`slow_engine` whose decode never returns for a batch holding :data:`STUCK_TOKEN`,
    as llama.cpp's grammar matcher once did: what the runner's step watchdog is for."""
    return FakeEngine(params=params, decode_delay=0.02, stuck_on=STUCK_TOKEN)


@dataclass
class FakeProcessFactory:
    """The ProcessFactory of ``pool/process.py`` over :func:`slow_engine`: nothing to decide,
    the vocabulary is a FakeEngine's, and the extra-buffer verdicts it was told are kept."""

    child_factory: str = "edgeinfer.engine.fake:slow_engine"
    crashes: list[str] = field(default_factory=list)

    def resolve(self, path: Path, params: EngineParams) -> EngineParams:
        return params

    def vocab(self, path: Path) -> FakeEngine:
        return FakeEngine()

    def crashed(self, path: Path, reason: str) -> None:
        self.crashes.append(reason)
