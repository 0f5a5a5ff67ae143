"""The whole stack on one realistic workload: edgeinfer (default settings, ``model: "auto"``,
concurrent clients) against the naive deployment it replaces (the ``large`` model through
llama-cpp-python ``Llama``, one request at a time, no cache), side by side in one run.

Both answer the same trace, greedy, with the same token limit; every answer is checked with the
item's regex, so quality is measured, not assumed. The table gives quality and compute time of
both, and where edgeinfer's savings came from, layer by layer.

The trace (``build_trace``; ``--write-trace`` saves it, ``--trace`` replays yours):
- **FAQ questions** (43% of sessions): one question each, from a labelled prompt set (default:
  the router's *test* split, which no rule, threshold or weight was chosen on). A third of them
  run under one long shared system prompt (a help desk's instructions, ~400 tokens), as an app
  with a fixed system prompt sends them.
- **Repeats and rewordings** (29%, half each): an earlier FAQ question asked again later,
  verbatim or reworded (a polite or casual wrapper, a changed opening). Gill et al., "MeanCache"
  (arXiv:2403.02694), report that about 31% of the queries in real users' logs are similar to
  an earlier query of the same user; we take that rate, split evenly.
- **Conversations** (14%): three turns, each a new question from the set, each sent with the
  whole history (the system's own earlier answers included). Multi-turn chats are common in
  public chat logs (LMSYS-Chat-1M, arXiv:2309.11998, averages about two turns a conversation);
  three turns exercise KV prefix reuse.
- **Long documents** (14%): a pasted 1,700–2,000-token document with one fact to find, the
  "answer from this" traffic of assistants: the lookup items of ``tests/data/documents/test.jsonl``
  (one topic per document, with distractor passages; styles the prompt layer's settings were
  not chosen on).

Sessions are shuffled once (``--seed``); a repeat or rewording always comes at least
``--gap`` sessions after its original, so concurrent clients do not race it.

Compute time: the baseline's is the wall time of its sequential requests (its process is the
only load). edgeinfer's is the wall time of the whole trace through the daemon with
``--clients`` clients. The CPU seconds of each side's process tree are printed beside them.

Savings by layer, from what each request's ``edgeinfer`` object says and the baseline's own
per-request times (measured). Each request is put in one row by what saved its time: a cache
layer answered it; a cheaper tier answered it (routing); ``large`` answered it from a pasted
document the prompt layer cut; ``large`` reused a KV prefix (a shared system prompt, a
conversation's earlier turns); or none of these. A row's baseline seconds are the baseline's
times of its requests; its edgeinfer seconds are its requests' share of edgeinfer's wall time,
in proportion to their latency, so the rows add up to the whole run and batching's gain (several
requests in one decode) is spread over every row. The daemon's /stats give the counters behind
each (cache hits, tiers, prefix tokens reused, prompt tokens removed).

Your own traffic: ``--trace log.jsonl`` with one session per line,
``{"system": "...", "turns": [{"content": "...", "answer": "regex"}, ...]}`` (``system`` and
``answer`` optional; a turn without ``answer`` is scored by agreement with the baseline's
answer, so the quality ratio there means "same answer as large").

    python scripts/bench_workload.py                          # 105 sessions, 4 clients
    python scripts/bench_workload.py --sessions 30 --clients 2
    python scripts/bench_workload.py --trace my_log.jsonl --max-tokens 128

Target (issue 16): edgeinfer uses <= 0.20 of the baseline's compute time at >= 0.97 of its
quality.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import resource
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from _benchutil import (  # noqa: E402
    BenchError,
    edgeinfer_daemon,
    fmt,
    note,
    open_llama,
    physical_cores,
    post_chat,
    print_table,
    proc_cpu_s,
    process_tree,
    ratio,
    resolve_target,
    verdict,
)

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"

HELP_DESK = """You are the help desk assistant of Northwind Outfitters, an outdoor equipment \
retailer with 42 stores and an online shop. Follow these rules in every answer.

