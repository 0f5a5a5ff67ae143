"""A deterministic embedder for unit tests: hashed bag of words, no model, no threads.

Texts sharing words get similar vectors (identical word sets give cosine 1.0), so tests can
build hits and misses on purpose. It records every call, as the fake engine does.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

from edgeinfer.core.embedding import Vectors, normalise

_WORD = re.compile(r"[\w']+")


class FakeEmbedder:
    """Each lowercased word adds a fixed pseudo-random direction; rows are L2-normalised."""

    name = "fake-bow"

    def __init__(self, dim: int = 64, window: int = 256) -> None:
        if dim <= 0 or dim % 8:
            raise ValueError("dim must be a positive multiple of 8 (the cache stores sign bits)")
        self.dim = dim
        self.window = window
        self.calls: list[list[str]] = []

    def embed(self, texts: list[str]) -> Vectors:
        self.calls.append(list(texts))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in _WORD.findall(text.lower()):
                out[row] += self._direction(word)
        return normalise(out)

    def token_counts(self, texts: list[str]) -> list[int]:
        return [len(_WORD.findall(t.lower())) for t in texts]

    def fits(self, texts: list[str]) -> list[bool]:
        return [n <= self.window for n in self.token_counts(texts)]

    def _direction(self, word: str) -> Vectors:
        seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
        return np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
