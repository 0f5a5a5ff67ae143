"""Choose the router's classifier and cascade settings on the dev split, never on test.

Reads labelled outcomes (``scripts/eval_router.py --phases tiers --logprobs --outcomes``: each
prompt answered by each tier alone, with whether it was right, its time and its token
logprobs), fits the per-tier classifier on the train outcomes, predicts the dev prompts, and
replays the cascade offline on dev for every setting in a grid: the start tier (the cheapest
predicted within ``margin`` of the best), drafts skipped when the start tier's predicted
P(correct) is under ``min_draft_p``, and a draft kept when its confidence reaches
``confidence_threshold`` (stopped early once it cannot). Each replayed request costs its tokens
at each tier's measured rates on this machine (``RATES``, from MODELS.md: prefill and generation
tokens per second, one stream): the outcome files' own seconds are skewed when the tiers' runs
shared the machine with other work. A draft stopped early costs its share.

It prints the settings that answer with the least time while keeping at least ``--floor`` of
large-only accuracy on dev, and can write the classifier's weights. The test split is then
measured once with ``scripts/eval_router.py`` through the real daemon.

Picking the best of a few hundred settings on 343 prompts flatters the winner. So the script
also prints what the same rule scores on prompts it did not pick on: dev is halved at random 30
times, the rule picks on one half and is scored on the other. Choosing at ``--floor 0.975``
scored 0.961 of large's accuracy there at 0.822 of its time (the daemon's test split said 0.95,
a held-out set 0.94); at the default ``--floor 0.995``, 0.975 at 0.887: the shipped defaults
are chosen with that margin.

    python scripts/tune_router.py --train tests/data/router/train_outcomes.jsonl \\
        --dev dev_outcomes.jsonl --weights edgeinfer/routing/weights.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.core.embedding import MINILM_VECTORS
from edgeinfer.paths import resolve
from edgeinfer.routing.classifier import Classifier, Outcome, feature_vector, train
from edgeinfer.routing.policy import CONFIDENCE_WINDOW

TIERS = ("tiny", "small", "large")
RATES = {"tiny": (450.0, 160.0), "small": (280.0, 64.0), "large": (145.0, 36.0)}
"""Prefill and generation tokens per second of each tier, one stream, on the 2-core box."""


@dataclass(frozen=True)
class Run:
    """One tier's answer to one prompt."""

    correct: bool
    seconds: float
    tokens: int
    logprobs: tuple[float, ...]  # of the answer's non-blank tokens, in order


def load_runs(paths: Sequence[Path]) -> dict[str, dict[str, Run]]:
    """prompt -> tier -> run, from eval_router outcome files (the last line of a pair wins)."""
    runs: dict[str, dict[str, Run]] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            tier = row.get("tier") or row.get("phase")
            lps = tuple(lp for lp, _top, tok in row.get("logprobs", []) if str(tok).strip())
            tokens = int(row.get("completion_tokens", 0))
            prefill, generate = RATES.get(tier, (1.0, 1.0))
            seconds = len(row["prompt"]) / 4 / prefill + tokens / generate  # ~4 chars a token
            runs.setdefault(row["prompt"], {})[tier] = Run(
                bool(row["correct"]), seconds, tokens, lps
            )
    return {p: r for p, r in runs.items() if all(t in r for t in TIERS)}


def draft_verdict(run: Run, threshold: float) -> tuple[bool, float]:
    """Whether the cascade keeps this draft, and the share of its time it ran (a draft that
    can no longer reach the threshold is stopped: routing.policy.doomed)."""
    head = run.logprobs[:CONFIDENCE_WINDOW]
    if not head:
        return False, 1.0
    floor = CONFIDENCE_WINDOW * math.log(threshold) if threshold > 0 else -math.inf
    total = 0.0
    for n, lp in enumerate(head, 1):
        total += lp
        if total < floor:
            return False, min(1.0, n / max(run.tokens, 1))
    return math.exp(total / len(head)) >= threshold, 1.0


@dataclass(frozen=True)
class Setting:
    margin: float
    threshold: float
    min_draft_p: float


