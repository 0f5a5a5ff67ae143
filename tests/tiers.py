"""Scripted tiers for router tests: a :class:`~edgeinfer.core.tier.Tier` whose answers come
from a plain function of the tier's name, so a test decides what each tier says."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from edgeinfer.core.generation import Generation
from edgeinfer.core.options import GenerateOptions
from edgeinfer.core.tier import Tier, TierCard

Script = Callable[[str, Sequence[Mapping[str, Any]], GenerateOptions], Awaitable[Generation]]


class ScriptedTier:
    def __init__(self, card: TierCard, script: Script) -> None:
        self.card = card
        self._script = script

    def settle(self, options: GenerateOptions) -> GenerateOptions:
        return options

    async def answer(
        self, messages: Sequence[Mapping[str, Any]], options: GenerateOptions
    ) -> Generation:
        return await self._script(self.card.name, messages, options)


def scripted(cards: Sequence[TierCard], script: Script) -> Callable[[], list[Tier]]:
    """A router's ``tiers`` argument: every card answering through ``script``."""
    return lambda: [ScriptedTier(card, script) for card in cards]
