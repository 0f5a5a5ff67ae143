"""Sentence embeddings behind a small port.

``base.Embedder`` is what the cache and ``POST /v1/embeddings`` use; ``onnx.OnnxEmbedder`` is the
real one (the only module that imports onnxruntime and tokenizers) and ``fake.FakeEmbedder`` a
deterministic stand-in for unit tests. Importing this package loads neither runtime.
"""

from edgeinfer.embed.base import Embedder, normalise
from edgeinfer.embed.fake import FakeEmbedder

__all__ = ["Embedder", "FakeEmbedder", "normalise"]
