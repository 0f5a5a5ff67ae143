"""Would speculative decoding pay on this machine? A draft model proposes ``k`` tokens, the
target checks them in one batch and keeps the run it agrees with, plus one of its own. It pays
when the draft agrees often AND checking k + 1 tokens costs the target little more than one.
edgeinfer does not do it (yet); this script measures both halves, side by side in one run, so
the decision is a measurement on your box, not a guess:

1. agreement: the target answers each prompt greedily; the draft reads the prompt and the
   target's answer in one pass, and at each answer position its greedy choice is compared with
   the target's token (teacher forced: a draft token is accepted exactly while the draft's own
   greedy continuation matches, so the accepted runs follow from these matches). From the runs,
   the tokens each verify step yields at draft length k;
2. cost: the target's time to evaluate 1 and k + 1 tokens after a 100-token context, and the
   draft's time for one token (medians of 5);
3. per generated token, plain decoding (one target step) against speculative decoding at each
   k ((k draft steps + one k + 1-token verify) / tokens per step), and their ratio.

Both models must share a vocabulary (the bundled ``small`` and ``large`` do: Qwen2.5-Coder 0.5B
and 1.5B). Measured on the 2-core Xeon (AMX, extra buffers off), 24 prompts of the router's dev
split: the draft agreed on 89.0% of large's tokens, 2.57 tokens per verify at k = 2 and 3.65 at
k = 4, but large took 0.087 s for one token and 0.145 / 0.189 s for 3 / 5 while small took 0.039
s a token: 1.00x of plain decoding's time per token at k = 2, 1.09x at k = 4. On 2 cores a
batched check is not nearly free, so it does not pay there; on a GPU or a wider CPU it may.

    .venv/bin/python scripts/bench_draft.py                       # small drafts for large
    .venv/bin/python scripts/bench_draft.py --prompts 48 --draft small --target large
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _benchutil import (  # noqa: E402
    BenchError,
    chatml,
    note,
    open_llama,
    physical_cores,
    print_table,
    resolve_target,
)

ROOT = Path(__file__).resolve().parent.parent
DRAFT_LENGTHS = (2, 3, 4, 6)
CONTEXT_TOKENS = 100
N_CTX = 2048


def load(model: str, models_dir: Path | None, threads: int, *, all_logits: bool) -> Any:
    return open_llama(
        resolve_target(model, models_dir), threads, n_ctx=N_CTX, logits_all=all_logits
    )


def greedy(llm: Any, prompt: list[int], max_tokens: int) -> list[int]:
    """The target's greedy answer, as token ids (up to its end-of-turn)."""
    end_of_turn = llm.tokenize(b"<|im_end|>", add_bos=False, special=True)  # ChatML's
    ends = {llm.token_eos(), *(end_of_turn if len(end_of_turn) == 1 else [])}
    out: list[int] = []
    for token in llm.generate(prompt, top_k=1, temp=0.0, reset=True):
        if token in ends or len(out) >= max_tokens:
            break
        out.append(token)
    return out


def matches(draft: Any, prompt: list[int], answer: list[int]) -> list[bool]:
    """At each answer position, whether the draft's greedy token is the target's."""
    import numpy as np

    draft.reset()
    draft.eval(prompt + answer)
    scores = np.asarray(draft.scores[len(prompt) - 1 : len(prompt) + len(answer) - 1])
    return [bool(p == t) for p, t in zip(scores.argmax(axis=1), answer, strict=True)]


def per_step(runs: list[list[bool]], k: int) -> float:
    """Tokens one verify step yields at draft length ``k``: the accepted draft tokens, plus the
    target's own token after them (none when the answer ended inside the accepted run)."""
    steps = tokens = 0
    for run in runs:
        j = 0
        while j < len(run):
            accepted = 0
            while accepted < k and j + accepted < len(run) and run[j + accepted]:
                accepted += 1
            tokens += accepted + (1 if j + accepted < len(run) else 0)
            steps += 1
            j += accepted + 1
    return tokens / max(steps, 1)


def eval_seconds(llm: Any, n: int, context: list[int], repeats: int = 5) -> float:
    """Median time to evaluate ``n`` tokens after ``context`` (already in the KV)."""
    times = []
    for _ in range(repeats):
        llm.n_tokens = len(context)  # eval() drops what lies beyond before it decodes
        t = time.perf_counter()
        llm.eval(context[:n])
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", default="large")
    parser.add_argument("--draft", default="small")
    parser.add_argument(
        "--data", type=Path, default=ROOT / "tests" / "data" / "router" / "dev.jsonl"
    )
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--models-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    threads = physical_cores()
    try:
        target = load(args.target, args.models_dir, threads, all_logits=False)
        draft = load(args.draft, args.models_dir, threads, all_logits=True)
    except BenchError as exc:
        print(f"bench_draft: {exc}", file=sys.stderr)
        return 1
    probe = b"Hello, how do I reverse a list in Python?"
    if target.n_vocab() != draft.n_vocab() or target.tokenize(probe) != draft.tokenize(probe):
        print(f"bench_draft: {args.draft} and {args.target} do not share a vocabulary: "
              "a draft must tokenize as its target does", file=sys.stderr)  # fmt: skip
        return 1
    lines = args.data.read_text(encoding="utf-8").splitlines()
    items = [json.loads(line) for line in lines if line.strip()][: args.prompts]
    runs = []
    for n, item in enumerate(items, 1):
        text = chatml([("user", item["prompt"])])
        prompt = target.tokenize(text.encode(), add_bos=False, special=True)
        if len(prompt) + args.max_tokens > N_CTX:
            note(f"prompt {n}: {len(prompt)} tokens, longer than the context leaves: skipped")
            continue
        answer = greedy(target, prompt, args.max_tokens)
        if answer:
            runs.append(matches(draft, prompt, answer))
        if n % 8 == 0:
            note(f"{n}/{len(items)} prompts")
    agreed = sum(sum(run) for run in runs) / max(sum(len(run) for run in runs), 1)
    context = target.tokenize(b"hello world " * (CONTEXT_TOKENS // 2), add_bos=False)
    target.reset()
    target.eval(context)
    verify = {n: eval_seconds(target, n, context) for n in (1, *(k + 1 for k in DRAFT_LENGTHS))}
    draft.reset()
    draft.eval(context)
    draft_step = eval_seconds(draft, 1, context)
    plain = verify[1]
    rows: list[list[object]] = [
        ["plain (no draft)", "1.00", f"{plain:.3f}", f"{plain:.4f}", "1.00"]
    ]
    for k in DRAFT_LENGTHS:
        yielded = per_step(runs, k)
        step = k * draft_step + verify[k + 1]
        rows.append([f"k = {k}", f"{yielded:.2f}", f"{verify[k + 1]:.3f}", f"{step / yielded:.4f}",
                     f"{step / yielded / plain:.2f}"])  # fmt: skip
    print(f"\n{args.draft} drafting for {args.target}: {len(runs)} prompts, "
          f"{sum(len(r) for r in runs)} answer tokens, the draft agreed on {agreed:.1%}; "
          f"a draft token costs {draft_step:.3f} s")  # fmt: skip
    print_table(
        "Per generated token (target verify: k + 1 tokens after a 100-token context)",
        ["decoding", "tokens per step", "verify s", "s per token", "vs plain"],
        rows,
    )
    best = min(rows[1:], key=lambda row: float(str(row[4])))
    print(f"best: {best[0]} at {best[4]}x plain decoding's time per token "
          f"({'pays' if float(str(best[4])) < 0.9 else 'does not pay'} here)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
