"""The Embedder port: texts in, L2-normalised float32 vectors out.

Callers (the cache's semantic layer, the embeddings route) treat the dot product of two vectors
as their cosine similarity, so every implementation must return unit rows. ``embed`` is a
blocking native call: the service runs it in a worker thread, never on the event loop.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from numpy.typing import NDArray

Vectors = NDArray[np.float32]

# The bundled embedder (embed/onnx.py), named here so the cache's CLI can open its database
# without loading onnxruntime.
MINILM_NAME = "all-MiniLM-L6-v2-int8"
MINILM_DIM = 384
INT8_RECIPE = "overlay, fold, quantize_dynamic per channel QInt8: v1"
"""How embed/onnx.py builds its int8 networks from the model file: change it with the build, so
a kept network (its key) and stored vectors (MINILM_VECTORS) of the old build are not reused."""
MINILM_VECTORS = f"{MINILM_NAME}, {INT8_RECIPE}"
"""What the cache and the router's classifier record as their vectors' maker: the model and how
it runs. Vectors made otherwise are dropped (the cache) or passed over (a classifier), since
they would be compared with another network's."""


class Embedder(Protocol):
    """A sentence embedder.

    Attributes:
        dim: length of every vector.
        name: the model's name in API responses (the cache tells vectors apart by
            MINILM_VECTORS, which also names how the network runs).
    """

    dim: int
    name: str

    def embed(self, texts: list[str]) -> Vectors:
        """One unit row of shape ``(dim,)`` per text, in order; ``(0, dim)`` for no texts."""
        ...

    def token_counts(self, texts: list[str]) -> list[int]:
        """Tokens the model reads of each text (after truncation), for ``usage``."""
        ...

    def fits(self, texts: list[str]) -> list[bool]:
        """Whether the model reads each text whole (False: it was truncated to the window)."""
        ...


def normalise(matrix: NDArray[np.floating]) -> Vectors:
    """Rows scaled to unit length (an all-zero row stays zero rather than turning into NaN)."""
    rows = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    out: Vectors = np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)
    return out
