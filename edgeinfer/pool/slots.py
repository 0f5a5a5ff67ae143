"""Pure decisions about slots: which idle slot a prompt should reuse, and how a step's token
budget is split between generating slots and prompt chunks. Table-tested in tests/test_slots.py."""

from __future__ import annotations

from collections.abc import Sequence


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Number of leading tokens ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def choose_slot(
    idle: Sequence[tuple[int, Sequence[int], float]], prompt: Sequence[int]
) -> tuple[int, int]:
    """Pick the idle slot for ``prompt``.

    Args:
        idle: ``(slot id, cached tokens, last used time)`` of every idle slot (non-empty).
        prompt: the request's prompt tokens.

    Returns:
        ``(slot id, tokens to reuse)``. The slot sharing the longest prefix wins; among equals,
        the least recently used one, so a slot holding a long prefix someone else may want is
        kept as long as possible. At least one prompt token is always left to evaluate, because
        sampling needs the logits of the last prompt token.
    """
    best = max(idle, key=lambda s: (common_prefix(s[1], prompt), -s[2]))
    reuse = min(common_prefix(best[1], prompt), max(len(prompt) - 1, 0))
    return best[0], reuse


def plan_step(n_generating: int, prefill_left: Sequence[int], budget: int) -> list[int]:
    """Split one decode step's token ``budget``.

    Every generating slot gets one token first (so a long prompt never stalls running streams);
    what is left goes to prompts in admission order, each taking as much as remains.

    Returns:
        tokens of each prefilling slot to evaluate in this step (same order as ``prefill_left``).
    """
    left = max(budget - n_generating, 0)
    plan = []
    for want in prefill_left:
        take = min(want, left)
        plan.append(take)
        left -= take
    return plan