Tone: friendly, plain and brief. Answer the question that was asked first, in one or two \
sentences, then stop. Do not greet the customer again after the first message and do not sign \
your messages. Never invent order numbers, prices, stock levels or delivery dates; when a \
question needs them, say that a colleague will check and reply by email.

Scope: you help with products, sizing, care and repair of gear, orders, returns, the loyalty \
programme and general questions customers ask while shopping, including general knowledge \
questions, which you answer correctly and briefly like any assistant would. You do not give \
medical, legal or financial advice beyond general facts; for those, suggest a professional.

Returns: unused items can be returned within 60 days with the receipt; worn footwear within 14 \
days if faulty. Refunds go back to the original payment method within 5 working days. Sale items \
are exchanged, not refunded. Rental gear is returned to the store it was rented from.

Loyalty: members collect one point per pound spent and get free repairs on tents and backpacks \
for two years. Points expire after 24 months without a purchase.

Safety: for questions about weather, avalanches, water crossings or wildlife, give the general \
advice and tell the customer to check the local authority's current warnings before a trip.

Privacy: never ask for a full card number, a password or a security code. If a customer shares \
one, tell them to remove it and that we never need it.

Format: plain text, no tables, no markdown headings. Lists only when the customer asks for steps. \
Numbers with their units. If you are not sure of an answer, say so in one sentence."""

REWORDINGS = (
    "Quick question: {q}",
    "{q} Thanks in advance!",
    "Hi there, {q}",
    "I was wondering, {q}",
    "Could you help me with this? {q}",
    "{q} Please keep it short.",
)
FOLLOW_UPS = ("{q}", "Another one: {q}", "Thanks. And {q}")


@dataclass(frozen=True)
class Turn:
    content: str
    answer: str | None  # a regex (re.IGNORECASE, searched in the answer); None: agree with large


@dataclass
class Session:
    id: str
    kind: str
    turns: list[Turn]
    system: str | None = None

    def as_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {"id": self.id, "kind": self.kind}
        if self.system:
            row["system"] = self.system
        row["turns"] = [{"content": t.content, "answer": t.answer} for t in self.turns]
        return row


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def build_trace(
    items: Sequence[dict[str, Any]],
    docs: Sequence[dict[str, Any]],
    sessions: int,
    seed: int,
    gap: int,
) -> list[Session]:
    """The mixed trace described in the module docstring, deterministic for a seed."""
    rng = random.Random(seed)
    pool = list(items)
    rng.shuffle(pool)
    n_faq = round(sessions * 0.43)
    n_conv = round(sessions * 0.14)
    n_doc = round(sessions * 0.14)
    n_again = sessions - n_faq - n_conv - n_doc
    lookups = [d for d in docs if d.get("kind", "lookup") == "lookup"]  # one fact to find
    if n_doc and not lookups:
        raise BenchError("no lookup documents for the document sessions")
    if len(pool) < n_faq + 3 * n_conv:
        raise BenchError(f"{len(pool)} labelled prompts: too few for {sessions} sessions")
    firsts: list[Session] = []
    for i in range(n_faq):
        item = pool.pop()
        system = HELP_DESK if i % 3 == 0 else None
        firsts.append(Session(f"faq{i:03d}", "faq", [Turn(item["prompt"], item["answer"])], system))
    for i in range(n_conv):
        picked = [pool.pop() for _ in FOLLOW_UPS]
        turns = [
            Turn(form.format(q=item["prompt"]), item["answer"])
            for form, item in zip(FOLLOW_UPS, picked, strict=True)
        ]
        firsts.append(Session(f"conv{i:03d}", "conversation", turns))
    for i in range(n_doc):
        doc = lookups[i % len(lookups)]
        content = f"{doc['document']}\n\nQuestion: {doc['question']}"
        answer = doc["answer"]  # already a regex
        firsts.append(Session(f"doc{i:03d}", "document", [Turn(content, answer)]))
    rng.shuffle(firsts)
    order: list[Session] = list(firsts)
    faqs = [s for s in firsts if s.kind == "faq"]
    for i in range(n_again):
        original = rng.choice(faqs)
        verbatim = i % 2 == 0
        turn = original.turns[0]
        if verbatim:
            again = Session(f"rep{i:03d}", "repeat", [turn], original.system)
        else:
            form = rng.choice(REWORDINGS)
            text = form.format(q=turn.content[0].lower() + turn.content[1:])
            again = Session(f"rew{i:03d}", "reworded", [Turn(text, turn.answer)], original.system)
        earliest = order.index(original) + gap
        if earliest > len(order):
            order.append(again)
        else:
            order.insert(rng.randint(earliest, len(order)), again)
    return order


def load_trace(path: Path) -> list[Session]:
    sessions = []
    for n, row in enumerate(load_jsonl(path)):
        turns = [Turn(str(t["content"]), t.get("answer")) for t in row["turns"]]
        if not turns:
            raise BenchError(f"{path}: session {n} has no turns")
        sessions.append(
            Session(str(row.get("id", n)), row.get("kind", "log"), turns, row.get("system"))
        )
    return sessions


# -- running a side ------------------------------------------------------------------------------


@dataclass
class Answer:
    session: str
    kind: str
    turn: int
    text: str
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)  # edgeinfer's object, usage


@dataclass
class SideRun:
    answers: dict[tuple[str, int], Answer] = field(default_factory=dict)
    wall_s: float = 0.0
    cpu_s: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)


def messages_for(session: Session, history: list[str], turn: int) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": session.system}] if session.system else []
    for i in range(turn):
        messages += [
            {"role": "user", "content": session.turns[i].content},
            {"role": "assistant", "content": history[i]},
        ]
    messages.append({"role": "user", "content": session.turns[turn].content})
    return messages


def run_baseline(trace: list[Session], args: argparse.Namespace) -> SideRun:
    """``large`` through llama-cpp-python's ``Llama``, one request at a time, no cache."""
    target = resolve_target(args.large, args.models_dir)
    llm = open_llama(target, physical_cores(), n_ctx=args.n_ctx, n_batch=512, flash_attn=True)
    run = SideRun()
    cpu0 = _self_cpu()
    t0 = time.perf_counter()
    for n, session in enumerate(trace):
        history: list[str] = []
        for i in range(len(session.turns)):
            t = time.perf_counter()
            reply: Any = llm.create_chat_completion(
                messages=messages_for(session, history, i),
                temperature=0.0,
                max_tokens=args.max_tokens,
            )
            text = reply["choices"][0]["message"]["content"] or ""
            history.append(text)
            answer = Answer(session.id, session.kind, i, text, time.perf_counter() - t)
            answer.info = {"usage": reply["usage"]}
            run.answers[(session.id, i)] = answer
        if (n + 1) % 20 == 0:
            note(f"baseline: {n + 1}/{len(trace)} sessions, {time.perf_counter() - t0:.0f} s")
    run.wall_s = time.perf_counter() - t0
    run.cpu_s = _self_cpu() - cpu0
    return run


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return float(usage.ru_utime + usage.ru_stime)


