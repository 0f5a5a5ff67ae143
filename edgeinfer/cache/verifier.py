"""The verifier: may the answer to a stored question be served for an incoming one?

The semantic layer's KNN finds stored questions whose embedding is close to the incoming one;
closeness is not sameness ("Is a list bigger than a tuple?" and its reverse sit at cosine 0.99).
For each candidate above the cosine threshold the store asks :meth:`Verifier.check`:

0. greetings, thanks and polite frames are taken off both questions' ends (filler.py): two
   questions equal without them are served, and the steps below compare what is left;
1. the rule guard (guard.py) refuses pairs that differ in a number, unit, time, negation,
   direction, comparison, language, scope or named thing, when ``rules`` is on (the shipped
   calibration leaves it off: on dev it cost the cross-encoder a third of its recall and added
   no precision);
2. a cross-encoder (the embedder's MiniLM fine-tuned to read both questions in one pass,
   embed/onnx.py's ``OnnxPairScorer``) gives the probability that one answer serves both;
   below ``cutoff`` it refuses.

The network is fine-tuned and its cutoff chosen by ``scripts/train_verifier.py`` on the train
and dev splits of tests/data/cache_pairs (test is only scored, never tuned on); its weights
ship as ``verifier_weights.npz`` and the calibration as ``verifier_model.json``, beside this
module.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgeinfer.cache.filler import core, same_core
from edgeinfer.cache.guard import guard

MODEL_PATH = Path(__file__).with_name("verifier_model.json")
"""The calibration the shipped weights were chosen with."""
WEIGHTS_PATH = Path(__file__).with_name("verifier_weights.npz")
"""The cross-encoder's fine-tuned weights (laid over the embedder's model file)."""

PairScorer = Callable[[list[tuple[str, str]]], NDArray[np.float32]]
"""(stored, incoming) pairs -> p(one answer serves both), one per pair."""


@dataclass(frozen=True)
class Calibration:
    """Where the shipped cross-encoder serves: chosen together on dev."""

    cutoff: float
    """The p(same) a hit needs."""
    cosine: float
    """The cosine threshold the cutoff was chosen with."""
    rules: bool
    """Whether the rule guard vetoes before the model."""

    @classmethod
    def load(cls, path: Path = MODEL_PATH) -> Calibration:
        """Read a calibration file (OSError, ValueError or KeyError when it is unusable)."""
        data = json.loads(path.read_text(encoding="utf-8"))
        cutoff, cosine = float(data["cutoff"]), float(data["cosine"])
        if not (0.0 <= cutoff <= 1.0 and 0.0 < cosine <= 1.0):
            raise ValueError(f"{path}: cutoff {cutoff} or cosine {cosine} out of range")
        return cls(cutoff=cutoff, cosine=cosine, rules=bool(data["rules"]))

    def to_json(self, **extra: Any) -> str:
        body = {"cutoff": self.cutoff, "cosine": self.cosine, "rules": self.rules, **extra}
        return json.dumps(body, indent=1) + "\n"


class Verifier:
    """Rule guard, then the cross-encoder (either may be left out).

    Args:
        scorer: the cross-encoder's batch scorer; None checks with the rules alone.
        calibration: the scorer's shipped settings (cutoff, and whether the rules veto).
        cutoff: serve when the scorer's probability is at least this; None = calibrated.
        rules: ask the rule guard first; None = as calibrated (True without a scorer).
    """

    def __init__(
        self,
        scorer: PairScorer | None = None,
        calibration: Calibration | None = None,
        *,
        cutoff: float | None = None,
        rules: bool | None = None,
    ) -> None:
        if scorer is not None and calibration is None:
            calibration = Calibration.load()
        self.scorer = scorer
        self.calibration = calibration if scorer is not None else None
        default_rules = self.calibration.rules if self.calibration else True
        self.rules = rules if rules is not None else default_rules
        self.cutoff = cutoff if cutoff is not None else (
            self.calibration.cutoff if self.calibration else 0.0
        )  # fmt: skip

    def probability(self, stored: str, incoming: str) -> float:
        """The scorer's probability that ``stored``'s answer serves ``incoming``: 1 when the two
        are one question in different small talk, else the scorer's over the cores."""
        a, b = core(stored), core(incoming)
        return 1.0 if same_core(a, b) else self._p(a, b)

    def _p(self, a: str, b: str) -> float:
        assert self.scorer is not None
        return float(self.scorer([(a, b)])[0])

    def check(self, stored: str, incoming: str, similarity: float) -> str | None:
        """Why ``incoming`` must not get ``stored``'s answer, or None to serve it.

        Reasons start with the refusing part: a guard rule's name, or ``verifier``.
        ``similarity`` is the candidates' cosine (the store thresholds it before asking).
        """
        a, b = core(stored), core(incoming)  # once: both the guard and the model read them
        if same_core(a, b):
            return None
        if self.rules and (reason := guard(a, b)) is not None:
            return reason
        if self.scorer is None:
            return None
        p = self._p(a, b)
        if p < self.cutoff:
            return f"verifier: p(same) {p:.2f} < {self.cutoff:.2f}"
        return None
