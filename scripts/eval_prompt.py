"""Evaluate the prompt layer on long-context questions: tokens removed, answers, TTFT.

Each item of the data set (default tests/data/long_context.jsonl: a ~1,900-token document of
topical paragraphs with repeated paragraphs and messy whitespace, one paragraph holding the
answer, a question and an answer regex) is answered twice by the same model, greedy, in one run:

* ``uncompressed``: system prompt + one user turn, "Document: ... Question: ...", as is;
* ``compressed``: the same messages through the prompt layer first: ``compress_messages``
  (whitespace, repeated paragraphs, abbreviations with ``--abbreviations``), then
  ``optimise_messages`` (chunk, embed with MiniLM, keep the chunks most relevant to the question
  under ``--budget`` tokens, in their original order); with ``--documents``, the default-on cut
  ``optimise_document`` instead (lookup questions only: an item whose question needs the whole
  text, ``"kind": "whole"``, must come through unchanged, and the table shows it did).

With ``--follow-up`` the item's question is a follow-up: the document is pasted with another
question first (``OPENER``), the model's answer to that (from the cut turn, as the daemon
would have given it) follows, then the item's question. The uncompressed side is what the
default sends (an earlier document is not cut again, so the model re-reads it whole); the
layered side cuts the earlier document for both questions (``[prompt] document_follow_ups``).

Reported: prompt tokens (message contents, the model's own tokenizer) before and after; answer
agreement between the two sides (same regex verdict; identical text) and each side's accuracy;
time to first token of each side and their ratio. TTFT runs from having the messages to the first
sampled token: chat template, tokenization, prefill and the first sample, plus, on the compressed
side, the prompt layer's own time (token counting, embedding, selection), also shown apart.

The model runs in this process on edgeinfer's own engine (engine/llama.py), one sequence whose
KV is cleared before every answer, so neither side reuses the other's prefix. The sides
alternate which goes first. Progress goes to stderr, the report to stdout.

    .venv/bin/python scripts/eval_prompt.py --limit 5
    .venv/bin/python scripts/eval_prompt.py --model small --budget 768 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _benchutil import fmt, note, print_table, quiet_stderr, ratio  # noqa: E402

from edgeinfer.config.load import bundled_catalogue_path, load_catalogue  # noqa: E402
from edgeinfer.core.values import Sampling
from edgeinfer.embed.onnx import OnnxEmbedder, open_minilm  # noqa: E402
from edgeinfer.engine.base import BatchItem, EngineParams
from edgeinfer.engine.llama import LlamaEngine, load, quantize  # noqa: E402
from edgeinfer.models.store import ModelStore  # noqa: E402
from edgeinfer.prompt.compress import compress_messages  # noqa: E402
from edgeinfer.prompt.context import optimise_document, optimise_messages  # noqa: E402
from edgeinfer.prompt.report import PromptReport  # noqa: E402
from edgeinfer.prompt.template import render_chat  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SYSTEM = "Answer the question using only the document. Reply with a short answer."


@dataclass
class Answer:
    """One side's answer to one item."""

    text: str
    prompt_tokens: int  # the rendered prompt, template included
    ttft_s: float  # messages to first token, the prompt layer's time included
    layer_s: float  # the prompt layer's own share of ttft_s (0 when uncompressed)


@dataclass
class Row:
    id: str
    tokens_before: int
    tokens_after: int
    actions: list[str]
    plain: Answer
    layered: Answer
    plain_correct: bool
    layered_correct: bool


