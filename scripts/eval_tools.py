"""Tool-calling accuracy of a served model: grammar-enforced (``tool_choice: required``) vs
free generation (``auto``), on prompts that each need one call with known arguments.

Starts nothing: point it at a running daemon's socket.

    edgeinfer serve --models tiny --socket /tmp/ei.sock &
    python scripts/eval_tools.py --socket /tmp/ei.sock --model tiny

A call counts as *valid* when its name is a tool's and its arguments are a JSON object, *right
name* when it is the expected tool, and *right* when the arguments match too (the values the
prompt names, strings case-insensitively).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx


def _fn(name: str, description: str, props: dict[str, Any]) -> dict[str, Any]:
    params = {"type": "object", "properties": props, "required": list(props)}
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": params},
    }


TOOLS = [
    _fn(
        "get_weather",
        "Current weather in a city",
        {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    ),
    _fn("add", "Add two integers", {"a": {"type": "integer"}, "b": {"type": "integer"}}),
    _fn("search_web", "Search the web", {"query": {"type": "string"}}),
    _fn(
        "convert_currency",
        "Convert an amount of money",
        {
            "amount": {"type": "number"},
            "from_currency": {"type": "string"},
            "to_currency": {"type": "string"},
        },
    ),
    _fn("set_timer", "Start a countdown timer", {"minutes": {"type": "integer"}}),
]

CITIES = [
    "Paris",
    "Tokyo",
    "Berlin",
    "Cairo",
    "Lima",
    "Oslo",
    "Madrid",
    "Toronto",
    "Sydney",
    "Rome",
]
UNITS = ["celsius", "fahrenheit"]
SUMS = [
    (2, 3),
    (17, 25),
    (100, 250),
    (7, 8),
    (41, 1),
    (12, 30),
    (999, 1),
    (64, 36),
    (5, 55),
    (3, 4),
]
TOPICS = [
    "python asyncio tutorial",
    "best hiking boots",
    "history of the Roman empire",
    "how to bake sourdough",
    "latest Mars rover news",
    "rust borrow checker",
    "cheap flights to Lisbon",
    "symptoms of flu",
    "electric car prices",
    "jazz concerts tonight",
]
MONEY = [
    (100, "USD", "EUR"),
    (50, "EUR", "GBP"),
    (20, "GBP", "JPY"),
    (75, "USD", "CAD"),
    (10, "EUR", "USD"),
    (300, "JPY", "USD"),
    (42, "CHF", "EUR"),
    (15, "AUD", "USD"),
    (1000, "USD", "INR"),
    (5, "EUR", "CHF"),
]
MINUTES = [5, 10, 15, 20, 25, 30, 45, 60, 3, 90]


def cases() -> list[tuple[str, str, dict[str, Any]]]:
    """(prompt, expected tool, expected arguments): 50 prompts, 10 per tool."""
    out: list[tuple[str, str, dict[str, Any]]] = []
    for i, city in enumerate(CITIES):
        unit = UNITS[i % 2]
        out.append(
            (
                f"What is the weather in {city} right now, in {unit}?",
                "get_weather",
                {"city": city, "unit": unit},
            )
        )
    for a, b in SUMS:
        out.append((f"Please add {a} and {b}.", "add", {"a": a, "b": b}))
    for topic in TOPICS:
        out.append((f"Search the web for: {topic}", "search_web", {"query": topic}))
    for amount, src, dst in MONEY:
        out.append(
            (
                f"Convert {amount} {src} to {dst}.",
                "convert_currency",
                {"amount": amount, "from_currency": src, "to_currency": dst},
            )
        )
    for minutes in MINUTES:
        out.append((f"Set a timer for {minutes} minutes.", "set_timer", {"minutes": minutes}))
    return out


def matches(args: dict[str, Any], expected: dict[str, Any]) -> bool:
    if set(args) != set(expected):
        return False
    for key, want in expected.items():
        got = args[key]
        if isinstance(want, str):
            if not isinstance(got, str) or got.strip().lower() != want.lower():
                return False
        elif not isinstance(got, int | float) or float(got) != float(want):
            return False
    return True


def one(
    client: httpx.Client, model: str, choice: str, max_tokens: int, case: tuple[str, str, Any]
) -> dict[str, int]:
    prompt, name, expected = case
    tally = {"cases": 1, "valid": 0, "right_name": 0, "right": 0}
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "tools": TOOLS,
        "tool_choice": choice,
        "parallel_tool_calls": False,
        "temperature": 0,
        "max_tokens": max_tokens,
        "stop": ["</tool_call>"],  # the parser needs no closing tag; saves the babble after
        "edgeinfer": {"cache": "off"},
    }
    r = client.post("/v1/chat/completions", json=body)
    r.raise_for_status()
    calls = r.json()["choices"][0]["message"].get("tool_calls") or []
    if not calls:
        return tally
    fn = calls[0]["function"]
    args = json.loads(fn["arguments"])
    tally["valid"] += 1
    tally["right_name"] += fn["name"] == name
    tally["right"] += fn["name"] == name and matches(args, expected)
    return tally


def run(client: httpx.Client, model: str, modes: list[str], max_tokens: int) -> dict[str, Any]:
    """Every case in every mode, 4 requests at a time (the model's slots batch them), the
    modes interleaved so a run cut short still compares them on the same prompts. Each result
    is logged to stderr as it comes."""
    tallies = {m: {"cases": 0, "valid": 0, "right_name": 0, "right": 0} for m in modes}
    work = [(i, c, m) for i, c in enumerate(cases()) for m in modes]
    with ThreadPoolExecutor(4) as pool:
        jobs = [(i, m, pool.submit(one, client, model, m, max_tokens, c)) for i, c, m in work]
        for i, mode, job in jobs:
            result = job.result()
            for key, value in result.items():
                tallies[mode][key] += value
            print(f"case {i} {mode}: {result} total {tallies[mode]}", file=sys.stderr, flush=True)
    return tallies


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--socket", required=True)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--modes", default="required,auto")
    ns = ap.parse_args()
    transport = httpx.HTTPTransport(uds=ns.socket)

    with httpx.Client(transport=transport, base_url="http://edgeinfer", timeout=600) as client:
        t0 = time.monotonic()
        tallies = run(client, ns.model, ns.modes.split(","), ns.max_tokens)
        rows = [(mode, tally, time.monotonic() - t0) for mode, tally in tallies.items()]
    head = "| model | tool_choice | prompts | valid call | right name | right name + args | time |"
    print(head)
    print("|---|---|---|---|---|---|---|")
    for mode, t, secs in rows:
        n = t["cases"]
        cells = [f"{t[k]}/{n} ({100 * t[k] / n:.0f}%)" for k in ("valid", "right_name", "right")]
        print(f"| {ns.model} | {mode} | {n} | {' | '.join(cells)} | {secs:.0f} s |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
