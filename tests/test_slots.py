"""Table tests of the pure slot decisions."""

import pytest

from edgeinfer.pool.slots import choose_slot, common_prefix, plan_reuse, plan_step


@pytest.mark.parametrize(
    ("a", "b", "n"),
    [([], [1], 0), ([1, 2, 3], [1, 2, 4], 2), ([1, 2], [1, 2], 2), ([5], [1], 0)],
)
def test_common_prefix(a: list[int], b: list[int], n: int) -> None:
    assert common_prefix(a, b) == n


@pytest.mark.parametrize(
    ("idle", "prompt", "expected"),
    [
        # longest shared prefix wins
        ([(0, [1, 2], 5.0), (1, [1, 2, 3, 4], 9.0)], [1, 2, 3, 4, 5], (1, 4)),
        # all empty: least recently used slot
        ([(0, [], 5.0), (1, [], 1.0), (2, [], 3.0)], [7, 8], (1, 0)),
        # equal prefixes: least recently used
        ([(0, [1, 9], 5.0), (1, [1, 8], 2.0)], [1, 2], (1, 1)),
        # the whole prompt is cached: one token is left to evaluate for logits
        ([(0, [1, 2, 3], 0.0)], [1, 2, 3], (0, 2)),
        # cached beyond the prompt: reuse stops at prompt length - 1
        ([(3, [1, 2, 3, 4], 0.0)], [1, 2], (3, 1)),
        # an unrelated prompt takes the empty slot, not another conversation's
        ([(0, [4, 5, 6], 0.0), (1, [], 1.0)], [1, 2], (1, 0)),
        # a shared template head is not worth wiping a long conversation for
        ([(0, [9, 9] + [5] * 40, 0.0), (1, [], 1.0)], [9, 9, 1], (1, 0)),
        # but a continuation stays in its slot
        ([(0, [9, 9] + [5] * 40, 0.0), (1, [], 1.0)], [9, 9] + [5] * 40 + [1], (0, 42)),
        # all slots hold other conversations: the one losing least
        ([(0, [1] * 50, 0.0), (1, [2] * 10, 1.0)], [3], (1, 0)),
    ],
)
def test_choose_slot(
    idle: list[tuple[int, list[int], float]], prompt: list[int], expected: tuple[int, int]
) -> None:
    assert choose_slot(idle, prompt) == expected


@pytest.mark.parametrize(
    ("generating", "prefill", "budget", "plan"),
    [
        (0, [100], 512, [100]),
        (0, [1000], 512, [512]),
        (3, [600, 10], 512, [509, 0]),
        (4, [5, 7, 600], 64, [5, 7, 48]),
        (8, [100], 8, [0]),  # generating slots always go first
        (0, [], 512, []),
    ],
)
def test_plan_step(generating: int, prefill: list[int], budget: int, plan: list[int]) -> None:
    assert plan_step(generating, prefill, budget) == plan


@pytest.mark.parametrize(
    ("in_slot", "copy", "restore", "expected"),
    [
        (0, 0, 0, "slot"),
        (100, 110, 0, "slot"),  # a gain under min_gain is not worth a copy
        (100, 200, 0, "copy"),
        (0, 0, 1200, "restore"),
        (0, 500, 500, "copy"),  # tie: copying inside the context is cheaper
        (0, 400, 900, "restore"),
        (900, 400, 910, "slot"),
    ],
)
def test_plan_reuse(in_slot: int, copy: int, restore: int, expected: str) -> None:
    assert plan_reuse(in_slot, copy, restore, min_gain=16) == expected