def run_edgeinfer(trace: list[Session], args: argparse.Namespace) -> SideRun:
    """The daemon with default settings, ``model: "auto"``, ``--clients`` clients."""
    run = SideRun()
    lock = threading.Lock()
    models = ",".join(args.models)
    with edgeinfer_daemon(models, args.models_dir, timeout=900) as (client, proc):
        pids = process_tree(proc.pid)
        cpu0 = sum(proc_cpu_s(p) for p in pids)
        queue = list(reversed(trace))

        def worker() -> None:
            while True:
                with lock:
                    if not queue:
                        return
                    session = queue.pop()
                history: list[str] = []
                for i in range(len(session.turns)):
                    answer = ask(client, session, history, i, args.max_tokens)
                    history.append(answer.text)
                    with lock:
                        run.answers[(session.id, i)] = answer
                        done = len(run.answers)
                    if done % 40 == 0:
                        note(f"edgeinfer: {done} answers, {time.perf_counter() - t0:.0f} s")

        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            for future in [pool.submit(worker) for _ in range(args.clients)]:
                future.result()
        run.wall_s = time.perf_counter() - t0
        run.cpu_s = sum(proc_cpu_s(p) for p in process_tree(proc.pid)) - cpu0
        run.stats = client.get("/stats").json()
    return run


