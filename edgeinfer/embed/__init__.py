"""Sentence embedders behind the :class:`~edgeinfer.core.embedding.Embedder` port.

The port is what the cache, the router, the prompt layer and ``POST /v1/embeddings`` use;
``onnx.OnnxEmbedder`` is the real one (the only module that imports onnxruntime and
tokenizers) and ``fake.FakeEmbedder`` a deterministic stand-in for unit tests. Importing this
package loads neither runtime.
"""

from edgeinfer.embed.fake import FakeEmbedder

__all__ = ["FakeEmbedder"]
