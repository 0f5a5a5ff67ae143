"""The Tier port: a model that answers a prepared request, local or remote.

The router chooses among tiers by their :class:`TierCard` and calls :meth:`Tier.answer`; it
never reaches a runner, a socket or the service. ``service/local.py`` (a model in the pool) and
``service/remote.py`` (an OpenAI-compatible endpoint) implement it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from edgeinfer.core.generation import Generation
from edgeinfer.core.options import GenerateOptions


@dataclass(frozen=True)
class TierCard:
    """A tier as the router sees it.

    ``cost_per_1k`` is in seconds of this machine's compute per 1,000 generated tokens (measured),
    or the user's configured price in the same relative units. ``digest`` says which model
    answers under the name (a local file's sha256, a remote's endpoint and model): routed
    answers are cached under every tier's, so they are not served once a tier's model changed.
    """

    name: str
    quality: float
    cost_per_1k: float
    tags: frozenset[str] = frozenset()
    remote: bool = False
    digest: str = ""


class Tier(Protocol):
    """A model that answers; built by the service, chosen by the router."""

    @property
    def card(self) -> TierCard: ...

    def settle(self, options: GenerateOptions) -> GenerateOptions:
        """``options`` as this tier will run them: the sampling fields the request left out
        filled with the model's defaults (a local model), or left to the upstream (a remote).
        The cache keys on the settled options, so its deterministic test sees the real
        temperature. Pure and cheap."""
        ...

    async def answer(
        self, messages: Sequence[Mapping[str, Any]], options: GenerateOptions
    ) -> Generation:
        """Start answering ``messages``; the generation streams the answer's events."""
        ...