class Model:
    """The target model on edgeinfer's engine: one sequence, greedy, KV cleared per answer."""

    def __init__(self, path: Path, n_ctx: int, threads: int) -> None:
        params = EngineParams(n_ctx=n_ctx, slots=1, n_batch=512, n_ubatch=512, threads=threads)
        with quiet_stderr():
            self.engine: LlamaEngine = load(path, params)  # extra buffers as the daemon decides
        self.n_batch = params.n_batch

    def count(self, text: str) -> int:
        """The token counter the prompt layer gets: the model's own tokenizer."""
        return len(self.engine.tokenize(text, add_special=False))

    def answer(self, messages: list[dict[str, Any]], max_tokens: int, t0: float) -> Answer:
        """Render, prefill and decode greedily; TTFT is measured from ``t0``."""
        info = self.engine.info
        prompt = render_chat(
            info.chat_template, messages, bos_token=info.bos_text, eos_token=info.eos_text
        )
        tokens = self.engine.tokenize(prompt, add_special=False)
        self.engine.seq_rm(0, 0, -1)
        sampler = self.engine.new_sampler(Sampling(temperature=0.0))
        try:
            for start in range(0, len(tokens), self.n_batch):
                part = tokens[start : start + self.n_batch]
                last = start + len(part) == len(tokens)
                batch = [
                    BatchItem(0, start + k, t, last and k == len(part) - 1)
                    for k, t in enumerate(part)
                ]
                self.engine.decode(batch)
            token = self.engine.sample(sampler, len(part) - 1)
            ttft = time.perf_counter() - t0
            pieces: list[bytes] = []
            pos = len(tokens)
            while not self.engine.is_eog(token) and len(pieces) < max_tokens:
                pieces.append(self.engine.token_to_piece(token))
                self.engine.decode([BatchItem(0, pos, token, True)])
                pos += 1
                token = self.engine.sample(sampler, 0)
        finally:
            self.engine.free_sampler(sampler)
        text = b"".join(pieces).decode("utf-8", "replace").strip()
        return Answer(text, len(tokens), ttft, 0.0)


OPENER = "What is the title of this document?"
"""With --follow-up: the question pasted with the document, before the item's own."""


