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
        ``(slot id, tokens to reuse)``. Each slot scores the prefix it shares minus half of the
        KV it would have to throw away, so a conversation continues in its own slot while a new
        one takes an empty slot rather than wiping another conversation for a shared template
        head (the runner copies such a head over instead). Among equals, the least recently used
        slot. At least one prompt token is always left to evaluate: sampling needs its logits.
    """

    def score(slot: tuple[int, Sequence[int], float]) -> tuple[float, float]:
        shared = common_prefix(slot[1], prompt)
        return shared - (len(slot[1]) - shared) / 2, -slot[2]

    best = max(idle, key=score)
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


def plan_reuse(in_slot: int, copy: int, restore: int, *, min_gain: int) -> str:
    """How a new request gets its prompt prefix into its slot.

    Args:
        in_slot: prefix tokens already in the chosen idle slot (free to keep).
        copy: prefix tokens another slot holds (a ``seq_cp`` inside the context).
        restore: prefix tokens of a saved state in the RAM/disk tiers (a state load).
        min_gain: tokens a copy or restore must add over ``in_slot`` to be worth doing.

    Returns:
        ``"slot"``, ``"copy"`` or ``"restore"``. On a tie, copying wins: it stays inside the
        context, where a restore must first move the state in.
    """
    if max(copy, restore) - in_slot < min_gain:
        return "slot"
    return "copy" if copy >= restore else "restore"
