"""Summarise an over-budget conversation history with a small model.

A long chat pays for its whole history on every turn that misses the prefix cache, and can
outgrow the context window. When the message contents exceed the budget,
:func:`summarise_history` replaces the oldest turns with one user message,
``"Summary of the earlier conversation: …"``, written by the injected summariser (the service
wires the small model, with :data:`SUMMARY_INSTRUCTION` as its system prompt). System and
developer messages and the last ``keep_last`` turns stay as they were.

The summary is a user message placed where the old turns began, and the kept tail is made to
start with a non-user turn, so user and assistant still alternate: several chat templates
(Llama 2, Mistral, Gemma) refuse a chat where they do not.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from edgeinfer.prompt.report import (
    CountTokens,
    Message,
    PromptReport,
    content_tokens,
    count_too_long,
    text_of,
    too_long,
)

Summarise = Callable[[str], Awaitable[str]]
"""Transcript in, summary out (the small model, greedy, a few hundred tokens at most)."""

SUMMARY_PREFIX = "Summary of the earlier conversation: "
SUMMARY_INSTRUCTION = (
    "Summarise the conversation below for the assistant who will continue it. Keep every fact,"
    " name, number, decision and open question; drop greetings and repetition. Write plain"
    " prose, at most a few sentences."
)
KEEP_LAST = 4
PINNED_ROLES = frozenset({"system", "developer"})
# A kept tail must not open with these: a user turn would follow the (user) summary, and a tool
# result would lose the assistant turn that called the tool.
_NO_TAIL_START = frozenset({"user", "tool", "function"})


def transcript(messages: Sequence[Mapping[str, Any]]) -> str:
    """The turns as ``role: text`` paragraphs, the form the summariser reads."""
    return "\n\n".join(f"{m.get('role', 'user')}: {text_of(m.get('content'))}" for m in messages)


def split_history(messages: Sequence[Mapping[str, Any]], keep_last: int) -> tuple[list[int], int]:
    """Indices of the turns to summarise, and where the summary goes.

    The last ``keep_last`` conversation turns are kept, and more while the tail would begin
    with a user or tool turn (see :data:`_NO_TAIL_START`). System and developer messages are
    never summarised, wherever they sit.
    """
    turns = [i for i, m in enumerate(messages) if m.get("role") not in PINNED_ROLES]
    cut = max(0, len(turns) - keep_last)
    while 0 < cut < len(turns) and messages[turns[cut]].get("role") in _NO_TAIL_START:
        cut -= 1
    old = turns[:cut]
    return old, (old[0] if old else -1)


async def summarise_history(
    messages: Sequence[Mapping[str, Any]],
    *,
    budget_tokens: int,
    count_tokens: CountTokens,
    summarise: Summarise,
    keep_last: int = KEEP_LAST,
) -> tuple[list[Message], PromptReport]:
    """The chat with its oldest turns replaced by a summary when it exceeds ``budget_tokens``.

    Returns the messages unchanged (as new dicts) when the chat fits, when there is nothing old
    enough to summarise, when an old turn is over ``MAX_TEXT_CHARS`` (it passes through as sent,
    so the rest stays too), or when the summariser returns nothing. Errors of the summariser
    propagate: whether to answer without the summary is the caller's choice.
    The report's ``details`` has ``messages_summarised``.
    """
    out = [dict(m) for m in messages]
    total = content_tokens(messages, count_tokens)
    unchanged = PromptReport(total, total, too_long=count_too_long(messages))
    if total <= budget_tokens:
        return out, unchanged
    old, at = split_history(messages, keep_last)
    if not old or any(too_long(messages[i]) for i in old):
        return out, unchanged
    summary = (await summarise(transcript([messages[i] for i in old]))).strip()
    if not summary:
        return out, unchanged
    dropped = set(old)
    new: list[Message] = []
    for i, message in enumerate(out):
        if i == at:
            new.append({"role": "user", "content": SUMMARY_PREFIX + summary})
        if i not in dropped:
            new.append(message)
    after = content_tokens(new, count_tokens)
    details = {"messages_summarised": len(old)}
    return new, PromptReport(total, after, ["history"], details, unchanged.too_long)
