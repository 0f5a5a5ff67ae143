"""Step 3 of the request flow: the prompt layer, run on a local model's messages before its chat
template is rendered.

Chains the pure transforms (compress → keep relevant context, or the relevant part of a pasted
document → summarise old history) under
the [prompt] settings and the request's own ``edgeinfer`` options, counts tokens with the
target model's tokenizer, and keeps running totals for /stats. Blocking work (tokenizing,
embedding) runs in threads; the summariser is injected by the service (the cheapest tier).
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeinfer.config.schema import PromptSettings
from edgeinfer.core.embedding import Vectors
from edgeinfer.prompt.compress import compress_messages
from edgeinfer.prompt.context import Embed, optimise_document, optimise_messages
from edgeinfer.prompt.history import summarise_history
from edgeinfer.prompt.report import CountTokens, Message, PromptReport, content_tokens

Summarise = Callable[[str], Awaitable[str]]


@dataclass(frozen=True)
class PromptWish:
    """A request's say over the layer (``edgeinfer.compress`` / ``context_budget``)."""

    compress: bool | None = None
    context_budget: int | None = None


class RecentVectors:
    """``embed`` with the vectors of the last ``size`` texts kept (by a digest of the text:
    about 1.6 KB an entry, 6.5 MB at the default size).

    A conversation about a pasted document sends the document again with every turn, and
    each turn cuts it again (context.py): its chunks, and the questions, embed the same each
    time (the embedder runs each text alone), so only new texts reach the model.
    """

    def __init__(self, embed: Embed, size: int = 4096) -> None:
        self._embed = embed
        self._size = size
        self._lock = threading.Lock()
        self._kept: OrderedDict[bytes, Vectors] = OrderedDict()

    def __call__(self, texts: list[str]) -> Vectors:
        if not texts:
            return self._embed(texts)
        keys = [_digest(t) for t in texts]
        with self._lock:
            found = {k: self._kept[k] for k in keys if k in self._kept}
            for key in found:
                self._kept.move_to_end(key)
        missing = {k: t for k, t in zip(keys, texts, strict=True) if k not in found}
        if missing:
            fresh = [row.copy() for row in self._embed(list(missing.values()))]  # not views
            found.update(zip(missing, fresh, strict=True))
            with self._lock:
                self._kept.update(zip(missing, fresh, strict=True))
                while len(self._kept) > self._size:
                    self._kept.popitem(last=False)
        return np.stack([found[k] for k in keys])


def _digest(text: str) -> bytes:
    """A text's key (16 bytes, whatever its length: a pasted code block can be a megabyte)."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class PromptLayer:
    """One per daemon; thread-safe counters and recent vectors, no per-request state."""

    def __init__(self, settings: PromptSettings, *, embed: Embed | None = None) -> None:
        self.settings = settings
        self._embed = RecentVectors(embed) if embed is not None else None
        self._lock = threading.Lock()
        self.requests = 0
        self.changed = 0
        self.tokens_before = 0
        self.tokens_removed = 0
        self.seconds = 0.0

    def active(self, wish: PromptWish) -> bool:
        s = self.settings
        compress = s.compress if wish.compress is None else wish.compress
        budget = wish.context_budget or s.context_budget
        documents = s.documents and wish.compress is not False
        return (
            compress
            or s.abbreviations
            or budget is not None
            or documents
            or s.history_budget is not None
        )

    async def apply(
        self,
        messages: Sequence[Mapping[str, Any]],
        count_tokens: CountTokens,
        wish: PromptWish,
        summarise: Summarise | None = None,
    ) -> tuple[list[Message], PromptReport | None]:
        """The messages the model will read, and what changed (``None`` when the layer is off)."""
        if not self.active(wish):
            return [dict(m) for m in messages], None
        started = time.perf_counter()
        s = self.settings
        out, report = [dict(m) for m in messages], None
        if (s.compress if wish.compress is None else wish.compress) or s.abbreviations:
            out, report = await asyncio.to_thread(
                compress_messages, out, abbreviations=s.abbreviations, count_tokens=count_tokens
            )
        budget = wish.context_budget or s.context_budget
        if budget is not None and self._embed is not None:
            out, step = await asyncio.to_thread(
                optimise_messages,
                out,
                budget_tokens=budget,
                count_tokens=count_tokens,
                embed=self._embed,
            )
            report = step if report is None else report.then(step)
        elif s.documents and wish.compress is not False and self._embed is not None:
            out, step = await asyncio.to_thread(
                optimise_document,
                out,
                min_tokens=s.document_tokens,
                budget_tokens=s.document_budget,
                follow_ups=s.document_follow_ups,
                count_tokens=count_tokens,
                embed=self._embed,
            )
            report = step if report is None else report.then(step)
        if s.history_budget is not None and summarise is not None:
            out, step = await summarise_history(
                out, budget_tokens=s.history_budget, count_tokens=count_tokens, summarise=summarise
            )
            report = step if report is None else report.then(step)
        if report is None:
            tokens = await asyncio.to_thread(content_tokens, out, count_tokens)
            report = PromptReport.unchanged(tokens)
        self._count(report, time.perf_counter() - started)
        return out, report

    def _count(self, report: PromptReport, seconds: float) -> None:
        with self._lock:
            self.requests += 1
            self.changed += report.tokens_removed > 0
            self.tokens_before += report.tokens_before
            self.tokens_removed += report.tokens_removed
            self.seconds += seconds

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self.requests,
                "requests_changed": self.changed,
                "tokens_before": self.tokens_before,
                "tokens_removed": self.tokens_removed,
                "removed_ratio": self.tokens_removed / self.tokens_before
                if self.tokens_before
                else 0.0,
                "seconds": round(self.seconds, 3),
            }
