"""Table tests of the cache keys and the cacheability policy (pure functions)."""

from __future__ import annotations

from typing import Any

import pytest

from edgeinfer.cache.key import (
    DEFAULT_THRESHOLD,
    cache_mode,
    cache_threshold,
    exact_key,
    namespace_key,
    output_fields,
    semantic_question,
)
from edgeinfer.errors import InvalidRequest

SYSTEM = {"role": "system", "content": "You are terse."}
Q = {"role": "user", "content": "What is the capital of France?"}
BASE: dict[str, Any] = {
    "model": "tiny",
    "digest": "a" * 64,
    "messages": [SYSTEM, Q],
    "sampling": {"temperature": 0, "max_tokens": 64},
}


def _with(**changes: Any) -> dict[str, Any]:
    return {**BASE, **changes}


def _keys(req: dict[str, Any]) -> tuple[str, str]:
    args = (req["model"], req["digest"], req["messages"], req["sampling"])
    return exact_key(*args), namespace_key(*args)


@pytest.mark.parametrize(
    ("name", "request_", "exact_same", "namespace_same"),
    [
        ("another model route", _with(model="small"), False, False),
        ("another model file", _with(digest="b" * 64), False, False),
        ("another system prompt", _with(messages=[{**SYSTEM, "content": "Be verbose."}, Q]),
         False, False),
        ("an earlier turn", _with(messages=[SYSTEM, Q, {"role": "assistant", "content": "Paris"},
                                            {"role": "user", "content": "And Spain?"}]),
         False, False),
        ("another last question", _with(messages=[SYSTEM, {"role": "user", "content": "Hi"}]),
         False, True),
        ("another temperature", _with(sampling={"temperature": 0.7, "max_tokens": 64}),
         False, False),
        ("another max_tokens", _with(sampling={"temperature": 0, "max_tokens": 65}), False, False),
        ("a seed", _with(sampling={"temperature": 0, "max_tokens": 64, "seed": 1}), False, False),
        ("a stop sequence", _with(sampling={"temperature": 0, "max_tokens": 64, "stop": ["\n"]}),
         False, False),
        ("an unknown new field", _with(sampling={"temperature": 0, "max_tokens": 64, "x": 1}),
         False, False),
        ("0.0 instead of 0", _with(sampling={"temperature": 0.0, "max_tokens": 64.0}), True, True),
        ("stream on", _with(sampling={"temperature": 0, "max_tokens": 64, "stream": True}),
         True, True),
        ("user and edgeinfer fields",
         _with(sampling={"temperature": 0, "max_tokens": 64, "user": "u",
                         "edgeinfer": {"cache": "exact"}}), True, True),
        ("null for absent", _with(sampling={"temperature": 0, "max_tokens": 64, "seed": None}),
         True, True),
        ("key order", _with(sampling={"max_tokens": 64, "temperature": 0}), True, True),
    ],
)  # fmt: skip
def test_what_changes_the_keys(
    name: str, request_: dict[str, Any], exact_same: bool, namespace_same: bool
) -> None:
    base_exact, base_ns = _keys(BASE)
    exact, ns = _keys(request_)
    assert (exact == base_exact) is exact_same, name
    assert (ns == base_ns) is namespace_same, name


def test_keys_are_hex_sha256_and_differ_from_each_other() -> None:
    exact, ns = _keys(BASE)
    assert len(exact) == len(ns) == 64 and exact != ns
    int(exact, 16)


def test_namespace_keeps_an_assistant_prefill_after_the_last_user_turn() -> None:
    prefill = {"role": "assistant", "content": "The answer is"}
    a = namespace_key("tiny", "d", [Q, prefill], {})
    b = namespace_key("tiny", "d", [Q], {})
    assert a != b


@pytest.mark.parametrize(
    ("messages", "question"),
    [
        ([SYSTEM, Q], Q["content"]),
        ([Q, {"role": "assistant", "content": "Paris"}], Q["content"]),
        ([{"role": "user", "content": [{"type": "text", "text": "a"},
                                       {"type": "text", "text": "b"}]}], "a\nb"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], None),
        ([SYSTEM], None),
        ([{"role": "user", "content": "   "}], None),
    ],
)  # fmt: skip
def test_semantic_question(messages: list[dict[str, Any]], question: str | None) -> None:
    assert semantic_question(messages) == question


@pytest.mark.parametrize(
    ("requested", "temperature", "seed", "mode"),
    [
        (None, 0.0, None, "semantic"),  # deterministic: both layers by default
        (None, 0.7, 42, "semantic"),  # a fixed seed makes it deterministic (the key has it)
        (None, 0.7, None, "off"),  # sampled: not cached unless asked
        (None, 1e-9, None, "off"),
        ("exact", 0.7, None, "exact"),  # an explicit opt-in wins
        ("semantic", 0.7, None, "semantic"),
        ("off", 0.0, None, "off"),  # and an explicit opt-out
        ("exact", 0.0, None, "exact"),
    ],
)
def test_cache_mode(requested: str | None, temperature: float, seed: int | None, mode: str) -> None:
    assert cache_mode(requested, temperature, seed) == mode


def test_cache_mode_rejects_unknown_values_naming_the_field() -> None:
    with pytest.raises(InvalidRequest) as err:
        cache_mode("always", 0.0, None)
    assert err.value.param == "edgeinfer.cache"


@pytest.mark.parametrize(
    ("requested", "expected"), [(None, DEFAULT_THRESHOLD), (0.8, 0.8), (1, 1.0), (0.5, 0.5)]
)
def test_cache_threshold(requested: float | None, expected: float) -> None:
    assert cache_threshold(requested) == expected


@pytest.mark.parametrize("bad", [0, 0.01, 0.49, -0.1, 1.01, True, "0.9"])
def test_cache_threshold_out_of_range(bad: Any) -> None:
    with pytest.raises(InvalidRequest) as err:
        cache_threshold(bad)
    assert err.value.param == "edgeinfer.cache_threshold"


def test_output_fields_canonicalise_nested_values() -> None:
    fields = output_fields({"logit_bias": {"50": 1.0}, "stop": ("a",), "stream": True, "n": None})
    assert fields == {"logit_bias": {"50": 1}, "stop": ["a"]}
