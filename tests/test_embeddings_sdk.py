"""POST /v1/embeddings as SDKs send it: the openai SDK (base64 by default) and LangChain."""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.conftest import Daemon, start_daemon

pytestmark = pytest.mark.real

TEXTS = ["The cat sat on the mat.", "Quarterly revenue grew by 12 percent."]


def _http(daemon: Daemon) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(daemon.socket)), timeout=60)


@pytest.fixture
def client(daemon: Daemon) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url="http://edgeinfer/v1", api_key="unused", http_client=_http(daemon), max_retries=0
    ) as c:
        yield c


def test_sdk_default_base64_equals_the_float_result(client: openai.OpenAI, daemon: Daemon) -> None:
    sdk = client.embeddings.create(model="all-MiniLM-L6-v2", input=TEXTS)  # SDK default: base64
    with daemon.client() as c:
        raw = c.post("/v1/embeddings", json={"model": "x", "input": TEXTS}).json()
        b64 = c.post("/v1/embeddings", json={"input": TEXTS, "encoding_format": "base64"}).json()
    floats = [d["embedding"] for d in raw["data"]]
    assert [d.embedding for d in sdk.data] == floats  # float32 values survive exactly
    assert len(floats[0]) == 384 and sdk.model == raw["model"] == "all-MiniLM-L6-v2-int8"
    packed = base64.b64decode(b64["data"][1]["embedding"])
    assert list(struct.unpack("<384f", packed)) == floats[1]
    assert sdk.usage.prompt_tokens == raw["usage"]["prompt_tokens"] > 0


def test_single_string_and_float_format(client: openai.OpenAI) -> None:
    one = client.embeddings.create(model="m", input=TEXTS[0], encoding_format="float")
    both = client.embeddings.create(model="m", input=TEXTS, encoding_format="float")
    assert len(one.data) == 1 and one.data[0].embedding == both.data[0].embedding


def test_dimensions_other_than_384_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="m", input=TEXTS, dimensions=128)
    assert "384" in str(caught.value) and "dimensions" in str(caught.value)
    same = client.embeddings.create(model="m", input=TEXTS, dimensions=384)
    assert len(same.data[0].embedding) == 384


@pytest.mark.parametrize("tokens", [[1, 2, 3], [[1, 2], [3]]])
def test_token_arrays_are_a_clear_400(daemon: Daemon, tokens: object) -> None:
    with daemon.client() as c:
        r = c.post("/v1/embeddings", json={"model": "m", "input": tokens})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "input" and "check_embedding_ctx_length=False" in err["message"]


def test_langchain_openai_embeddings(daemon: Daemon, client: openai.OpenAI) -> None:
    lc = pytest.importorskip("langchain_openai")
    with _http(daemon) as http:  # LangChain never closes a client it was given
        emb = lc.OpenAIEmbeddings(
            model="all-MiniLM-L6-v2",
            base_url="http://edgeinfer/v1",
            api_key="unused",
            http_client=http,
            check_embedding_ctx_length=False,
        )
        docs = emb.embed_documents(TEXTS)
        query = emb.embed_query(TEXTS[0])
    direct = client.embeddings.create(model="m", input=TEXTS)
    assert docs == [d.embedding for d in direct.data]
    assert query == docs[0]


def test_the_embedder_serves_without_the_cache(tiny_path: object) -> None:
    """--no-cache turns the cache off, not the embedder: /v1/embeddings, Ollama's /api/embed
    and the router's classifier (its P(correct) per tier) keep working."""
    d = start_daemon("--models", "tiny", "--no-cache")
    try:
        with d.client() as c:
            r = c.post("/v1/embeddings", json={"model": "all-minilm", "input": ["hello"]})
            assert r.status_code == 200, r.text
            assert len(r.json()["data"][0]["embedding"]) == 384
            r = c.post("/api/embed", json={"model": "all-minilm", "input": "hello"})
            assert r.status_code == 200 and len(r.json()["embeddings"][0]) == 384, r.text
            body = {
                "model": "auto",
                "messages": [{"role": "user", "content": "What is 2 + 2?"}],
                "max_tokens": 4,
                "temperature": 0,
            }
            r = c.post("/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
            assert r.json()["edgeinfer"]["route"]["predicted"], r.json()["edgeinfer"]
            assert c.get("/stats").json().get("cache") in (None, {}, {"enabled": False})
    finally:
        d.stop()