DEFAULTS = Setting(0.15, 0.7, 0.0)
"""The shipped [router] margin, confidence_threshold and draft_floor."""


def replay(
    setting: Setting, prompts: Sequence[str], runs: dict[str, dict[str, Run]],
    predicted: dict[str, dict[str, float]],
) -> tuple[float, float]:  # fmt: skip
    """Accuracy and seconds of the cascade over ``prompts`` with ``setting``."""
    right = seconds = 0.0
    for prompt in prompts:
        p, r = predicted[prompt], runs[prompt]
        top = max(p.values())
        start = next(t for t in TIERS if p[t] >= top - setting.margin)
        if start != "large" and p[start] < setting.min_draft_p:
            start = "large"
        if start == "large":
            right += r["large"].correct
            seconds += r["large"].seconds
            continue
        kept, share = draft_verdict(r[start], setting.threshold)
        seconds += r[start].seconds * share
        if kept:
            right += r[start].correct
        else:
            right += r["large"].correct
            seconds += r["large"].seconds
    return right / len(prompts), seconds


def per_prompt(
    grid: Sequence[Setting], prompts: Sequence[str], runs: dict[str, dict[str, Run]],
    predicted: dict[str, dict[str, float]],
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Each setting's replay of each prompt: right answers and seconds, (settings, prompts)."""
    both = np.array([[replay(s, [p], runs, predicted) for p in prompts] for s in grid])
    return both[..., 0], both[..., 1]


def held_halves(
    right: np.ndarray, secs: np.ndarray, large_right: np.ndarray, large_secs: np.ndarray,
    floor: float, rounds: int = 30,
) -> tuple[float, float]:  # fmt: skip
    """Accuracy and time (of large's) of "the cheapest setting keeping ``floor``", chosen on one
    random half of the prompts and scored on the other, averaged over ``rounds`` halvings.
    ``right`` and ``secs`` are :func:`per_prompt`'s; ``large_*`` large alone's per prompt."""
    rng = np.random.default_rng(0)
    scores = []
    for _ in range(rounds):
        order = rng.permutation(right.shape[1])
        pick, held = order[: len(order) // 2], order[len(order) // 2 :]
        ok = right[:, pick].sum(axis=1) >= floor * large_right[pick].sum()
        if not ok.any():  # nothing keeps the floor: large alone
            scores.append((1.0, 1.0))
            continue
        best = int(np.argmin(np.where(ok, secs[:, pick].sum(axis=1), np.inf)))
        scores.append(
            (
                right[best, held].sum() / large_right[held].sum(),
                secs[best, held].sum() / large_secs[held].sum(),
            )
        )
    mean = np.mean(scores, axis=0)
    return float(mean[0]), float(mean[1])


def fit(
    train_runs: dict[str, dict[str, Run]], embed: Callable[[list[str]], Any], l2: float
) -> Classifier:
    outcomes = [
        Outcome(p, t, run.correct) for p, tiers in train_runs.items() for t, run in tiers.items()
    ]
    meta = {"l2": l2, "examples": len(train_runs), "embedder": MINILM_VECTORS}
    return train(outcomes, embed, l2=l2, meta=meta)


def predictions(
    classifier: Classifier, prompts: Sequence[str], embed: Callable[[list[str]], Any]
) -> dict[str, dict[str, float]]:
    vectors = np.asarray(embed(list(prompts)))
    return {
        p: classifier.predict(feature_vector(p, v)) for p, v in zip(prompts, vectors, strict=True)
    }


def log_loss(predicted: dict[str, dict[str, float]], runs: dict[str, dict[str, Run]]) -> float:
    total = n = 0.0
    for prompt, p in predicted.items():
        for tier in TIERS:
            q = min(max(p[tier], 1e-6), 1 - 1e-6)
            total -= math.log(q if runs[prompt][tier].correct else 1 - q)
            n += 1
    return total / n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--train", type=Path, nargs="+", required=True)
    parser.add_argument("--dev", type=Path, nargs="+", required=True)
    parser.add_argument("--floor", type=float, default=0.995, help="of large-only accuracy")
    parser.add_argument("--weights", type=Path, help="write the chosen classifier here")
    parser.add_argument("--models-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    from edgeinfer.embed.onnx import open_minilm

    embedder = open_minilm(args.models_dir or resolve().models_dir)
    train_runs, dev_runs = load_runs(args.train), load_runs(args.dev)
    dev = sorted(dev_runs)
    print(f"train: {len(train_runs)} prompts; dev: {len(dev)} prompts")
    fitted = {}
    for l2 in (0.5, 1.0, 2.0, 4.0, 8.0):
        classifier = fit(train_runs, embedder.embed, l2)
        pred = predictions(classifier, dev, embedder.embed)
        fitted[l2] = (log_loss(pred, dev_runs), classifier, pred)
        print(f"l2 {l2}: dev log-loss {fitted[l2][0]:.4f}")
    l2 = min(fitted, key=lambda k: fitted[k][0])
    _, classifier, pred = fitted[l2]
    large_acc = sum(dev_runs[p]["large"].correct for p in dev) / len(dev)
    large_s = sum(dev_runs[p]["large"].seconds for p in dev)
    for tier in TIERS:
        acc = sum(dev_runs[p][tier].correct for p in dev) / len(dev)
        secs = sum(dev_runs[p][tier].seconds for p in dev)
        print(f"{tier:>6} alone: accuracy {acc:.3f}, time {secs / large_s:.3f} of large")
    # Oracles: each prompt to the cheapest tier that answers it right. A prompt no tier answers
    # goes to large in the first (quality first), to tiny in the second: the gap is large's time
    # on prompts it gets wrong anyway, a floor no quality-first policy beats.
    for unanswered in ("large", "tiny"):
        chosen = [
            dev_runs[p][next((t for t in TIERS if dev_runs[p][t].correct), unanswered)] for p in dev
        ]
        o_acc = sum(run.correct for run in chosen) / len(dev)
        o_s = sum(run.seconds for run in chosen)
        print(
            f"oracle, unanswerable prompts to {unanswered}: accuracy {o_acc:.3f}"
            f" ({o_acc / large_acc:.3f} of large) at {o_s / large_s:.3f} of its time"
        )
    grid = [
        Setting(m, t, d)
        for m, t, d in itertools.product(
            (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.6),
            (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
            (0.0, 0.2, 0.3, 0.4, 0.5, 0.6),
        )
    ]
    right, seconds = per_prompt(grid, dev, dev_runs, pred)
    results = [
        (s, right[i].mean() / large_acc, seconds[i].sum() / large_s) for i, s in enumerate(grid)
    ]
    ok = [r for r in results if r[1] >= args.floor]
    ok.sort(key=lambda r: r[2])
    print(f"best settings on dev keeping >= {args.floor} of large-only accuracy (l2 {l2}):")
    for s, acc, t in ok[:8]:
        print(
            f"  margin {s.margin:.2f} threshold {s.threshold:.2f} min_draft_p {s.min_draft_p:.2f}:"
            f" {acc:.3f} of large's accuracy at {t:.3f} of its time"
        )
    current = next(r for r in results if r[0] == DEFAULTS)
    print(
        f"current defaults ({DEFAULTS.margin:.2f}, {DEFAULTS.threshold:.2f},"
        f" {DEFAULTS.min_draft_p:.2f}): {current[1]:.3f} at {current[2]:.3f}"
    )
    large_right = np.array([dev_runs[p]["large"].correct for p in dev], dtype=float)
    large_secs = np.array([dev_runs[p]["large"].seconds for p in dev])
    acc, t = held_halves(right, seconds, large_right, large_secs, args.floor)
    print(
        f"the same choice on held-out halves of dev (30 random halvings): {acc:.3f} of large's"
        f" accuracy at {t:.3f} of its time"
    )
    if args.weights:
        sources = [str(p) for p in args.train]
        meta = {**classifier.meta, "l2": l2, "sources": sources}
        Classifier(classifier.tiers, classifier.dim, meta).save(args.weights)
        print(f"weights written to {args.weights}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
