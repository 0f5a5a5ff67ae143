"""Train the semantic cache's verifier and choose its shipped defaults, on train and dev only.

The labelled pairs live in tests/data/cache_pairs/{train,dev,test}.jsonl, split ONCE by base
question (``group``: a question's paraphrases and near-misses stay in one split, so no split
holds a rewording of another's question), 60 / 20 / 20, by ``scripts/train_verifier.py split``.
This script

1. computes every pair's features (edgeinfer/cache/pair_features.py) with the real MiniLM;
2. fits random forests (scikit-learn, needed only here: ``pip install scikit-learn``) on train,
   for a few leaf sizes and feature fractions, with the rule guard as a veto or as features only
   (a logistic regression was tried first: on dev it kept a tenth of the forest's recall at
   precision 0.99, since a near-miss shares MORE words with its question than a paraphrase does,
   which no linear score can use);
3. on dev, for each cosine threshold, finds the lowest probability cutoff whose served pairs are
   at least ``--precision`` right, and keeps the setting with the most recall;
4. writes edgeinfer/cache/verifier_model.json with that model, cutoff and threshold, and with
   ``--test`` only then scores test (printed, never used for a choice; bench_cache.py reports
   it too).

    .venv/bin/python scripts/train_verifier.py            # train, choose, write, report
    .venv/bin/python scripts/train_verifier.py split      # (once) split raw/*.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeinfer.cache.filler import core, same_question  # noqa: E402
from edgeinfer.cache.guard import guard  # noqa: E402
from edgeinfer.cache.pair_features import pair_features  # noqa: E402
from edgeinfer.cache.verifier import MODEL_PATH, PairModel  # noqa: E402
from edgeinfer.embed.onnx import OnnxEmbedder, open_minilm  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PAIRS = REPO / "tests" / "data" / "cache_pairs"
THRESHOLDS = [round(0.50 + 0.05 * i, 2) for i in range(10)]  # 0.50 (the floor) .. 0.95
LEAVES = [2, 3, 5]
FRACTIONS = [0.3, 0.5]
TREES = 150
SEED = 0
Pairs = list[dict[str, Any]]


def load(split: str) -> Pairs:
    with open(PAIRS / f"{split}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def split_raw(seed: str = "edgeinfer-cache-pairs-v1") -> None:
    """Split raw/*.jsonl by group into train/dev/test once (60/20/20, stable hash of the group).

    The pairs of the old guard set (tests/data/semantic_pairs.jsonl, which the rules were tuned
    on) go to train only.
    """
    out: dict[str, Pairs] = {"train": [], "dev": [], "test": []}
    for path in sorted((PAIRS / "raw").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                bucket = int(hashlib.sha256(f"{seed}:{row['group']}".encode()).hexdigest(), 16)
                share = bucket % 100
                out["train" if share < 60 else "dev" if share < 80 else "test"].append(row)
    legacy = REPO / "tests" / "data" / "semantic_pairs.jsonl"
    for line in legacy.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        out["train"].append({**row, "domain": "mixed", "lang": "en", "group": "guard-dev"})
    for name, rows in out.items():
        with open(PAIRS / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        same = sum(r["label"] == "same" for r in rows)
        print(f"{name}: {len(rows)} pairs, {same} same")


def featurise(embedder: OnnxEmbedder, pairs: Pairs) -> tuple[NDArray[np.float32], NDArray[Any]]:
    """Feature matrix (each pair's cosine in column 0, for the threshold) and labels."""
    texts = sorted({p["a"] for p in pairs} | {p["b"] for p in pairs})
    vectors = dict(zip(texts, embedder.embed(texts), strict=True))
    cores = {t: core(t) for t in texts}  # as the Verifier compares them
    words = dict(zip(texts, embedder.words([cores[t] for t in texts]), strict=True))
    rows = [
        pair_features(
            cores[p["a"]],
            cores[p["b"]],
            words[p["a"]],
            words[p["b"]],
            float(vectors[p["a"]] @ vectors[p["b"]]),
        )
        for p in pairs
    ]
    return np.array(rows, dtype=np.float32), np.array([p["label"] == "same" for p in pairs])


def fit(x: NDArray[Any], y: NDArray[Any], leaf: int, features: float, rules: bool) -> PairModel:
    """A random forest, flattened into :class:`PairModel`'s arrays."""
    from sklearn.ensemble import RandomForestClassifier

    forest = RandomForestClassifier(
        n_estimators=TREES, min_samples_leaf=leaf, max_features=features, random_state=SEED,
        n_jobs=2,
    ).fit(x, y)  # fmt: skip
    same = list(forest.classes_).index(True)
    roots, feature, threshold, left, right, value = [], [], [], [], [], []
    offset, depth = 0, 0
    for tree in (e.tree_ for e in forest.estimators_):
        roots.append(offset)
        inner = tree.children_left >= 0
        feature.append(np.where(inner, tree.feature, -1))
        threshold.append(tree.threshold)
        left.append(np.where(inner, tree.children_left + offset, -1))
        right.append(np.where(inner, tree.children_right + offset, -1))
        counts = tree.value[:, 0, :]
        value.append(counts[:, same] / counts.sum(axis=1))
        offset += tree.node_count
        depth = max(depth, tree.max_depth)
    return PairModel(
        roots=np.array(roots), feature=np.concatenate(feature), threshold=np.concatenate(threshold),
        left=np.concatenate(left), right=np.concatenate(right), value=np.concatenate(value),
        depth=depth, cutoff=0.5, cosine=0.0, rules=rules,
    )  # fmt: skip


def identical(pairs: Pairs) -> NDArray[Any]:
    """Pairs that are one question in different small talk: the Verifier serves them as p = 1."""
    return np.array([same_question(p["a"], p["b"]) for p in pairs])


def probabilities(model: PairModel, x: NDArray[Any], same: NDArray[Any]) -> NDArray[Any]:
    probs = np.array([model.probability(row) for row in x])
    return np.where(same, 1.0, probs)


def serve(
    model: PairModel | None,
    x: NDArray[Any],
    vetoed: NDArray[Any],
    same: NDArray[Any],
    threshold: float,
    cutoff: float,
) -> NDArray[Any]:
    """Which pairs a lookup would serve with these settings."""
    served = (x[:, 0] >= threshold) & ~vetoed
    if model is not None:
        served &= probabilities(model, x, same) >= cutoff
    return served


def score(served: NDArray[Any], y: NDArray[Any]) -> tuple[float, float, int]:
    right = int((served & y).sum())
    precision = right / served.sum() if served.any() else 1.0
    return precision, right / max(int(y.sum()), 1), int((served & ~y).sum())


def choose(
    models: list[PairModel], x: NDArray[Any], y: NDArray[Any], vetoed: NDArray[Any],
    same: NDArray[Any], target: float,
) -> tuple[PairModel, float, float]:  # fmt: skip
    """The model, cosine threshold and cutoff with the most dev recall at ``target`` precision."""
    best: tuple[PairModel, float, float] = (models[0], 0.95, 1.0)
    best_recall = -1.0
    for model in models:
        probs = probabilities(model, x, same)
        veto = vetoed if model.rules else np.zeros_like(vetoed)
        for threshold in THRESHOLDS:
            for cutoff in np.unique(np.round(probs, 3)):
                served = (x[:, 0] >= threshold) & ~veto & (probs >= cutoff)
                precision, recall, _ = score(served, y)
                if precision >= target and recall > best_recall:
                    best, best_recall = (model, threshold, float(cutoff)), recall
    return best


def curve(model: PairModel, x: NDArray[Any], y: NDArray[Any], vetoed: NDArray[Any],
          same: NDArray[Any], threshold: float) -> list[tuple[float, float, float, int]]:  # noqa: E501  # fmt: skip
    probs = probabilities(model, x, same)
    veto = vetoed if model.rules else np.zeros_like(vetoed)
    out = []
    for cutoff in (0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99):
        served = (x[:, 0] >= threshold) & ~veto & (probs >= cutoff)
        out.append((cutoff, *score(served, y)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", nargs="?", default="train", choices=["train", "split"])
    parser.add_argument("--precision", type=float, default=0.995, help="dev precision to hold")
    parser.add_argument("--models", type=Path, default=REPO / ".edgeinfer-test" / "models")
    parser.add_argument("--write", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--test", action="store_true", help="also score test (after choosing)")
    args = parser.parse_args()
    if args.command == "split":
        split_raw()
        return
    embedder = open_minilm(args.models)
    data = {name: load(name) for name in ("train", "dev", "test")}
    feats = {name: featurise(embedder, pairs) for name, pairs in data.items()}
    sames = {name: identical(pairs) for name, pairs in data.items()}
    vetoes = {
        name: np.array([guard(core(p["a"]), core(p["b"])) is not None for p in pairs])
        & ~sames[name]
        for name, pairs in data.items()
    }
    x_train, y_train = feats["train"]
    models = []
    for rules in (True, False):
        keep = ~vetoes["train"] if rules else np.ones(len(y_train), dtype=bool)
        for leaf in LEAVES:
            for fraction in FRACTIONS:
                models.append(fit(x_train[keep], y_train[keep], leaf, fraction, rules))
    x_dev, y_dev = feats["dev"]
    chosen, threshold, cutoff = choose(
        models, x_dev, y_dev, vetoes["dev"], sames["dev"], args.precision
    )
    model = dataclasses.replace(chosen, cutoff=cutoff, cosine=threshold)
    index = next(i for i, m in enumerate(models) if m is chosen)
    leaf = LEAVES[index // len(FRACTIONS) % len(LEAVES)]
    setting = {"rules": model.rules, "min_samples_leaf": leaf,
               "max_features": FRACTIONS[index % len(FRACTIONS)], "trees": TREES}  # fmt: skip
    print(f"chosen on dev: {setting} threshold={threshold} cutoff={cutoff:.3f}")
    if args.write:
        sizes = {name: len(pairs) for name, pairs in data.items()}
        MODEL_PATH.write_text(model.to_json(setting=setting, pairs=sizes))
        print(f"wrote {MODEL_PATH.relative_to(REPO)}")
    for name in ("dev", "test") if args.test else ("dev",):
        x, y = feats[name]
        print(f"\n## {name}: {len(y)} pairs, {int(y.sum())} same\n")
        print("| setting | precision | recall | wrong hits |\n|---|---|---|---|")
        for label, served in (
            ("cosine ≥ 0.80 alone", x[:, 0] >= 0.80),
            ("cosine ≥ 0.80 + rule guard", (x[:, 0] >= 0.80) & ~vetoes[name]),
            (f"shipped: cosine ≥ {threshold} + verifier ≥ {cutoff:.2f}",
             serve(model, x, vetoes[name] if model.rules else np.zeros_like(y), sames[name],
                   threshold, cutoff)),
        ):  # fmt: skip
            p, r, wrong = score(served, y)
            print(f"| {label} | {p:.3f} | {r:.3f} | {wrong} |")
        print(f"\ncurve at threshold {threshold}: cutoff precision recall wrong")
        for row in curve(model, x, y, vetoes[name], sames[name], threshold):
            print("  {:.2f}  {:.3f}  {:.3f}  {}".format(*row))


if __name__ == "__main__":
    main()