def messages_for(item: dict[str, str], question: str | None = None) -> list[dict[str, Any]]:
    user = f"Document:\n\n{item['document']}\n\nQuestion: {question or item['question']}"
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def conversation(
    item: dict[str, str], model: Model | None, embedder: OnnxEmbedder, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """The item's messages; with --follow-up, its question after OPENER and the model's answer
    to that (a placeholder without a model: --retrieval needs no answers)."""
    if not args.follow_up:
        return messages_for(item)
    first = messages_for(item, OPENER)
    reply = "(the title)"
    if model is not None:
        cut, _ = layered(first, model, embedder, args)
        reply = model.answer(cut, args.max_tokens, time.perf_counter()).text
    return [
        *first,
        {"role": "assistant", "content": reply},
        {"role": "user", "content": item["question"]},
    ]


def layered(
    messages: list[dict[str, Any]], model: Model, embedder: OnnxEmbedder, args: argparse.Namespace
) -> tuple[list[dict[str, Any]], PromptReport]:
    """The prompt layer as the service runs it: compress, then select context."""
    compressed, first = compress_messages(
        messages, abbreviations=args.abbreviations, count_tokens=model.count
    )
    common: dict[str, Any] = {
        "budget_tokens": args.budget,
        "count_tokens": model.count,
        "embed": embedder.embed,
        "chunk_tokens": args.chunk_tokens,
    }
    if args.documents:  # the default-on path: [prompt] documents
        selected, second = optimise_document(
            compressed, min_tokens=args.document_tokens, follow_ups=args.follow_up, **common
        )
    else:
        selected, second = optimise_messages(compressed, **common)
    return selected, first.then(second)


def run_item(
    index: int, item: dict[str, str], model: Model, embedder: OnnxEmbedder, args: argparse.Namespace
) -> Row:
    messages = conversation(item, model, embedder, args)

    def plain() -> Answer:
        return model.answer(messages, args.max_tokens, time.perf_counter())

    def with_layer() -> tuple[Answer, PromptReport]:
        t0 = time.perf_counter()
        shorter, report = layered(messages, model, embedder, args)
        layer_s = time.perf_counter() - t0
        answer = model.answer(shorter, args.max_tokens, t0)
        answer.layer_s = layer_s
        return answer, report

    if index % 2:  # alternate which side runs first
        (second, report), first = with_layer(), plain()
    else:
        first, (second, report) = plain(), with_layer()
    pattern = re.compile(item["answer"], re.IGNORECASE)
    return Row(
        id=item["id"],
        tokens_before=report.tokens_before,
        tokens_after=report.tokens_after,
        actions=report.actions,
        plain=first,
        layered=second,
        plain_correct=bool(pattern.search(first.text)),
        layered_correct=bool(pattern.search(second.text)),
    )


def report(rows: list[Row], args: argparse.Namespace) -> dict[str, Any]:
    def mean(values: list[float]) -> float:
        return statistics.fmean(values) if values else 0.0

    print_table(
        f"Per item (budget {args.budget} tokens; TTFT in ms; layer = prompt layer's own time)",
        ["item", "tokens", "kept", "actions", "TTFT plain", "TTFT layered", "layer", "ok plain",
         "ok layered", "same text"],
        [[r.id, r.tokens_before, r.tokens_after, ",".join(r.actions) or "-",
          r.plain.ttft_s * 1e3, r.layered.ttft_s * 1e3,
          r.layered.layer_s * 1e3, r.plain_correct, r.layered_correct,
          r.plain.text == r.layered.text] for r in rows],
    )  # fmt: skip
    before = mean([r.tokens_before for r in rows])
    after = mean([r.tokens_after for r in rows])
    plain_ttft = mean([r.plain.ttft_s for r in rows])
    layered_ttft = mean([r.layered.ttft_s for r in rows])
    summary = {
        "items": len(rows),
        "tokens_before_mean": before,
        "tokens_after_mean": after,
        "removed_share": 1 - after / before if before else 0.0,
        "verdict_agreement": mean([r.plain_correct == r.layered_correct for r in rows]),
        "exact_text_match": mean([r.plain.text == r.layered.text for r in rows]),
        "accuracy_plain": mean([r.plain_correct for r in rows]),
        "accuracy_layered": mean([r.layered_correct for r in rows]),
        "ttft_plain_ms": plain_ttft * 1e3,
        "ttft_layered_ms": layered_ttft * 1e3,
        "layer_ms": mean([r.layered.layer_s for r in rows]) * 1e3,
        "ttft_ratio_layered_over_plain": ratio(layered_ttft, plain_ttft),
    }
    print("\nSummary (means over items)")
    print(f"  prompt tokens        {before:,.0f} -> {after:,.0f}"
          f"  ({summary['removed_share']:.1%} removed by the prompt layer)")  # fmt: skip
    print(f"  answer agreement     same verdict {summary['verdict_agreement']:.0%},"
          f" identical text {summary['exact_text_match']:.0%}")  # fmt: skip
    print(f"  accuracy             uncompressed {summary['accuracy_plain']:.0%},"
          f" prompt layer {summary['accuracy_layered']:.0%}")  # fmt: skip
    print(f"  TTFT                 uncompressed {fmt(plain_ttft * 1e3)} ms,"
          f" prompt layer {fmt(layered_ttft * 1e3)} ms"
          f" (of which the layer itself {fmt(summary['layer_ms'])} ms)")  # fmt: skip
    share = summary["ttft_ratio_layered_over_plain"]
    print(f"  TTFT ratio           layered / uncompressed = {fmt(share, 3)}"
          f" ({fmt(ratio(plain_ttft, layered_ttft), 2)}x faster to the first token)")  # fmt: skip
    return summary


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny", help="catalogue name of the target model")
    parser.add_argument("--data", type=Path, default=REPO / "tests" / "data" / "long_context.jsonl")
    parser.add_argument("--limit", type=int, help="only the first N items")
    parser.add_argument("--budget", type=int, default=512, help="token budget of the messages")
    parser.add_argument("--chunk-tokens", type=int, default=128)
    parser.add_argument(
        "--documents",
        action="store_true",
        help="the default document cut ([prompt] documents: lookup questions only, --budget "
        "tokens of the document) instead of context_budget",
    )
    parser.add_argument("--document-tokens", type=int, default=1024, help="with --documents")
    parser.add_argument(
        "--follow-up",
        action="store_true",
        help="ask each item's question as a follow-up, after the document and another question",
    )
    parser.add_argument(
        "--retrieval",
        metavar="BUDGETS",
        help="no answers: for each comma-separated budget, how often the kept text still holds "
        "the item's evidence and answer (and a whole-text item is left whole)",
    )
    parser.add_argument("--abbreviations", action="store_true", help="also abbreviate")
    parser.add_argument("--max-tokens", type=int, default=24, help="answer length cap")
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=0, help="llama.cpp threads; 0 = cores")
    parser.add_argument("--embed-threads", type=int, default=1, help="onnxruntime threads")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--models-dir", type=Path, default=Path(
        os.environ.get("EDGEINFER_TEST_MODELS", REPO / ".edgeinfer-test" / "models")))  # fmt: skip
    args = parser.parse_args(argv)
    if args.follow_up and not args.documents:
        parser.error("--follow-up measures the document cut: add --documents")
    return args