def ask(
    client: httpx.Client, session: Session, history: list[str], turn: int, max_tokens: int
) -> Answer:
    body = {
        "model": "auto",
        "messages": messages_for(session, history, turn),
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    reply, text, seconds = post_chat(client, body, f"{session.id} turn {turn}")
    answer = Answer(session.id, session.kind, turn, text, seconds)
    answer.info = {"model": reply["model"], "usage": reply["usage"], **reply.get("edgeinfer", {})}
    return answer


# -- scoring and the report ----------------------------------------------------------------------


def correct(turn: Turn, text: str, reference: str) -> bool:
    if turn.answer is not None:
        return bool(re.search(turn.answer, text, re.IGNORECASE))
    return _norm(text) == _norm(reference)


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _served_by(answer: Answer, large: str) -> str:
    """Which saving answered a request: a cache layer, a cheaper tier, or ``large`` helped by
    the prompt layer's document cut or by a reused KV prefix (or by neither)."""
    info = answer.info
    if (info.get("cache") or {}).get("layer"):
        return "cache (exact + semantic)"
    if info.get("model") != large:
        return "routing: a cheaper tier answered"
    if "document" in ((info.get("prompt") or {}).get("actions") or []):
        return f"{large}: pasted document cut"
    details = info.get("usage", {}).get("prompt_tokens_details") or {}
    if details.get("cached_tokens"):
        return f"{large}: KV prefix reused"
    return f"{large}: nothing to reuse"


def report(trace: list[Session], base: SideRun, edge: SideRun, args: argparse.Namespace) -> None:
    turns = [(s, i, t) for s in trace for i, t in enumerate(s.turns)]
    ok_base = ok_edge = 0
    by_kind: dict[str, list[int]] = {}
    served: dict[str, int] = {}
    latency = sum(edge.answers[(s.id, i)].seconds for s, i, _ in turns) or 1.0
    share = edge.wall_s / latency  # each request's part of edgeinfer's wall time
    by_saving: dict[str, list[float]] = {}
    for session, i, turn in turns:
        b, e = base.answers[(session.id, i)], edge.answers[(session.id, i)]
        ok_b = correct(turn, b.text, b.text)
        ok_e = correct(turn, e.text, b.text)
        ok_base += ok_b
        ok_edge += ok_e
        row = by_kind.setdefault(session.kind, [0, 0, 0])
        row[0] += 1
        row[1] += ok_b
        row[2] += ok_e
        cached = (e.info.get("cache") or {}).get("layer")
        model = "cache" if cached else str(e.info.get("model"))
        served[model] = served.get(model, 0) + 1
        saving = by_saving.setdefault(_served_by(e, args.large), [0, 0.0, 0.0, 0, 0])
        saving[0] += 1
        saving[1] += b.seconds
        saving[2] += e.seconds * share
        saving[3] += ok_b
        saving[4] += ok_e
    n = len(turns)
    quality = ratio(ok_edge / n, ok_base / n)
    time_ratio = ratio(edge.wall_s, base.wall_s)
    print_table(
        f"Whole stack: {len(trace)} sessions, {n} requests, {args.max_tokens} tokens, greedy",
        ["side", "correct", "compute s (wall)", "CPU s", "vs baseline"],
        [
            [
                f"baseline: {args.large} via Llama, 1 at a time",
                f"{ok_base}/{n}",
                fmt(base.wall_s),
                fmt(base.cpu_s),
                "1.00",
            ],
            [
                f"edgeinfer: auto, {args.clients} clients",
                f"{ok_edge}/{n}",
                fmt(edge.wall_s),
                fmt(edge.cpu_s),
                fmt(time_ratio, 3),
            ],
        ],
    )
    print(
        f"quality ratio {fmt(quality, 3)} {verdict(quality, '>=', 0.97)}; "
        f"time ratio {fmt(time_ratio, 3)} {verdict(time_ratio, '<=', 0.20)}"
    )
    print_table(
        "By session kind",
        ["kind", "requests", "baseline correct", "edgeinfer correct"],
        [[k, v[0], v[1], v[2]] for k, v in sorted(by_kind.items())],
    )
    total_saved = sum(v[1] - v[2] for v in by_saving.values())
    print_table(
        "Where the saving came from (edgeinfer's wall time shared among its requests by latency)",
        ["served by", "requests", "baseline s", "edgeinfer s", "saved s", "share", "correct b/e"],
        [
            [
                name,
                v[0],
                fmt(v[1]),
                fmt(v[2]),
                fmt(v[1] - v[2]),
                _share(v[1] - v[2], total_saved),
                f"{v[3]}/{v[4]}",
            ]
            for name, v in sorted(by_saving.items(), key=lambda kv: kv[1][2] - kv[1][1])
        ],
    )
    print("answered by: " + ", ".join(f"{k} {v}" for k, v in sorted(served.items())))
    _print_counters(edge.stats)


def _share(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}%" if whole > 0 else "-"


def _print_counters(stats: dict[str, Any]) -> None:
    cache = stats.get("cache") or {}
    router = stats.get("router") or {}
    prompt = stats.get("prompt") or {}
    models = stats.get("models") or {}
    reused = sum(int(m.get("cached_tokens", 0) or 0) for m in models.values())
    prompt_tokens = sum(int(m.get("prompt_tokens", 0) or 0) for m in models.values())
    layers = cache.get("layers") or {}
    print(
        "daemon counters: "
        f"cache hits {json.dumps({k: v.get('hits') for k, v in layers.items()})}; "
        f"router by tier {router.get('by_tier')}, cascades {router.get('cascades')}, "
        f"drafts kept {router.get('drafts_kept')}; "
        f"prefix tokens reused {reused} of {prompt_tokens}; "
        f"prompt tokens removed {prompt.get('tokens_removed')} of {prompt.get('tokens_before')}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=DATA / "router" / "test.jsonl",
        help="labelled prompts (JSONL: prompt, answer regex)",
    )
    parser.add_argument("--docs", type=Path, default=DATA / "documents" / "test.jsonl")
    parser.add_argument("--trace", type=Path, help="replay this trace instead (see docstring)")
    parser.add_argument("--write-trace", type=Path, help="save the trace built here")
    parser.add_argument("--sessions", type=int, default=105)
    parser.add_argument("--gap", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--n-ctx", type=int, default=4096, help="the baseline's context")
    parser.add_argument("--large", default="large", help="the baseline model")
    parser.add_argument("--models", nargs="+", default=["tiny", "small", "large"])
    parser.add_argument("--models-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.models_dir is None:
        from edgeinfer import paths

        args.models_dir = paths.resolve().models_dir
    if args.trace:
        trace = load_trace(args.trace)
    else:
        items = load_jsonl(args.data)
        trace = build_trace(items, load_jsonl(args.docs), args.sessions, args.seed, args.gap)
    if args.write_trace:
        args.write_trace.write_text("".join(json.dumps(s.as_json()) + "\n" for s in trace))
    note(f"{len(trace)} sessions, {sum(len(s.turns) for s in trace)} requests")
    try:
        edge = run_edgeinfer(trace, args)
        note(f"edgeinfer: {edge.wall_s:.1f} s")
        base = run_baseline(trace, args)
        note(f"baseline: {base.wall_s:.1f} s")
    except BenchError as exc:
        print(f"bench_workload: {exc}", file=sys.stderr)
        return 1
    report(trace, base, edge, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
