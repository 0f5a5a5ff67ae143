"""Argument types shared by the CLI's commands."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def number(
    low: float | None = None, high: float | None = None, *, above: bool = False
) -> Callable[[str], float]:
    """An argparse type: a finite number from ``low`` (exclusive with ``above``) to ``high``;
    NaN and the infinities are refused in one usage line instead of failing later."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        too_low = low is not None and (value <= low if above else value < low)
        if not math.isfinite(value) or too_low or (high is not None and value > high):
            span = [f"{'above' if above else 'at least'} {low:g}"] if low is not None else []
            span += [f"at most {high:g}"] if high is not None else []
            need = " ".join(["a finite number", " and ".join(span)]).strip()
            raise argparse.ArgumentTypeError(f"{text!r}: need {need}")
        return value

    return parse
