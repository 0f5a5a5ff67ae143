"""Model ``auto``: the router in the request flow.

Picks the tier(s) for a request with :mod:`edgeinfer.routing.policy`, runs a cascade's draft on
the cheaper tier, reads its confidence from token logprobs and either keeps it or escalates.
The service hands it the tiers that exist now (:class:`~edgeinfer.core.tier.Tier`: a card to
choose by, ``answer`` to run), so this module never touches a runner, a socket or the service.
Every answer says in ``edgeinfer.route`` which tiers ran, how sure each was, and why it climbed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import numpy as np

from edgeinfer.config.schema import RouterSettings
from edgeinfer.core.generation import FinishHook, Generation
from edgeinfer.core.options import GenerateOptions
from edgeinfer.core.tier import Tier, TierCard
from edgeinfer.core.values import Delta, Finished, TokenLogprob, Usage
from edgeinfer.paths import append_private
from edgeinfer.routing.classifier import Classifier, feature_vector
from edgeinfer.routing.distill import DistillLog
from edgeinfer.routing.features import DEFAULT_MAX_TOKENS, RequestType, infer_request_type
from edgeinfer.routing.policy import (
    CONFIDENCE_WINDOW,
    Confidence,
    Constraints,
    Plan,
    Route,
    confidence,
    doomed,
    plan,
    should_escalate,
)

log = logging.getLogger("edgeinfer.router")
PROMPT_LOG_BYTES = 4096
"""A logged prompt's bound, as JSON text: enough for the classifier's features and embedding."""
OUTCOMES_MAX_BYTES = 16 << 20
OUTCOMES_KEEP = 3
"""The outcome log rotates at ``OUTCOMES_MAX_BYTES``, keeping this many older files."""

Embed = Callable[[list[str]], Any]


def last_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return str(message.get("content") or "")
    return ""


def loggable(text: str, limit: int) -> tuple[str, bool]:
    """``text`` as valid UTF-8 (a lone surrogate from the request's JSON becomes ``?``), cut to
    at most ``limit`` bytes as JSON text; and whether it was cut."""
    text = text.encode("utf-8", "replace").decode("utf-8")

    def size(s: str) -> int:
        return len(json.dumps(s, ensure_ascii=False).encode()) - 2

    if len(text) <= limit // 6 or size(text) <= limit:  # 6 bytes: the widest escape, \uXXXX
        return text, False
    head = text.encode()[:limit].decode("utf-8", "ignore")
    while (excess := size(head) - limit) > 0:  # escapes (quotes, control characters) grew it
        head = head[: len(head) - max(1, excess // 6)]
    return head, True


@dataclass
class RouterStats:
    """What the router did, for /stats and the TUI (guarded by the router's lock)."""

    requests: int = 0
    by_tier: dict[str, int] = field(default_factory=dict)
    routes: dict[str, int] = field(default_factory=dict)
    cascades: int = 0
    escalations: int = 0
    drafts_kept: int = 0
    # Completion tokens answered by a cheaper tier than the best allowed, and the compute time
    # that saved at the tiers' measured per-token cost (an estimate, clearly labelled).
    tokens_on_smaller_tiers: int = 0
    seconds_saved_est: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "by_tier": dict(self.by_tier),
            "routes": dict(self.routes),
            "cascades": self.cascades,
            "escalations": self.escalations,
            "drafts_kept": self.drafts_kept,
            "tokens_on_smaller_tiers": self.tokens_on_smaller_tiers,
            "compute_seconds_saved_est": round(self.seconds_saved_est, 3),
        }


class Router:
    """Built by the service from the [router] settings; one per daemon (reconfigured on reload).

    ``tiers`` returns every tier that could answer now (ready local models, remotes); the
    router narrows them to ``[router] tiers``.
    """

    def __init__(
        self,
        settings: RouterSettings,
        *,
        tiers: Callable[[], Sequence[Tier]],
        embed: Embed | None = None,
        classifier: Classifier | None = None,
        distill: DistillLog | None = None,
        outcomes: Path | None = None,
    ) -> None:
        self.settings = settings
        self.distill = distill
        self._outcomes = outcomes
        self._tiers = tiers
        self._embed = embed
        self.classifier = classifier
        self.stats = RouterStats()
        self._lock = threading.Lock()

    def reconfigure(
        self,
        settings: RouterSettings,
        *,
        classifier: Classifier | None,
        distill: DistillLog | None,
    ) -> None:
        """Hot reload: the next requests use these; those in flight finish on the old ones.
        Counters carry on."""
        with self._lock:
            self.settings = settings
            self.classifier = classifier
            self.distill = distill

    def wants(self, model: str | None) -> bool:
        """Whether a request's ``model`` asks for routing."""
        return model == "auto" or (not model and self.settings.auto_when_omitted)

    def tiers(self) -> list[Tier]:
        """The tiers the router may pick now."""
        wanted = self.settings.tiers
        return [t for t in self._tiers() if wanted is None or t.card.name in wanted]

    def tier_names(self) -> list[str]:
        return [t.card.name for t in self.tiers()]

    async def predict(self, text: str) -> dict[str, float]:
        """The classifier's P(correct) per tier; empty when it or the embedder is missing."""
        if self.classifier is None or self._embed is None or not text:
            return {}
        embed = self._embed
        vectors = await asyncio.to_thread(embed, [text])
        x = feature_vector(text, np.asarray(vectors)[0])
        return self.classifier.predict(x)

    def prepare(self, text: str, options: GenerateOptions) -> tuple[RequestType, GenerateOptions]:
        """Output-length control: the request type, and ``max_tokens`` from it when unset."""
        kind = cast(RequestType, options.request_type) if options.request_type else None
        kind = kind or infer_request_type(text)
        if options.max_tokens is None and self.settings.output_length:
            options = replace(options, max_tokens=DEFAULT_MAX_TOKENS[kind])
        return kind, options

    async def plan(self, text: str, options: GenerateOptions, cards: Sequence[TierCard]) -> Plan:
        route = cast(Route, options.route or self.settings.default_route)
        want = Constraints(route=route, min_quality=options.min_quality, max_cost=options.max_cost)
        predicted = await self.predict(text)
        settings = self.settings
        return plan(
            cards, want, predicted, margin=settings.margin, draft_floor=settings.draft_floor
        )

    async def chat(
        self, messages: Sequence[Mapping[str, Any]], options: GenerateOptions
    ) -> Generation:
        """Answer with the tier(s) the plan picks; the answer reports the route it took."""
        text = last_user_text(messages)
        kind, options = self.prepare(text, options)
        tiers = {t.card.name: t for t in self.tiers()}
        chosen = await self.plan(text, options, [t.card for t in tiers.values()])
        info: dict[str, Any] = {
            "route": chosen.route,
            "request_type": kind,
            "reason": chosen.reason,
            "predicted": {k: round(v, 3) for k, v in chosen.predicted.items()},
            "escalated": False,
        }
        first = chosen.tiers[0]
        if len(chosen.tiers) == 1 or first.remote:
            gen = await tiers[first.name].answer(messages, options)
            info["tiers"] = [{"model": first.name}]
            answered, escalated = first, False
        else:
            gen, answered = await self._cascade(chosen, tiers, messages, options, info)
            escalated = answered is not first
        gen = gen.derive(route=info, on_finish=self._count(chosen, answered, escalated=escalated))
        cards = [t.card for t in tiers.values()]
        return gen.derive(on_finish=self._capture(messages, answered, cards, info))

    def _capture(
        self,
        messages: Sequence[Mapping[str, Any]],
        tier: TierCard,
        cards: Sequence[TierCard],
        info: dict[str, Any],
    ) -> FinishHook | None:
        """Distillation: keep answers of tiers above the cheapest one, when enabled."""
        log_ = self.distill
        cheapest = min((t.quality for t in cards), default=0.0)
        if log_ is None or tier.quality <= cheapest:
            return None
        return lambda text, _done: log_.record(tier.name, messages, text, info)

    async def _cascade(
        self,
        chosen: Plan,
        tiers: Mapping[str, Tier],
        messages: Sequence[Mapping[str, Any]],
        options: GenerateOptions,
        info: dict[str, Any],
    ) -> tuple[Generation, TierCard]:
        """The draft on the cheapest tier, kept or escalated to the top one; the answer and
        the tier that gave it."""
        first, top = chosen.tiers[0], chosen.tiers[-1]
        threshold = self.settings.confidence_threshold
        draft_options = replace(
            options,
            # The caller's own top_logprobs when asked (a kept draft streams them to it), else
            # none: the engine's entropy needs no alternatives, which cost 1 ms a token.
            logprobs=0 if options.logprobs is None else options.logprobs,
            # Confidence reads only the answer's head: past it, logprobs cost time (0.1 ms a
            # token on a 152k vocabulary) for nothing unless the caller asked for them.
            logprob_tokens=CONFIDENCE_WINDOW if options.logprobs is None else None,
        )
        started = time.monotonic()
        draft = await tiers[first.name].answer(messages, draft_options)
        pieces: list[str] = []
        logprobs: list[TokenLogprob] = []
        verdict: tuple[Confidence, str | None] | None = None  # decided before the draft ended
        handed_over = False
        try:
            async with aclosing(draft.__aiter__()) as stream:
                async for delta in stream:
                    pieces.append(delta.text)
                    logprobs.extend(delta.logprobs)
                    if delta.logprobs:
                        verdict = self._judge_head(logprobs, threshold)
                        if verdict is not None:
                            break
            if verdict is None:  # the draft ended inside the window: judge all of it
                assert draft.result is not None
                conf = confidence(logprobs)
                why = should_escalate(conf, threshold, draft.result.reason)
                tokens = draft.result.usage.completion_tokens
                seconds = draft.result.usage.total_s
            else:
                conf, why = verdict
                tokens, seconds = len(logprobs), time.monotonic() - started
            step = {
                "model": first.name,
                "confidence": conf.as_dict(),
                "completion_tokens": tokens,
                "seconds": round(seconds, 3),
                "kept": why is None,
            }
            info["tiers"] = [step]
            self._log_outcome(last_user_text(messages), first.name, kept=why is None)
            if why is None:
                kept = self._keep(draft, "".join(pieces), tuple(logprobs), options, step)
                handed_over = True
                return kept, first
        finally:
            if not handed_over:  # a no-op when finished; else frees the draft's slot
                draft.cancel()
        log.info("cascade: %s -> %s (%s)", first.name, top.name, why)
        info.update(escalated=True, escalation_reason=why)
        info["tiers"].append({"model": top.name})
        return await tiers[top.name].answer(messages, options), top

    @staticmethod
    def _judge_head(
        logprobs: list[TokenLogprob], threshold: float
    ) -> tuple[Confidence, str | None] | None:
        """The cascade's verdict as soon as the draft's head settles it, else ``None``.

        Escalate once no continuation can reach the threshold (:func:`doomed`); decide either
        way once the confidence window is full, since later tokens are never read.
        """
        cut = doomed(logprobs, threshold)
        if cut is not None:
            why = (
                f"confidence {cut.score:.2f} after {len(logprobs)} tokens can no longer reach"
                f" threshold {threshold:.2f} (draft stopped early)"
            )
            return cut, why
        if len(logprobs) < CONFIDENCE_WINDOW:
            return None
        conf = confidence(logprobs)
        return conf, should_escalate(conf, threshold, "stop")  # "length" would say it was cut

    @staticmethod
    def _keep(
        draft: Generation,
        text: str,
        logprobs: tuple[TokenLogprob, ...],
        options: GenerateOptions,
        step: dict[str, Any],
    ) -> Generation:
        """The kept draft as the answer. A finished one is replayed; a running one streams on,
        after the head the cascade judged, so a long answer is not held back."""
        wants = options.logprobs is not None
        if draft.result is not None:
            return Generation.from_text(
                draft.model, draft.digest, text, draft.result, logprobs, wants_logprobs=wants
            )

        def settle(_text: str, done: Finished) -> None:
            step.update(
                completion_tokens=done.usage.completion_tokens,
                seconds=round(done.usage.total_s, 3),
            )

        head = Delta(text, logprobs if wants else ())
        return draft.derive(head=[head], wants_logprobs=wants, on_finish=settle)

    def _log_outcome(self, prompt: str, tier: str, *, kept: bool) -> None:
        """A cascade's verdict on its draft, as a training example for ``router train``:
        a kept draft counts as the tier being right, an escalated one as wrong.

        Only with ``[router] log_prompts = true``: the example is the user's own words. A
        verdict without its prompt trains nothing (the classifier reads the prompt) and
        ``router train`` would refuse the line, so without consent nothing is written.
        """
        path = self._outcomes
        if path is None or not prompt or not self.settings.log_prompts:
            return
        text, cut = loggable(prompt, PROMPT_LOG_BYTES)
        row: dict[str, Any] = {"prompt": text, "tier": tier, "correct": kept, "source": "cascade"}
        if cut:
            row["truncated"] = True
        line = (json.dumps(row, ensure_ascii=False) + "\n").encode()

        def append() -> None:
            with self._lock:
                append_private(path, line, max_bytes=OUTCOMES_MAX_BYTES, keep=OUTCOMES_KEEP)

        asyncio.get_running_loop().run_in_executor(None, append)

    def _count(self, chosen: Plan, tier: TierCard, *, escalated: bool) -> FinishHook | None:
        """Count the request; the hook that books what a cheaper tier saved, if one answered."""
        best = max(chosen.tiers, key=lambda t: t.quality)
        with self._lock:
            s = self.stats
            s.requests += 1
            s.by_tier[tier.name] = s.by_tier.get(tier.name, 0) + 1
            s.routes[chosen.route] = s.routes.get(chosen.route, 0) + 1
            s.cascades += len(chosen.tiers) > 1
            s.escalations += escalated
            s.drafts_kept += len(chosen.tiers) > 1 and not escalated
        if tier is best:
            return None
        return lambda _text, done: self._saved(tier, best, done.usage)

    def _saved(self, tier: TierCard, best: TierCard, usage: Usage) -> None:
        tokens = int(usage.completion_tokens)
        with self._lock:
            self.stats.tokens_on_smaller_tiers += tokens
            self.stats.seconds_saved_est += tokens * (best.cost_per_1k - tier.cost_per_1k) / 1000
