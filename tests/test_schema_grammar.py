"""Integer bounds in structured output: the converter dropped them, so a schema's
``"minimum": 5, "maximum": 10`` still let the model answer -1 (found by a hostile-input audit).
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

import pytest
from llama_cpp import llama_grammar

from edgeinfer.engine.llama.schema import integer_range, schema_to_gbnf
from edgeinfer.errors import InvalidRequest
from tests.conftest import Daemon


def as_regex(gbnf: str) -> re.Pattern[str]:
    """The GBNF subset integer_range writes (literals, classes, groups, |, *) as a regex."""
    out, i = [], 0
    while i < len(gbnf):
        c = gbnf[i]
        if c == '"':
            end = gbnf.index('"', i + 1)
            out.append(re.escape(gbnf[i + 1 : end]))
            i = end + 1
        elif c == "[":
            end = gbnf.index("]", i)
            out.append(gbnf[i : end + 1])
            i = end + 1
        elif c == "(":
            out.append("(?:")
            i += 1
        elif c in ")|*":
            out.append(c)
            i += 1
        elif c == " ":
            i += 1
        else:
            raise ValueError(f"not written by integer_range: {gbnf[i:]!r}")
    return re.compile("".join(out))


FIXED = [
    (5, 10), (0, 0), (-1, 1), (None, 5), (5, None), (-10, -3), (None, -3), (-3, None),
    (123, 4567), (99, 101), (0, None), (None, 0), (-120, 250), (1000, 1000), (19, 2001),
]  # fmt: skip
STARTS = random.Random(1).sample(range(-2500, 2500), 40)
RANDOM = [(a, a + random.Random(a).choice([0, 7, 60, 900])) for a in STARTS]


@pytest.mark.parametrize(("low", "high"), FIXED + RANDOM)
def test_integer_range_matches_exactly_the_integers_between_its_bounds(
    low: int | None, high: int | None
) -> None:
    pattern = as_regex(integer_range(low, high))
    for n in range(-3000, 3000):
        inside = (low is None or n >= low) and (high is None or n <= high)
        assert bool(pattern.fullmatch(str(n))) == inside, n
    for text in ["-0", "00", "01", "007", "+5", "", "-", "5 ", "1.0"]:  # not how JSON writes one
        assert not pattern.fullmatch(text), text


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"n": {"type": "integer"}, "s": {"type": "string"}}},
        {"type": "array", "items": {"type": "number", "minimum": 0}},  # floats: as the converter
        {"type": "integer", "enum": [1, 2, 3], "minimum": 2},
        {"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 3}]},
    ],
)
def test_schemas_without_integer_bounds_convert_as_before(schema: dict[str, Any]) -> None:
    text = json.dumps(schema)
    assert schema_to_gbnf(text) == llama_grammar.json_schema_to_gbnf(text)


@pytest.mark.parametrize(
    ("bounds", "allowed"),
    [
        ({"minimum": 1.5, "maximum": 4.2}, (2, 4)),
        ({"exclusiveMinimum": 1, "exclusiveMaximum": 4}, (2, 3)),
        ({"minimum": 1, "exclusiveMinimum": True, "maximum": 4, "exclusiveMaximum": True}, (2, 3)),
        ({"minimum": 0, "exclusiveMinimum": 2}, (3, None)),
    ],
)
def test_each_form_of_bound_is_read(
    bounds: dict[str, Any], allowed: tuple[int, int | None]
) -> None:
    grammar = schema_to_gbnf(json.dumps({"type": "integer", **bounds}))
    assert f"root ::= ({integer_range(*allowed)}) space" in grammar


@pytest.mark.parametrize(
    ("bounds", "named"),
    [
        ({"minimum": 1.5, "maximum": 1.6}, "no integer lies between"),
        ({"minimum": 5, "maximum": 4}, "no integer lies between"),
        ({"minimum": float("nan")}, "not a finite number"),
        ({"maximum": 10**4000}, r"beyond ±10\^18"),  # 144 MB of grammar before this check
        ({"minimum": -1e300}, r"beyond ±10\^18"),
        ({"minimum": float("inf")}, r"beyond ±10\^18"),
        ({"minimum": True}, "minimum must be a number"),
    ],
)
def test_bounds_no_integer_meets_or_too_long_are_a_400(bounds: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidRequest, match=named) as err:
        schema_to_gbnf(json.dumps({"type": "integer", **bounds}))
    assert err.value.param == "response_format"


@pytest.mark.real
def test_the_model_answers_within_the_bounds(daemon: Daemon) -> None:
    """The audit's request: without the bounds in the grammar tiny answered {"n": -1}."""
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 5, "maximum": 10}},
        "required": ["n"],
    }
    body = {
        "model": "tiny",
        "temperature": 0,
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "What is minus one thousand as a number?"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
        "edgeinfer": {"cache": "off"},
    }
    with daemon.client() as c:
        r = c.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    assert 5 <= json.loads(r.json()["choices"][0]["message"]["content"])["n"] <= 10
