"""Limits on structured-output grammars, checked before any native code sees them.

``response_format: json_schema`` becomes a GBNF grammar (llama-cpp-python's converter), which
llama.cpp parses recursively when a request's sampler is built. Some schemas expand out of all
proportion: ``{"type": "string", "maxLength": 100000}`` turns into 100,000 nested optional
groups, which overflow llama.cpp's parser stack and kill the process; ``minItems: 2000000``
builds a 34 MiB grammar. Measured on llama-cpp-python 0.3.36: a bounded repetition of 1,000
parses in about a millisecond, llama.cpp itself refuses from about 1,500, and 30,000 crashes.

So a schema is refused with a 400 naming the limit when a repetition bound (``minLength``,
``maxLength``, ``minItems``, ``maxItems``, ``minProperties``, ``maxProperties``, or a ``{m,n}``
in a ``pattern``) exceeds :data:`MAX_REPEAT`, or it nests deeper than :data:`MAX_SCHEMA_DEPTH`
(checked *before* conversion, so the converter never builds a huge grammar), and a converted
grammar is refused when it is larger than :data:`MAX_GRAMMAR_BYTES` or its groups nest deeper
than :data:`MAX_GRAMMAR_DEPTH` (checked after, whatever produced the nesting). The engine
calls both from ``grammar_for``, which runs off the event loop.

Size is not the only bomb: a ``pattern`` that repeats a part able to match nothing
(``^(a|b?){0,1000}c$``, a few KB of grammar) made one sampling step run for over ten minutes
in llama.cpp's matcher, holding its slot and, on two cores, every other request to the model.
Such patterns are refused too (:func:`_repeats_nothing`).
"""

from __future__ import annotations

import re
import re._constants as sre  # type: ignore[import-not-found]  # the stdlib's own regex parser,
import re._parser as sre_parse  # type: ignore[import-not-found]  # private and unstubbed
from typing import Any

from edgeinfer.errors import InvalidRequest

MAX_REPEAT = 1000
MAX_SCHEMA_DEPTH = 32
MAX_GRAMMAR_BYTES = 256 << 10
MAX_GRAMMAR_DEPTH = 1000

_BOUNDS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties")
_QUANTIFIER = re.compile(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")
_PARAM = "response_format"


def check_schema(schema: Any) -> None:
    """Raise InvalidRequest for a JSON schema whose grammar would be too large or too deep."""
    stack: list[tuple[Any, int]] = [(schema, 1)]
    while stack:  # iterative: a hostile nesting depth must not cost Python's stack either
        node, depth = stack.pop()
        if isinstance(node, list):
            stack.extend((item, depth) for item in node)
            continue
        if not isinstance(node, dict):
            continue
        if depth > MAX_SCHEMA_DEPTH:
            raise InvalidRequest(
                f"response_format.json_schema nests deeper than {MAX_SCHEMA_DEPTH} levels",
                param=_PARAM,
            )
        for key in _BOUNDS:
            value = node.get(key)
            if isinstance(value, int | float) and value > MAX_REPEAT:
                raise InvalidRequest(
                    f"response_format.json_schema: {key} {value} is over the limit of "
                    f"{MAX_REPEAT} (each bounded repetition becomes a nested grammar group)",
                    param=_PARAM,
                )
        pattern = node.get("pattern")
        if isinstance(pattern, str):
            _check_pattern(pattern)
        stack.extend(
            (value, depth + 1) for value in node.values() if isinstance(value, dict | list)
        )


def _check_pattern(pattern: str) -> None:
    for match in _QUANTIFIER.finditer(pattern):
        bound = max(int(n) for n in match.groups() if n)
        if bound > MAX_REPEAT:
            raise InvalidRequest(
                f"response_format.json_schema: pattern repetition {match.group(0)} is over the "
                f"limit of {MAX_REPEAT}",
                param=_PARAM,
            )
    try:
        tree = sre_parse.parse(pattern)
        empty = _repeats_nothing(tree)
    except Exception:  # not one Python reads (or a parser of another shape): as before
        return
    if empty:
        raise InvalidRequest(
            f"response_format.json_schema: pattern {pattern[:80]!r} repeats a part that can "
            "match nothing (like (a|b?){0,50} or (a*)*): llama.cpp's grammar matcher keeps "
            "every way of skipping it ((a|b?){20,50} took 66 s for 16 tokens); repeat a part "
            "that always matches something",
            param=_PARAM,
        )


_REPEATS = {sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT}


def _repeats_nothing(seq: Any) -> bool:
    """Whether a parsed pattern repeats (more than once) an item that can match the empty
    string. Such an item can be taken or skipped at every step, and llama.cpp's matcher keeps
    each way as a stack of its own: measured on tiny, (a?){20,50} costs 2 s for 16 tokens,
    (a|b?){20,50} 66 s, while ambiguous items that always match something (([a-z]+ ?){20,200},
    (a{1,30}){10,30}) cost 0.4 s."""
    return _read(seq)[1]


def _read(seq: Any) -> tuple[bool, bool]:
    """(whether a parsed pattern can match the empty string, whether it repeats an item that
    can), in one walk."""
    nullable, repeats_nothing = True, False
    for op, av in seq:
        if op in _REPEATS:
            low, high, item = av
            inner, deeper = _read(item)
            empty = low == 0 or inner
            repeats_nothing |= deeper or (high > 1 and inner)
        elif op is sre.BRANCH:
            branches = [_read(branch) for branch in av[1]]
            empty = any(e for e, _ in branches)
            repeats_nothing |= any(r for _, r in branches)
        elif op in (sre.SUBPATTERN, sre.ATOMIC_GROUP):
            empty, deeper = _read(av[3] if op is sre.SUBPATTERN else av)
            repeats_nothing |= deeper
        elif op is sre.GROUPREF_EXISTS:
            (yes, in_yes), (no, in_no) = _read(av[1]), _read(av[2] or [])
            empty = yes or no
            repeats_nothing |= in_yes or in_no
        else:  # anchors, lookarounds and back-references match nothing; characters match one
            empty = op in (sre.AT, sre.ASSERT, sre.ASSERT_NOT, sre.GROUPREF)
        nullable = nullable and empty
    return nullable, repeats_nothing


def check_grammar(grammar: str) -> None:
    """Raise InvalidRequest for a GBNF grammar too large or too deeply nested to parse safely."""
    size = len(grammar.encode())
    if size > MAX_GRAMMAR_BYTES:
        raise InvalidRequest(
            f"response_format expands to a {size:,}-byte grammar, over the limit of "
            f"{MAX_GRAMMAR_BYTES:,}",
            param=_PARAM,
        )
    depth = deepest = 0
    quoted = escaped = in_class = False
    for ch in grammar:  # parentheses inside "literals" and [classes] do not nest
        if escaped:
            escaped = False
        elif ch == "\\" and (quoted or in_class):
            escaped = True
        elif quoted:
            quoted = ch != '"'
        elif in_class:
            in_class = ch != "]"
        elif ch == '"':
            quoted = True
        elif ch == "[":
            in_class = True
        elif ch == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif ch == ")":
            depth -= 1
    if deepest > MAX_GRAMMAR_DEPTH:
        raise InvalidRequest(
            f"response_format expands to a grammar nested {deepest} levels deep, over the "
            f"limit of {MAX_GRAMMAR_DEPTH}",
            param=_PARAM,
        )


__all__ = ["MAX_REPEAT", "check_grammar", "check_schema"]