def load_items(path: Path, limit: int | None) -> list[dict[str, str]]:
    items = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return items[:limit] if limit else items


def retrieval(
    items: list[dict[str, str]], model: Model, embedder: OnnxEmbedder, args: argparse.Namespace
) -> None:
    """Per budget: lookup items whose evidence and answer survive the cut, whole-text items left
    whole, tokens kept. Evidence may name several passages (``" | "``-separated): all must stay."""
    rows = []
    for budget in [int(b) for b in args.retrieval.split(",")]:
        args.budget = budget
        kept = whole_ok = lookups = wholes = 0
        after = []
        for item in items:
            messages = conversation(item, None, embedder, args)
            shorter, report = layered(messages, model, embedder, args)
            text = " ".join(" ".join(m["content"] for m in shorter if m["role"] == "user").split())
            if item.get("kind") == "whole":
                wholes += 1
                whole_ok += not ({"document", "context"} & set(report.actions))
                continue
            lookups += 1
            after.append(report.tokens_after)
            evidence = [" ".join(e.split()) for e in item["evidence"].split(" | ")]
            answer = re.search(item["answer"], text, re.IGNORECASE)
            kept += all(e in text for e in evidence) and answer is not None
        rows.append([budget, f"{kept}/{lookups}", f"{whole_ok}/{wholes}",
                     statistics.fmean(after) if after else 0])  # fmt: skip
    mode = "document cut (--documents)" if args.documents else "context_budget"
    print_table(
        f"Retrieval, {mode}: what the model would read, per budget",
        ["budget", "lookups keeping evidence", "whole-text items left whole", "tokens after"],
        rows,
    )


def warm_up(model: Model, embed: Callable[[list[str]], Any]) -> None:
    """First calls pay one-off setup (buffers, ONNX graph): keep them out of the figures."""
    embed(["warm up the embedder"])
    model.answer([{"role": "user", "content": "Say hi."}], 4, time.perf_counter())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    items = load_items(args.data, args.limit)
    store = ModelStore(
        args.models_dir, load_catalogue([bundled_catalogue_path()]), quantizer=quantize
    )
    note(f"model {args.model}: resolving in {args.models_dir} (pulled on first use)")
    model = Model(store.ensure(args.model), args.n_ctx, args.threads)
    embedder = open_minilm(args.models_dir, threads=args.embed_threads)
    if args.retrieval:
        retrieval(items, model, embedder, args)
        model.engine.close()
        return 0
    warm_up(model, embedder.embed)
    rows = []
    t0 = time.perf_counter()
    for index, item in enumerate(items):
        note(f"{item['id']} ({index + 1}/{len(items)})")
        rows.append(run_item(index, item, model, embedder, args))
    summary = report(rows, args)
    print(f"\n({len(items)} items, {time.perf_counter() - t0:.0f} s, model {args.model})")
    if args.json:
        doc = {"config": {k: str(v) for k, v in vars(args).items()}, "summary": summary,
               "rows": [asdict(r) for r in rows]}  # fmt: skip
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    model.engine.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
