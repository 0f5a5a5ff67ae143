"""Per-tier logistic regressions: how likely each tier is to answer a request correctly.

Input: the cheap features plus the request's sentence embedding (the cache's ONNX MiniLM).
Trained from labelled outcomes (prompt, tier, correct) by ``edgeinfer router train``; the
bundled weights come from ``tests/data/router/train_outcomes.jsonl``. Plain numpy: a few
hundred examples and a few hundred features need no framework.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeinfer.routing.features import N_CHEAP_FEATURES, cheap_features

FloatArray = npt.NDArray[np.float64]
FORMAT_VERSION = 1
BUNDLED = Path(__file__).with_name("weights.json")


@dataclass(frozen=True)
class Outcome:
    """One labelled result: whether ``tier`` answered ``prompt`` correctly."""

    prompt: str
    tier: str
    correct: bool


def feature_vector(text: str, embedding: Sequence[float] | FloatArray) -> FloatArray:
    """Cheap features followed by the embedding; the classifier's input."""
    return np.concatenate([np.asarray(cheap_features(text)), np.asarray(embedding, np.float64)])


@dataclass(frozen=True)
class TierModel:
    weights: FloatArray
    bias: float

    def predict(self, x: FloatArray) -> float:
        z = float(x @ self.weights) + self.bias
        return float(1.0 / (1.0 + np.exp(-np.clip(z, -30.0, 30.0))))


@dataclass(frozen=True)
class Classifier:
    """P(correct) per tier name; tiers it was not trained on are simply absent."""

    tiers: Mapping[str, TierModel]
    dim: int
    meta: Mapping[str, Any]

    def predict(self, x: FloatArray) -> dict[str, float]:
        if x.shape[0] != self.dim:
            return {}
        return {name: model.predict(x) for name, model in self.tiers.items()}

    def save(self, path: Path) -> None:
        body = {
            "version": FORMAT_VERSION,
            "dim": self.dim,
            "meta": dict(self.meta),
            "tiers": {
                name: {"bias": m.bias, "weights": [round(float(w), 6) for w in m.weights]}
                for name, m in self.tiers.items()
            },
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(body, indent=None))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Classifier:
        body = json.loads(path.read_text())
        if body.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path}: unsupported classifier format {body.get('version')!r}")
        tiers = {
            name: TierModel(np.asarray(t["weights"], np.float64), float(t["bias"]))
            for name, t in body["tiers"].items()
        }
        for name, tier in tiers.items():
            if not (np.isfinite(tier.weights).all() and np.isfinite(tier.bias)):
                raise ValueError(f"{path}: tier {name!r} has weights that are not finite numbers")
        return cls(tiers, int(body["dim"]), body.get("meta", {}))


def fit_logistic(x: FloatArray, y: FloatArray, *, l2: float = 1.0, steps: int = 400) -> TierModel:
    """L2-regularised logistic regression by Newton's method (IRLS); converges in ~10 steps."""
    n, d = x.shape
    xb = np.hstack([x, np.ones((n, 1))])
    w = np.zeros(d + 1)
    reg = np.full(d + 1, l2)
    reg[-1] = 0.0  # the bias is not shrunk
    for _ in range(min(steps, 50)):
        p = 1.0 / (1.0 + np.exp(-np.clip(xb @ w, -30.0, 30.0)))
        grad = xb.T @ (p - y) + reg * w
        hess = (xb * (p * (1 - p))[:, None]).T @ xb + np.diag(reg)
        step = np.linalg.solve(hess, grad)
        w -= step
        if float(np.abs(step).max()) < 1e-6:
            break
    return TierModel(w[:-1], float(w[-1]))


def train(
    outcomes: Sequence[Outcome],
    embed: Any,
    *,
    l2: float = 1.0,
    meta: Mapping[str, Any] | None = None,
) -> Classifier:
    """One regression per tier over the outcomes; ``embed(texts) -> (n, dim) array``."""
    prompts = sorted({o.prompt for o in outcomes})
    vectors = np.asarray(embed(prompts), np.float64)
    index = {p: feature_vector(p, vectors[i]) for i, p in enumerate(prompts)}
    tiers: dict[str, TierModel] = {}
    for tier in sorted({o.tier for o in outcomes}):
        rows = [o for o in outcomes if o.tier == tier]
        x = np.stack([index[o.prompt] for o in rows])
        y = np.asarray([1.0 if o.correct else 0.0 for o in rows])
        tiers[tier] = fit_logistic(x, y, l2=l2)
    dim = N_CHEAP_FEATURES + vectors.shape[1]
    info = {"examples": len(prompts), "outcomes": len(outcomes), **(meta or {})}
    return Classifier(tiers, dim, info)
