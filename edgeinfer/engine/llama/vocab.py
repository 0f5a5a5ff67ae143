"""Tokenizer calls over a loaded llama.cpp vocabulary, and the daemon's vocab-only load.

:class:`VocabCalls` is what :class:`~edgeinfer.engine.llama.LlamaEngine` (a full load) and
:class:`LlamaVocab` (weights left out) have in common: tokenizing, one token's piece,
end-of-generation, the grammars for ``response_format``, and the :class:`EngineInfo` both report.
"""

from __future__ import annotations

import ctypes
import json
import os
from pathlib import Path
from typing import Any

import llama_cpp.llama_cpp as C
import llama_cpp.llama_grammar as llama_grammar

from edgeinfer.engine.base import EngineInfo
from edgeinfer.engine.grammar_limits import check_grammar, check_schema
from edgeinfer.engine.llama.backend import init_backend
from edgeinfer.engine.llama.schema import schema_to_gbnf
from edgeinfer.errors import EngineError, InvalidRequest, ModelUnavailable


def _meta(model: Any, key: str) -> str | None:
    buf = ctypes.create_string_buffer(1 << 16)
    n = C.llama_model_meta_val_str(model, key.encode(), buf, len(buf))
    return buf.value.decode("utf-8", "replace") if n >= 0 else None


class VocabCalls:
    """Tokenizer calls over a loaded model's vocabulary (``_vocab``), shared by the full
    engine and the daemon's vocab-only load."""

    _vocab: Any
    _pieces: dict[int, bytes]

    _model: Any

    def _info(self, size_bytes: int, **more: Any) -> EngineInfo:
        """What the rest of the system needs to know of this model (``more``: what only a
        loaded context can tell)."""
        return EngineInfo(
            n_ctx_train=C.llama_model_n_ctx_train(self._model),
            n_vocab=C.llama_vocab_n_tokens(self._vocab),
            chat_template=_meta(self._model, "tokenizer.chat_template"),
            bos_text=self._text(C.llama_vocab_bos(self._vocab)),
            eos_text=self._text(C.llama_vocab_eos(self._vocab)),
            size_bytes=size_bytes,
            **more,
        )

    def _text(self, token: int) -> str:
        if token < 0:
            return ""
        raw = C.llama_vocab_get_text(self._vocab, token)
        return raw.decode("utf-8", "replace") if raw else ""

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (C.llama_token * cap)()
        n = C.llama_tokenize(self._vocab, data, len(data), buf, cap, add_special, parse_special)
        if n < 0:
            cap = -n
            buf = (C.llama_token * cap)()
            n = C.llama_tokenize(self._vocab, data, len(data), buf, cap, add_special, parse_special)
        if n < 0:
            raise EngineError(f"tokenizer failed with code {n}")
        return list(buf[:n])

    def token_to_piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            buf = ctypes.create_string_buffer(256)
            n = C.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            piece = buf.raw[: max(n, 0)]
            self._pieces[token] = piece
        return piece

    def is_eog(self, token: int) -> bool:
        return bool(C.llama_vocab_is_eog(self._vocab, token))

    def grammar_for(self, kind: str, schema: str | None) -> str:
        if kind == "json_object":
            return str(llama_grammar.JSON_GBNF)
        try:
            check_schema(json.loads(schema or "{}"))
            grammar = schema_to_gbnf(schema or "{}")
        except InvalidRequest:
            raise
        except RecursionError as exc:  # the converter recurses per property and nesting level
            raise InvalidRequest(
                "response_format.json_schema is too large to turn into a grammar (the converter "
                "ran out of nesting depth: fewer properties or a flatter schema)",
                param="response_format",
            ) from exc
        except Exception as exc:  # the converter raises bare exceptions of several kinds
            raise InvalidRequest(
                f"response_format.json_schema cannot be turned into a grammar: {exc}",
                param="response_format",
            ) from exc
        check_grammar(grammar)  # what reaches llama.cpp's recursive parser stays shallow
        return grammar


class LlamaVocab(VocabCalls):
    """A vocab-only load (no weights, no context: 0.06 s and ~10 MB for tiny, 0.2 s and ~45 MB
    for a 152k-token vocabulary): the daemon tokenizes and renders prompts with it while the
    model itself runs in its runner process. ``info`` is replaced by the runner's once it has
    loaded."""

    def __init__(self, path: Path) -> None:
        init_backend()
        mparams = C.llama_model_default_params()
        mparams.vocab_only = True
        self._model = C.llama_model_load_from_file(os.fsencode(path), mparams)
        if not self._model:
            raise ModelUnavailable(f"llama.cpp could not load {path} (not a valid GGUF model?)")
        self._vocab = C.llama_model_get_vocab(self._model)
        self._pieces = {}
        self.info = self._info(path.stat().st_size)

    def close(self) -> None:
        if self._model:
            C.llama_model_free(self._model)
            self._model = None
