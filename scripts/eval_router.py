"""Router evaluation: accuracy and compute time of each tier alone, the router and the cascade,
side by side on one labelled set, in one run, on this machine.

Each prompt in the set (JSONL: prompt, answer regex, type, difficulty) is sent to the real daemon
over its socket, one at a time, greedy, with the response cache off. "Compute time" is the
wall-clock time of those sequential requests: what a user waits for, including the cascade's
discarded drafts. Each phase has its own daemon, so no phase inherits another's warm KV. By
default all of them are up at once and answer the set in turns of 25 prompts (``--interleave``),
so a machine whose speed drifts during the run weighs on every phase alike; ``--interleave 0``
runs one phase after another, one daemon at a time.

    python scripts/eval_router.py                       # tests/data/router_eval.jsonl
    python scripts/eval_router.py --data held_out.jsonl --max-tokens 64
    python scripts/eval_router.py --data tests/data/router_train.jsonl --phases tiers \
        --outcomes outcomes.jsonl                       # labelled outcomes for `router train`

Target (issue 5): the router or the cascade reaches >= 95% of large-only accuracy at <= 75% of
large-only compute time.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from edgeinfer import paths

sys.path.insert(0, str(Path(__file__).parent))
from _benchutil import BenchError, edgeinfer_daemon, note, post_chat, print_table  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Item:
    id: str
    prompt: str
    answer: re.Pattern[str]
    type: str
    difficulty: str


@dataclass
class Phase:
    """One way of answering the whole set: a tier alone, the router or the cascade."""

    name: str
    model: str
    route: str | None = None
    correct: int = 0
    seconds: float = 0.0
    answered: int = 0
    tiers_used: dict[str, int] = field(default_factory=dict)
    escalated: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return self.correct / self.answered if self.answered else 0.0


def load_items(path: Path, limit: int | None) -> list[Item]:
    items = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        pattern = re.compile(row["answer"], re.IGNORECASE)
        items.append(Item(row["id"], row["prompt"], pattern, row["type"], row["difficulty"]))
    return items[:limit] if limit else items


@contextmanager
def daemon(models: str, models_dir: Path, router: Sequence[str] = ()) -> Iterator[httpx.Client]:
    """A fresh daemon serving ``models``; ``router`` holds ``KEY=VALUE`` lines (TOML values)
    for its ``[router]`` table."""
    config = "[router]\n" + "\n".join(router) + "\n" if router else ""
    with edgeinfer_daemon(models, models_dir, config, timeout=600) as (client, _):
        yield client


def ask(client: httpx.Client, phase: Phase, item: Item, max_tokens: int, logprobs: bool) -> None:
    body: dict[str, Any] = {
        "model": phase.model,
        "messages": [{"role": "user", "content": item.prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "edgeinfer": {"cache": "off", **({"route": phase.route} if phase.route else {})},
    }
    if logprobs:
        body |= {"logprobs": True, "top_logprobs": 5}
    reply, text, elapsed = post_chat(client, body, item.id)
    ok = bool(item.answer.search(text))
    with _LOCK:
        _record(phase, item, reply, text, ok, elapsed, logprobs)


_LOCK = threading.Lock()


def _record(
    phase: Phase,
    item: Item,
    reply: dict[str, Any],
    text: str,
    ok: bool,
    elapsed: float,
    logprobs: bool,
) -> None:
    route = (reply.get("edgeinfer") or {}).get("route") or {}
    served = reply["model"]
    phase.answered += 1
    phase.correct += ok
    phase.seconds += elapsed
    phase.tiers_used[served] = phase.tiers_used.get(served, 0) + 1
    phase.escalated += bool(route.get("escalated"))
    row = {
        "id": item.id,
        "prompt": item.prompt,
        "type": item.type,
        "difficulty": item.difficulty,
        "tier": served,
        "correct": ok,
        "seconds": round(elapsed, 4),
        "completion_tokens": reply["usage"]["completion_tokens"],
        "finish_reason": reply["choices"][0]["finish_reason"],
        "text": text,
    }
    if route:
        row["route"] = route
    if logprobs and reply["choices"][0].get("logprobs"):
        row["logprobs"] = [
            [t["logprob"], [a["logprob"] for a in t["top_logprobs"]], t["token"]]
            for t in reply["choices"][0]["logprobs"]["content"]
        ]
    phase.rows.append(row)


def run_interleaved(
    phases: Sequence[tuple[Phase, str]], items: Sequence[Item], args: argparse.Namespace
) -> list[Phase]:
    """Every phase's daemon up at once (idle ones use no CPU), answering the set in turns of
    ``--interleave`` prompts: phase A's block, then B's on the same prompts, and so on. A
    machine that speeds up or slows down during the run then weighs on every phase alike,
    instead of on whichever phase it happened to run in. Never two requests at a time."""
    block = args.interleave
    with ExitStack() as stack:
        clients = [
            stack.enter_context(daemon(served, args.models_dir, args.router))
            for _, served in phases
        ]
        for start in range(0, len(items), block):
            chunk = items[start : start + block]
            for (phase, _), client in zip(phases, clients, strict=True):
                for item in chunk:
                    ask(client, phase, item, args.max_tokens, args.logprobs)
            done = start + len(chunk)
            note(
                f"  {done}/{len(items)}: "
                + ", ".join(f"{p.name} {p.accuracy:.0%} {p.seconds:.0f} s" for p, _ in phases)
            )
    return [phase for phase, _ in phases]


def run_phase(phase: Phase, served: str, items: Sequence[Item], args: argparse.Namespace) -> Phase:
    with daemon(served, args.models_dir, args.router) as client:
        note(f"{phase.name}: {len(items)} prompts")
        if args.concurrency > 1:  # outcome collection only: per-request times overlap
            with ThreadPoolExecutor(args.concurrency) as pool:
                list(
                    pool.map(
                        lambda it: ask(client, phase, it, args.max_tokens, args.logprobs), items
                    )
                )
            return phase
        for i, item in enumerate(items, 1):
            ask(client, phase, item, args.max_tokens, args.logprobs)
            if i % 25 == 0:
                note(f"  {i}/{len(items)}: {phase.accuracy:.1%} correct, {phase.seconds:.1f} s")
    return phase


TARGET_ACCURACY, TARGET_TIME = 0.97, 0.72
"""Issue 16: the router keeps this share of the reference's accuracy at most this share of its
time."""


def report(phases: Sequence[Phase], reference: str) -> None:
    ref = next((p for p in phases if p.name == reference), None)
    rows = []
    for p in phases:
        acc_share = p.accuracy / ref.accuracy if ref and ref.accuracy else None
        time_share = p.seconds / ref.seconds if ref and ref.seconds else None
        mix = ", ".join(f"{k} {v}" for k, v in sorted(p.tiers_used.items()))
        rows.append(
            [
                p.name,
                f"{p.accuracy:.1%}",
                f"{p.seconds:.1f}",
                "-" if acc_share is None else f"{acc_share:.1%}",
                "-" if time_share is None else f"{time_share:.1%}",
                mix + (f"; escalated {p.escalated}" if p.escalated else ""),
            ]
        )
    print_table(
        f"Router evaluation (vs {reference}-only; target: >= {TARGET_ACCURACY:.0%} of its accuracy"
        f" at <= {TARGET_TIME:.0%} of its time)",
        ["phase", "accuracy", "compute s", "acc vs ref", "time vs ref", "answered by"],
        rows,
    )
    for p in phases:
        if p.route and ref:
            accurate = p.accuracy >= TARGET_ACCURACY * ref.accuracy
            ok = accurate and p.seconds <= TARGET_TIME * ref.seconds
            print(f"  {p.name}: {'meets' if ok else 'misses'} the target")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=ROOT / "tests/data/router/test.jsonl")
    parser.add_argument("--tiers", default="tiny,small,large", help="tiers, cheapest first")
    parser.add_argument(
        "--phases", default="tiers,router,cascade", help="tiers, router, cascade, or tier names"
    )
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--limit", type=int, help="only the first N prompts")
    parser.add_argument("--logprobs", action="store_true", help="record token logprobs (tiers)")
    parser.add_argument("--outcomes", type=Path, help="write one JSON line per answer here")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="requests in flight (collecting outcomes faster; compute times then overlap)",
    )
    parser.add_argument(
        "--interleave",
        type=int,
        default=25,
        metavar="N",
        help="run all phases' daemons at once and answer in turns of N prompts (0: one phase"
        " after another, one daemon at a time, for machines short of memory)",
    )
    parser.add_argument(
        "--router",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a [router] setting for the daemon, e.g. --router margin=0.25 (repeatable)",
    )
    parser.add_argument(
        "--models-dir", type=Path, default=paths.resolve().models_dir, help="the model store"
    )
    args = parser.parse_args(argv)
    # SIGTERM ends the run like Ctrl-C, so the daemons started here are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    items = load_items(args.data, args.limit)
    tiers = args.tiers.split(",")
    wanted = set(args.phases.split(","))
    planned: list[tuple[Phase, str]] = []
    # "tiers" runs every tier alone; a tier's own name runs just that one (e.g. "large,cascade")
    planned += [(Phase(t, t), t) for t in tiers if "tiers" in wanted or t in wanted]
    for route in ("router", "cascade"):
        if route in wanted:
            mode = "cheapest" if route == "router" else "cascade"
            planned.append((Phase(route, "auto", route=mode), args.tiers))
    try:
        if args.interleave > 0 and args.concurrency == 1 and len(planned) > 1:
            note(f"{len(planned)} daemons, {len(items)} prompts in turns of {args.interleave}")
            phases = run_interleaved(planned, items, args)
        else:
            phases = [run_phase(phase, served, items, args) for phase, served in planned]
    except BenchError as exc:
        print(f"eval_router: {exc}", file=sys.stderr)
        return 1
    report(phases, tiers[-1])
    if args.outcomes:
        with args.outcomes.open("w") as out:
            for p in phases:
                for row in p.rows:
                    out.write(json.dumps({"phase": p.name, **row}) + "\n")
        note(f"outcomes written to {args.outcomes}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
