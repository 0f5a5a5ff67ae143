"""The verifier: may the answer to a stored question be served for an incoming one?

The semantic layer's KNN finds stored questions whose embedding is close to the incoming one;
closeness is not sameness ("Is a list bigger than a tuple?" and its reverse sit at cosine 0.99).
For each candidate above the cosine threshold the store asks :meth:`Verifier.check`:

0. greetings, thanks and polite frames are taken off both questions' ends (filler.py): two
   questions equal without them are served, and the steps below compare what is left;
1. the rule guard (guard.py) refuses pairs that differ in a number, unit, time, negation,
   direction, comparison, language, scope or named thing, when ``rules`` is on;
2. a random forest over the pair's features (pair_features.py: the words the two questions do
   not share and how well MiniLM's contextual token states align them, the guard's rule firings,
   the cosine) gives the probability that one answer serves both; below ``cutoff`` it refuses.

The model is trained and its cutoff chosen by ``scripts/train_verifier.py`` on the train and dev
splits of tests/data/cache_pairs (test is only scored, never tuned on); its weights ship as
``verifier_model.json`` beside this module. Words of recently seen questions are kept in a small
LRU, so a stored question met again costs no second forward pass.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgeinfer.cache.filler import core, same_core
from edgeinfer.cache.guard import guard
from edgeinfer.cache.pair_features import NAMES, pair_features
from edgeinfer.core.embedding import Words

MODEL_PATH = Path(__file__).with_name("verifier_model.json")
_LRU_ROWS = 32_768
"""Word vectors the LRU keeps in all (about 50 MB): ~2,000 typical questions, or 128 of the
longest the embedder reads."""

WordsOf = Callable[[list[str]], list[Words]]


@dataclass(frozen=True, eq=False)
class PairModel:
    """A random forest over :data:`NAMES`: the mean of its trees' leaf probabilities.

    The trees are flattened into one array per field (sklearn's layout, node ids made global):
    ``feature[n] < 0`` marks a leaf; otherwise go to ``left[n]`` when ``x[feature[n]] <=
    threshold[n]``, else ``right[n]``. All trees are walked at once, one numpy step per level.
    """

    roots: NDArray[np.int64]
    feature: NDArray[np.int64]
    threshold: NDArray[np.float64]
    left: NDArray[np.int64]
    right: NDArray[np.int64]
    value: NDArray[np.float64]
    depth: int
    cutoff: float
    """The probability the shipped defaults serve at (chosen on dev)."""
    cosine: float
    """The cosine threshold the cutoff was chosen with."""
    rules: bool
    """Whether the rule guard vetoes before the forest (chosen on dev)."""

    def probability(self, x: NDArray[np.float32]) -> float:
        node = self.roots.copy()
        for _ in range(self.depth):
            feat = self.feature[node]
            inner = feat >= 0
            if not inner.any():
                break
            go_left = x[np.maximum(feat, 0)] <= self.threshold[node]
            node = np.where(inner, np.where(go_left, self.left[node], self.right[node]), node)
        return float(self.value[node].mean())

    @classmethod
    def load(cls, path: Path = MODEL_PATH) -> PairModel:
        """Read a model file; a file made for other features is refused (ValueError)."""
        data = json.loads(path.read_text(encoding="utf-8"))
        if tuple(data["names"]) != NAMES:
            raise ValueError(f"{path} was trained on other features; retrain the verifier")
        return cls(
            roots=np.array(data["roots"], dtype=np.int64),
            feature=np.array(data["feature"], dtype=np.int64),
            threshold=np.array(data["threshold"], dtype=np.float64),
            left=np.array(data["left"], dtype=np.int64),
            right=np.array(data["right"], dtype=np.int64),
            value=np.array(data["value"], dtype=np.float64),
            depth=int(data["depth"]),
            cutoff=float(data["cutoff"]),
            cosine=float(data["cosine"]),
            rules=bool(data["rules"]),
        )

    def to_json(self, **extra: Any) -> str:
        body = {
            "names": list(NAMES),
            "cutoff": self.cutoff,
            "cosine": self.cosine,
            "rules": self.rules,
            "depth": self.depth,
            **extra,
            "roots": self.roots.tolist(),
            "feature": self.feature.tolist(),
            "threshold": [round(t, 6) for t in self.threshold.tolist()],
            "left": self.left.tolist(),
            "right": self.right.tolist(),
            "value": [round(v, 4) for v in self.value.tolist()],
        }
        return json.dumps(body, separators=(",", ":")) + "\n"


class Verifier:
    """Rule guard, then the learned pair model (either may be left out).

    Args:
        words_of: the embedder's :meth:`words` (contextual word vectors); needed by the model.
        model: the pair model; None checks with the rules alone.
        cutoff: serve when the model's probability is at least this; None = the model's own.
        rules: ask the rule guard first; None = as the model was calibrated (True without one).
    """

    def __init__(
        self,
        words_of: WordsOf | None = None,
        model: PairModel | None = None,
        *,
        cutoff: float | None = None,
        rules: bool | None = None,
    ) -> None:
        if model is not None and words_of is None:
            raise ValueError("the learned verifier needs the embedder's word vectors")
        self.model = model
        self.rules = rules if rules is not None else (model.rules if model else True)
        self.cutoff = cutoff if cutoff is not None else (model.cutoff if model else 0.0)
        self._words_of = words_of
        self._words: OrderedDict[str, Words] = OrderedDict()
        self._rows = 0
        self._lock = threading.Lock()

    def words(self, texts: list[str]) -> list[Words]:
        """Contextual word vectors of ``texts``, from the LRU where it has them."""
        assert self._words_of is not None
        with self._lock:
            known = {t: self._words[t] for t in texts if t in self._words}
            for text in known:
                self._words.move_to_end(text)
        missing = [t for t in dict.fromkeys(texts) if t not in known]
        if missing:
            known.update(zip(missing, self._words_of(missing), strict=True))
            with self._lock:
                for text in missing:
                    if text not in self._words:
                        self._words[text] = known[text]
                        self._rows += len(known[text].names)
                while self._rows > _LRU_ROWS:
                    _, dropped = self._words.popitem(last=False)
                    self._rows -= len(dropped.names)
        return [known[t] for t in texts]

    def probability(self, stored: str, incoming: str, similarity: float) -> float:
        """The model's probability that ``stored``'s answer serves ``incoming``: 1 when the two
        are one question in different small talk, else the model's over the cores."""
        a, b = core(stored), core(incoming)
        return 1.0 if same_core(a, b) else self._model_p(a, b, similarity)

    def _model_p(self, a: str, b: str, similarity: float) -> float:
        assert self.model is not None
        words_a, words_b = self.words([a, b])
        return self.model.probability(pair_features(a, b, words_a, words_b, similarity))

    def check(self, stored: str, incoming: str, similarity: float) -> str | None:
        """Why ``incoming`` must not get ``stored``'s answer, or None to serve it.

        Reasons start with the refusing part: a guard rule's name, or ``verifier``.
        """
        a, b = core(stored), core(incoming)  # once: both the guard and the model read them
        if same_core(a, b):
            return None
        if self.rules and (reason := guard(a, b)) is not None:
            return reason
        if self.model is None:
            return None
        p = self._model_p(a, b, similarity)
        if p < self.cutoff:
            return f"verifier: p(same) {p:.2f} < {self.cutoff:.2f}"
        return None
