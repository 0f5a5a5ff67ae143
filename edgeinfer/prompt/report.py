"""What the prompt layer did to one request, and the message helpers its transforms share.

Every transform of the layer (compress, context, history) returns a :class:`PromptReport`; the
service chains them with :meth:`PromptReport.then` and puts the result in the response's
``edgeinfer.prompt`` object and in ``/stats``. Token counts come from the injected counter, which
in the daemon is the target model's own tokenizer, so "tokens removed" is what the model no
longer has to read (message contents only: the chat template's own tokens are the same on both
sides and are left out).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

CountTokens = Callable[[str], int]
"""Tokens of a text under the target model's tokenizer (no BOS, special tokens parsed)."""

Message = dict[str, Any]

# Roles whose content the layer never changes: the system prompt's bytes must stay identical so
# that the KV of the prefix is reused across requests (and tool output is data, not prose).
UNTOUCHED_ROLES = frozenset({"system", "developer", "tool", "function"})

MAX_TEXT_CHARS = 1 << 20
"""The longest message content (in characters) the layer rewrites, chunks or summarises.

A longer one passes through as sent: it cannot fit a local model's context anyway, so the work
would buy nothing, and it bounds what one request can make the layer do however its passes scale.
Token counting still covers it (the engine tokenizes the prompt regardless).
"""


@dataclass
class PromptReport:
    """Tokens of the message contents before and after, and which transforms changed anything.

    Attributes:
        tokens_before: tokens of every message content as the client sent it.
        tokens_after: the same count over what the model will read.
        actions: names of the transforms that changed something, in the order they ran
            (``whitespace``, ``dedupe``, ``abbreviate``, ``context``, ``history``).
        details: counts behind the actions (paragraphs dropped, chunks kept/total, ...).
        too_long: editable messages left as sent because they exceed :data:`MAX_TEXT_CHARS`.
    """

    tokens_before: int
    tokens_after: int
    actions: list[str] = field(default_factory=list)
    details: dict[str, int] = field(default_factory=dict)
    too_long: int = 0

    @classmethod
    def unchanged(cls, tokens: int) -> PromptReport:
        """The report of a transform that left the messages as they were."""
        return cls(tokens, tokens)

    @property
    def tokens_removed(self) -> int:
        return self.tokens_before - self.tokens_after

    def then(self, later: PromptReport) -> PromptReport:
        """This report followed by ``later`` (which ran on this one's output)."""
        actions = self.actions + [a for a in later.actions if a not in self.actions]
        details = {**self.details}
        for key, value in later.details.items():
            details[key] = details.get(key, 0) + value
        # Each transform counts the over-long messages it met; they are the same messages.
        too_long = max(self.too_long, later.too_long)
        return PromptReport(self.tokens_before, later.tokens_after, actions, details, too_long)

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape for the response's ``edgeinfer.prompt`` object."""
        return {
            "tokens_before": self.tokens_before,
            "tokens_after": self.tokens_after,
            "tokens_removed": self.tokens_removed,
            "actions": list(self.actions),
            **self.details,
            **({"messages_too_long": self.too_long} if self.too_long else {}),
        }


def text_of(content: Any) -> str:
    """The text of a message content: a string, or OpenAI text parts joined; else empty."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, Mapping))
    return ""


def content_tokens(messages: Sequence[Mapping[str, Any]], count_tokens: CountTokens) -> int:
    """Tokens of all message contents (what the budget and the report are measured in)."""
    return sum(count_tokens(text) for m in messages if (text := text_of(m.get("content"))))


def editable(message: Mapping[str, Any]) -> bool:
    """Whether the layer may rewrite this message's content (user/assistant prose only)."""
    return message.get("role") not in UNTOUCHED_ROLES and isinstance(message.get("content"), str)


def too_long(message: Mapping[str, Any]) -> bool:
    """Whether this message's content is over :data:`MAX_TEXT_CHARS` (so the layer leaves it)."""
    return len(text_of(message.get("content"))) > MAX_TEXT_CHARS


def count_too_long(messages: Sequence[Mapping[str, Any]]) -> int:
    """How many messages the layer would edit but for their length (for the reports)."""
    return sum(1 for m in messages if editable(m) and too_long(m))
