"""Numbers and units in a question: ``5 km``, ``twenty-five``, ``$3M``, ``30°C``, ``km/h``.

Numbers are normalised to one spelling (``5`` = ``five`` = ``5.0``; ``2nd`` = ``second`` = 2) so
the guard can compare them as multisets; a unit right after (or a currency sign right before) a
number is kept with it.
"""

from __future__ import annotations

import re

from edgeinfer.cache import lexicon as lx
from edgeinfer.cache.tokens import Token

_THOUSANDS = re.compile(r"^\d{1,3}(?:,\d{3})+$")
_ORDINAL_SUFFIX = frozenset({"st", "nd", "rd", "th"})


def numbers_and_units(
    tokens: tuple[Token, ...],
) -> tuple[list[str], set[tuple[str, str]], set[str]]:
    """(numbers in order, (number, unit) pairs, every unit named)."""
    numbers, quantities = _numbers(tokens)
    return numbers, quantities, _standalone_units(tokens) | {u for _, u in quantities}


def _number_value(tokens: tuple[Token, ...], i: int) -> tuple[float | None, int]:
    """The number starting at token ``i`` (digits or words) and how many tokens it spans."""
    tok = tokens[i]
    if tok.kind == "num":
        raw = tok.low.replace(",", "") if _THOUSANDS.match(tok.low) else tok.low.replace(",", ".")
        try:
            value = float(raw)
        except ValueError:
            return None, 1
        span = 1
    elif tok.low in lx.NUMBER_WORDS or tok.low in lx.MAGNITUDES or "-" in tok.low:
        word_value, span = _word_number(tokens, i)
        if word_value is None:
            return None, 1
        value = word_value
    else:
        return None, 1
    while i + span < len(tokens) and tokens[i + span].low in lx.MAGNITUDES:
        value *= lx.MAGNITUDES[tokens[i + span].low]
        span += 1
    return value, span


def _word_number(tokens: tuple[Token, ...], i: int) -> tuple[float | None, int]:
    parts: list[str] = []
    span = 0
    while i + span < len(tokens):
        words = tokens[i + span].low.split("-")
        if not all(w in lx.NUMBER_WORDS or w in lx.MAGNITUDES for w in words):
            break
        parts += words
        span += 1
    counted = i > 0 and tokens[i - 1].low in ("a", "an", "one")  # "a hundred"
    if not parts or (all(p in lx.MAGNITUDES for p in parts) and not counted):
        return None, 1
    total, current = 0.0, 0.0
    for part in parts:
        if part in lx.MAGNITUDES:
            current = max(current, 1.0) * lx.MAGNITUDES[part]
            if lx.MAGNITUDES[part] >= 1000:
                total, current = total + current, 0.0
        else:
            current += lx.NUMBER_WORDS[part]
    return total + current, span


def _numbers(tokens: tuple[Token, ...]) -> tuple[list[str], set[tuple[str, str]]]:
    numbers: list[str] = []
    quantities: set[tuple[str, str]] = set()
    i = 0
    while i < len(tokens):
        value, span = _number_value(tokens, i)
        if value is None:
            if tokens[i].low in lx.ORDINALS and not (i and tokens[i - 1].kind == "num"):
                numbers.append(str(lx.ORDINALS[tokens[i].low]))
            i += span
            continue
        j = i + span
        if j < len(tokens) and tokens[j].text in lx.MULTIPLIERS:
            value, j = value * lx.MULTIPLIERS[tokens[j].text], j + 1
        if j < len(tokens) and tokens[j].low in _ORDINAL_SUFFIX:
            j += 1  # 2nd counts as 2, like "second"
        numbers.append(_fmt(value))
        unit = _unit_after(tokens, j) or _unit_before(tokens, i)
        if unit is not None:
            quantities.add((_fmt(value), unit))
        i = j
    return numbers, quantities


def _standalone_units(tokens: tuple[Token, ...]) -> set[str]:
    """Units named anywhere; ``km/h`` and ``miles per hour`` become rates."""
    units: set[str] = set()
    for i, tok in enumerate(tokens):
        unit = lx.UNITS.get(tok.low) if tok.low not in lx.AFTER_NUMBER_ONLY else None
        after = [t.low for t in tokens[i + 1 : i + 3]]
        if tok.low in lx.UNITS and len(after) == 2 and after[0] in ("/", "per"):
            per = lx.UNITS.get(after[1]) or lx.SHORT_UNITS.get(after[1])
            if per is not None:
                units.add(f"{lx.UNITS[tok.low]}/{per}")
                continue
        if unit is not None:
            units.add(unit)
    return units


def _unit_after(tokens: tuple[Token, ...], j: int) -> str | None:
    unit = None
    if j + 1 < len(tokens) and tokens[j].low == "-":  # "3-day"
        j += 1
    while j < len(tokens):
        low = tokens[j].low
        found = lx.UNITS.get(low) or lx.SHORT_UNITS.get(low)
        if low == "°":
            found = "degree"
        elif j and tokens[j - 1].low == "°" and low in ("c", "f", "k"):
            found = {"c": "celsius", "f": "fahrenheit", "k": "kelvin"}[low]
        if found is None:
            break
        unit, j = found, j + 1
    return unit


def _unit_before(tokens: tuple[Token, ...], i: int) -> str | None:
    if i and tokens[i - 1].low in ("$", "€", "£", "¥"):
        return lx.UNITS[tokens[i - 1].low]
    return None


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(round(value, 6))
