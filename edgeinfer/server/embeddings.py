"""``POST /v1/embeddings`` as OpenAI SDKs send it.

One embedder answers (the response cache's all-MiniLM-L6-v2, 384 dimensions, unit length),
whatever ``model`` names: SDKs and frameworks always send one (LangChain's default is an OpenAI
model name), and the response's ``model`` says which model really answered.

``encoding_format`` ``base64`` is the vector's little-endian float32 bytes, as OpenAI sends it
(the openai SDK asks for it by default and decodes it). ``dimensions`` other than the
embedder's is refused: MiniLM is not trained to be truncated. Token arrays (what LangChain
sends unless ``check_embedding_ctx_length=False``) are refused: they are ids of another model's
vocabulary.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import FastAPI
from pydantic import Field

from edgeinfer.errors import InvalidRequest, ModelUnavailable
from edgeinfer.server.schemas import StrictModel
from edgeinfer.service.pipeline import InferenceService

_MAX_INPUTS = 2048

TOKENS_REFUSED = (
    "input: token arrays are not supported (they are ids of another model's vocabulary);"
    " send text. LangChain's OpenAIEmbeddings sends them unless"
    " check_embedding_ctx_length=False"
)


class EmbeddingRequest(StrictModel):
    input: (
        str
        | Annotated[list[str], Field(min_length=1, max_length=_MAX_INPUTS)]
        | Annotated[list[int], Field(min_length=1)]
        | Annotated[list[list[int]], Field(min_length=1)]
    )
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1)] | None = None
    user: str | None = None

    def texts(self) -> list[str]:
        if isinstance(self.input, str):
            return [self.input]
        if not self.input or not all(isinstance(item, str) for item in self.input):
            raise InvalidRequest(TOKENS_REFUSED, param="input")
        return [item for item in self.input if isinstance(item, str)]


def encode(vector: np.ndarray[Any, Any], encoding: str) -> list[float] | str:
    """One vector as OpenAI sends it: a list of floats, or base64 of little-endian float32."""
    if encoding == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector]


def add_embeddings_route(app: FastAPI, service: InferenceService) -> None:
    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest) -> dict[str, Any]:
        embedder = service.embedder
        if embedder is None:
            raise ModelUnavailable("the embedding model is not loaded (see the daemon's log)")
        if body.dimensions is not None and body.dimensions != embedder.dim:
            raise InvalidRequest(
                f"dimensions: {embedder.name} makes {embedder.dim}-dimensional vectors and"
                f" cannot shorten them; leave dimensions out or set it to {embedder.dim}",
                param="dimensions",
            )
        texts = body.texts()
        vectors = await asyncio.to_thread(embedder.embed, texts)
        tokens = sum(await asyncio.to_thread(embedder.token_counts, texts))
        return {
            "object": "list",
            "model": embedder.name,
            "data": [
                {"object": "embedding", "index": i, "embedding": encode(vec, body.encoding_format)}
                for i, vec in enumerate(vectors)
            ],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
