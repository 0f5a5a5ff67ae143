"""Routing decisions as small pure functions: which tiers may answer, which one starts, and
whether a cascade escalates after reading the answer's token logprobs.

Every decision carries a human-readable ``reason``; the response's ``edgeinfer.route`` shows
them, so a user can see why a request went where it went.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from edgeinfer.core.tier import TierCard
from edgeinfer.core.values import TokenLogprob
from edgeinfer.errors import NoSuitableModel

Route = Literal["cheapest", "cascade", "best"]


@dataclass(frozen=True)
class Constraints:
    """What a request asks of the router (``edgeinfer.min_quality`` and friends)."""

    route: Route = "cascade"
    min_quality: float | None = None
    max_cost: float | None = None
    tags: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Plan:
    """The tiers to try in order (one, or a cascade ladder) and why."""

    tiers: tuple[TierCard, ...]
    route: Route
    reason: str
    predicted: Mapping[str, float] = field(default_factory=dict)


def eligible(tiers: Sequence[TierCard], want: Constraints) -> list[TierCard]:
    """The tiers meeting the request's floor, ceiling and tags, cheapest first.

    Raises:
        NoSuitableModel: none does; the message names the constraint that ruled each out.
    """
    ok: list[TierCard] = []
    why: list[str] = []
    for tier in tiers:
        if want.min_quality is not None and tier.quality < want.min_quality:
            why.append(f"{tier.name} quality {tier.quality:.2f} < min_quality {want.min_quality}")
        elif want.max_cost is not None and tier.cost_per_1k > want.max_cost:
            why.append(f"{tier.name} cost {tier.cost_per_1k:.3g}/1k > max_cost {want.max_cost}")
        elif not want.tags <= tier.tags:
            missing = ", ".join(sorted(want.tags - tier.tags))
            why.append(f"{tier.name} lacks {missing}")
        else:
            ok.append(tier)
    if not ok:
        detail = "; ".join(why) if why else "no model is configured for routing"
        raise NoSuitableModel(f"no model satisfies the request's constraints: {detail}")
    return sorted(ok, key=lambda t: (t.cost_per_1k, -t.quality))


def plan(
    tiers: Sequence[TierCard],
    want: Constraints,
    predicted: Mapping[str, float],
    *,
    margin: float = 0.1,
    draft_floor: float = 0.0,
) -> Plan:
    """Pick the starting tier, and for a cascade the ladder above it.

    ``predicted`` is the classifier's P(correct) per tier (may be empty or partial; a tier
    without a prediction counts with its configured quality). ``cheapest`` takes the cheapest
    tier predicted within ``margin`` of the best prediction; ``cascade`` starts there and may
    climb to the best tier, unless the start tier's prediction is under ``draft_floor``: a
    draft that will most likely be thrown away only adds its time, so the best tier answers
    at once. ``best`` takes the highest-quality tier.
    """
    ladder = eligible(tiers, want)
    best = max(ladder, key=lambda t: (t.quality, -t.cost_per_1k))
    if want.route == "best" or len(ladder) == 1:
        return Plan((best,), want.route, f"{best.name}: highest quality allowed", predicted)
    score = {t.name: predicted.get(t.name, t.quality) for t in ladder}
    top = max(score.values())
    start = next(t for t in ladder if score[t.name] >= top - margin)
    reason = (
        f"{start.name}: cheapest tier predicted within {margin:.2f} of the best"
        f" (p={score[start.name]:.2f} vs {top:.2f})"
    )
    if want.route == "cheapest" or best.quality <= start.quality:  # nothing better to climb to
        return Plan((start,), want.route, reason, predicted)
    if score[start.name] < draft_floor:
        reason = (
            f"{best.name}: {start.name}'s draft would likely be escalated"
            f" (p={score[start.name]:.2f} < draft_floor {draft_floor:.2f})"
        )
        return Plan((best,), want.route, reason, predicted)
    # Climb straight to the best tier: a middle rung that also fails costs twice.
    return Plan((start, best), "cascade", reason, predicted)


@dataclass(frozen=True)
class Confidence:
    """How sure a tier was of its answer, from its tokens' logprobs."""

    mean_logprob: float
    min_logprob: float
    mean_entropy: float
    tokens: int

    @property
    def score(self) -> float:
        """Geometric-mean token probability: exp(mean logprob), in 0..1."""
        return math.exp(self.mean_logprob) if self.tokens else 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "score": round(self.score, 4),
            "mean_logprob": round(self.mean_logprob, 4),
            "min_logprob": round(self.min_logprob, 4),
            "mean_entropy": round(self.mean_entropy, 4),
            "tokens": self.tokens,
        }


def _entropy(token: TokenLogprob) -> float:
    """The engine's exact entropy, else one over the top alternatives plus the rest of the mass
    as one bucket."""
    if token.entropy is not None:
        return token.entropy
    probs = [math.exp(lp) for _, lp in token.top] or [math.exp(token.logprob)]
    rest = max(0.0, 1.0 - sum(probs))
    return -sum(p * math.log(p) for p in [*probs, rest] if p > 0)


CONFIDENCE_WINDOW = 32  # tokens: confidence reads the head of an answer, where short answers live


def confidence(tokens: Sequence[TokenLogprob], *, window: int = CONFIDENCE_WINDOW) -> Confidence:
    """Confidence over the answer's first ``window`` tokens, where short answers live."""
    head = [t for t in tokens[:window] if t.piece.strip()]
    if not head:
        return Confidence(-math.inf, -math.inf, math.inf, 0)
    lps = [t.logprob for t in head]
    return Confidence(
        mean_logprob=sum(lps) / len(lps),
        min_logprob=min(lps),
        mean_entropy=sum(_entropy(t) for t in head) / len(head),
        tokens=len(head),
    )


def doomed(
    tokens: Sequence[TokenLogprob], threshold: float, *, window: int = CONFIDENCE_WINDOW
) -> Confidence | None:
    """The draft's confidence so far when no continuation can lift it to ``threshold``.

    Exact, not a guess: every further token adds a logprob <= 0, and the mean is over at most
    ``window`` tokens, so once the sum so far is below ``window * log(threshold)`` the final
    score is below the threshold too. The cascade stops such a draft and escalates at once
    instead of paying for the rest of an answer it would throw away.
    """
    conf = confidence(tokens, window=window)
    if conf.tokens == 0 or threshold <= 0:
        return None
    return conf if conf.mean_logprob * conf.tokens < window * math.log(threshold) else None


def should_escalate(conf: Confidence, threshold: float, finish: str) -> str | None:
    """Why the cascade must climb, or ``None`` to keep the answer."""
    if conf.tokens == 0:
        return "the answer was empty"
    if conf.score < threshold:
        cut = " (cut at max_tokens)" if finish == "length" else ""
        return f"confidence {conf.score:.2f} < threshold {threshold:.2f}{cut}"
    return None
