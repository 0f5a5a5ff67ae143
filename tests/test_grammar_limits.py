"""Grammar bombs: schemas whose grammar would crash or swamp llama.cpp are refused with a 400.

Before these limits, ``{"type": "string", "maxLength": 100000}`` reached llama.cpp's recursive
grammar parser as 100,000 nested groups and killed the daemon with a stack overflow.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from edgeinfer.engine.grammar_limits import MAX_REPEAT, check_grammar, check_schema
from edgeinfer.errors import InvalidRequest
from tests.conftest import Daemon


def nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


BOMBS = [
    ({"type": "string", "maxLength": 100_000}, "maxLength 100000"),
    ({"type": "array", "items": {"type": "integer"}, "minItems": 2_000_000}, "minItems"),
    ({"type": "object", "properties": {"x": {"type": "string", "minLength": 5000}}}, "minLength"),
    ({"type": "string", "pattern": "^a{0,100000}$"}, "pattern repetition"),
    ({"anyOf": [{"type": "array", "maxItems": 10**40}]}, "maxItems"),
    (nested(40), "nests deeper than"),
    # a few KB of grammar, but one sampling step ran for over ten minutes in llama.cpp's matcher
    ({"type": "string", "pattern": "^(a|b?){0,1000}c$"}, "repeats a part that can match nothing"),
]
TOO_WIDE = (  # passes the checks, but the converter recurses once per optional property
    {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(5000)}},
    "too large to turn into a grammar",
)


@pytest.mark.parametrize(("schema", "named"), BOMBS)
def test_schemas_that_expand_too_far_are_refused_naming_the_limit(
    schema: dict[str, Any], named: str
) -> None:
    with pytest.raises(InvalidRequest, match=named) as err:
        check_schema(schema)
    assert err.value.param == "response_format"


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "maxLength": MAX_REPEAT},
        {"type": "array", "items": {"type": "integer"}, "minItems": 3, "maxItems": 10},
        {"type": "string", "pattern": "^[0-9]{3}-[0-9]{4}$"},
        nested(10),
    ],
)
def test_ordinary_schemas_pass(schema: dict[str, Any]) -> None:
    check_schema(schema)


@pytest.mark.parametrize(
    ("pattern", "explodes"),
    [
        ("^(a?){20,50}c$", True),
        ("(a*)*", True),
        ("(a|)+", True),
        ("((ab)?c?)*", True),
        ("x(?:(?=y))+", True),
        ("^([a-z]+ ?){20,200}$", False),  # ambiguous, but every round matches something
        ("^(a{1,30}){10,30}$", False),
        ("((ab)?c)*", False),
        ("(\\d+)?", False),  # optional once, not repeated
        ("^(?P<x>a)(?(x)b|c)$", False),
        ("[", False),  # not a regex Python reads: the converter judges it, as before
    ],
)
def test_a_pattern_repeating_what_can_match_nothing_is_refused(
    pattern: str, explodes: bool
) -> None:
    """Measured on tiny: (a?){20,50} costs 2 s for 16 tokens and (a|b?){20,50} 66 s, where
    ambiguous repetitions of parts that always match something cost 0.4 s."""
    schema = {"type": "string", "pattern": pattern}
    if explodes:
        with pytest.raises(InvalidRequest, match="repeats a part that can match nothing"):
            check_schema(schema)
    else:
        check_schema(schema)


def test_grammar_depth_counts_groups_not_parentheses_in_literals_or_classes() -> None:
    check_grammar('root ::= "(((((" [(((] ' + "(" * 900 + '"a"' + ")" * 900)
    with pytest.raises(InvalidRequest, match="nested 1001 levels"):
        check_grammar("root ::= " + "(" * 1001 + '"a"' + ")" * 1001)
    with pytest.raises(InvalidRequest, match="byte grammar"):
        check_grammar('root ::= "' + "a" * (300 << 10) + '"')


@pytest.mark.real
@pytest.mark.parametrize(("schema", "named"), [*BOMBS, TOO_WIDE])
def test_grammar_bombs_get_400_and_the_daemon_stays_up(
    daemon: Daemon, schema: dict[str, Any], named: str
) -> None:
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "Give me JSON."}],
        "max_tokens": 8,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
        "edgeinfer": {"cache": "off"},
    }
    with daemon.client() as c:
        r = c.post("/v1/chat/completions", json=body)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == "response_format" and named in error["message"]
        assert c.get("/health").status_code == 200
    assert daemon.proc.poll() is None


@pytest.mark.real
def test_a_schema_at_the_limit_still_constrains_the_answer(daemon: Daemon) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": MAX_REPEAT}},
        "required": ["name"],
    }
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "Name a colour as JSON."}],
        "max_tokens": 24,
        "temperature": 0,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
        "edgeinfer": {"cache": "off"},
    }
    with daemon.client() as c:
        r = c.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    answer = json.loads(r.json()["choices"][0]["message"]["content"])
    assert isinstance(answer["name"], str) and 0 < len(answer["name"]) <= MAX_REPEAT
