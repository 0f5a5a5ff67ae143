"""JSON schema to GBNF: llama-cpp-python's converter, plus the integer bounds it leaves out.

The converter turns ``{"type": "integer", "minimum": 1, "maximum": 5}`` into "any integer":
the answer is JSON of the right shape but may hold 0 or -1, and nothing says the bound was
dropped. llama.cpp's own C++ converter (llama-server, Ollama) enforces integer bounds; so does
this one, with the same idea: digits constrained position by position (:func:`integer_range`).
Bounds on ``number`` (floats) and ``multipleOf`` are not enforced, as in llama.cpp.
"""

from __future__ import annotations

import json
import math
from typing import Any

from llama_cpp import llama_grammar

from edgeinfer.errors import InvalidRequest

_PARAM = "response_format"
_DIGITS = 18
_LIMIT = 10**_DIGITS
"""Integer bounds beyond this are refused: the grammar grows with the square of a bound's
digits (a 4,000-digit maximum built 144 MB of grammar before the size limit refused it)."""
_SchemaConverter: Any = llama_grammar.SchemaConverter  # untyped: read through Any


def schema_to_gbnf(schema: str) -> str:
    """The GBNF grammar for a JSON schema (its text), integer bounds included."""
    converter = _Converter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    resolved = converter.resolve_refs(json.loads(schema), "stdin")
    converter.visit(resolved, "")
    return str(converter.format_grammar())


class _Converter(_SchemaConverter):  # type: ignore[misc]
    def visit(self, schema: Any, name: str) -> Any:
        bounds = _integer_bounds(schema)
        if bounds is None:
            return super().visit(schema, name)
        rule_name = name + "-" if name in llama_grammar.RESERVED_NAMES else name or "root"
        return self._add_rule(rule_name, f"({integer_range(*bounds)}) space")


def _integer_bounds(schema: Any) -> tuple[int | None, int | None] | None:
    """(lowest, highest) allowed for an integer schema with bounds; None for any other."""
    if not isinstance(schema, dict) or schema.get("type") != "integer":
        return None
    if any(k in schema for k in ("$ref", "oneOf", "anyOf", "const", "enum")):
        return None  # the converter's own cases come first
    given: dict[str, float | None] = {}  # each bound that is a number (a bool is not one)
    for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        value = schema.get(key)
        if key in ("minimum", "maximum") and isinstance(value, bool):
            raise InvalidRequest(
                f"response_format.json_schema: {key} must be a number, not {value}", param=_PARAM
            )
        number = value if isinstance(value, int | float) and not isinstance(value, bool) else None
        if number is not None and abs(number) > _LIMIT:
            raise InvalidRequest(  # its digits would make a grammar of megabytes
                f"response_format.json_schema: integer bound {key} is beyond ±10^{_DIGITS}",
                param=_PARAM,
            )
        given[key] = number
    low: int | None = None
    high: int | None = None
    try:
        if (value := given["minimum"]) is not None:
            low = math.ceil(value)
            if schema.get("exclusiveMinimum") is True and low == value:  # draft 4
                low += 1
        if (value := given["exclusiveMinimum"]) is not None:
            bound = math.floor(value) + 1
            low = bound if low is None else max(low, bound)
        if (value := given["maximum"]) is not None:
            high = math.floor(value)
            if schema.get("exclusiveMaximum") is True and high == value:
                high -= 1
        if (value := given["exclusiveMaximum"]) is not None:
            bound = math.ceil(value) - 1
            high = bound if high is None else min(high, bound)
    except (OverflowError, ValueError) as exc:  # Infinity or NaN in the schema
        raise InvalidRequest(
            f"response_format.json_schema: an integer bound is not a finite number ({exc})",
            param=_PARAM,
        ) from exc
    if low is None and high is None:
        return None
    if low is not None and high is not None and low > high:
        raise InvalidRequest(
            f"response_format.json_schema: no integer lies between the bounds of {schema}",
            param=_PARAM,
        )
    return low, high


def integer_range(low: int | None, high: int | None) -> str:
    """A GBNF expression matching exactly the JSON integers in [low, high] (None: unbounded),
    written as JSON writes them: no leading zeros, no "-0"."""
    parts = []
    if high is None or high >= 0:  # zero and the positive integers
        parts += _naturals(max(low or 0, 0), high)
    if low is None or low < 0:  # "-" and the magnitudes of the negative integers
        top = None if low is None else -low
        parts += [f'"-" ({p})' for p in _naturals(max(1, -high if high is not None else 1), top)]
    return " | ".join(parts)


def _naturals(low: int, high: int | None) -> list[str]:
    """Alternatives matching the integers in [low, high] (low >= 0), one per digit count."""
    if high is not None and low > high:
        return []
    out = []
    digits = len(str(low))
    while high is None or digits <= len(str(high)):
        first = max(low, 10 ** (digits - 1) if digits > 1 else 0)
        last = 10**digits - 1 if high is None else min(high, 10**digits - 1)
        if first <= last:
            out.append(_same_length(str(first), str(last)))
        if high is None:  # every longer number: a leading 1-9, then at least this many digits
            out.append(f"[1-9] {_any_digits(digits)} [0-9]*")
            break
        digits += 1
    return out


def _same_length(low: str, high: str) -> str:
    """Numbers of one length from ``low`` to ``high``, as GBNF (both strings equally long)."""
    if low == high:
        return f'"{low}"'
    i = next(k for k in range(len(low)) if low[k] != high[k])
    prefix = f'"{low[:i]}" ' if i else ""
    rest = len(low) - i - 1
    if rest == 0:
        return f"{prefix}[{low[i]}-{high[i]}]"
    any_rest = _any_digits(rest)
    alternatives = [f'"{low[i]}" ({_at_least(low[i + 1 :])})']
    if int(low[i]) + 1 <= int(high[i]) - 1:
        alternatives.append(f"[{int(low[i]) + 1}-{int(high[i]) - 1}] {any_rest}")
    alternatives.append(f'"{high[i]}" ({_at_most(high[i + 1 :])})')
    return f"{prefix}({' | '.join(alternatives)})"


def _at_least(digits: str) -> str:
    """Digit strings of this length that are >= ``digits``."""
    return _beyond(digits, up=True)


def _at_most(digits: str) -> str:
    """Digit strings of this length that are <= ``digits``."""
    return _beyond(digits, up=False)


def _beyond(digits: str, *, up: bool) -> str:
    """Digit strings of this length on one side of ``digits`` (itself included): each is
    ``digits``' first digit followed by the same on the rest, or a first digit further out
    followed by anything."""
    far = "9" if up else "0"
    if digits.strip("0" if up else "9") == "":  # 000 and up, 999 and down: any digits
        return _any_digits(len(digits))
    head, rest = digits[0], digits[1:]
    beyond = f"{int(head) + 1}-9" if up else f"0-{int(head) - 1}"
    if not rest:
        return f"[{head}-9]" if up else f"[0-{head}]"
    options = [f'"{head}" ({_beyond(rest, up=up)})']
    if head != far:
        options.append(f"[{beyond}] {_any_digits(len(rest))}")
    return " | ".join(options)


def _any_digits(n: int) -> str:
    return " ".join(["[0-9]"] * n)


__all__ = ["integer_range", "schema_to_gbnf"]
