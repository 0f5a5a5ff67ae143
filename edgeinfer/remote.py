"""A remote tier: any OpenAI-compatible endpoint (vLLM, llama.cpp's server, a cloud API).

The router treats it like a local model; the service wraps its stream in the same events a
local runner emits, so caching, accounting and the wire format stay the same. Retries cover
connection failures, 429 and 5xx before the first token; after that a failure ends the stream
with ``upstream_error`` (a half-streamed answer cannot be retried silently).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import httpx

from edgeinfer.config.schema import RemoteSpec
from edgeinfer.errors import EdgeInferError, UpstreamError
from edgeinfer.pool.events import Delta, Event, Failed, Finished, FinishReason, Usage

_RETRYABLE = {408, 409, 425, 429, 500, 502, 503, 504}


class RemoteTier:
    """One configured endpoint; one pooled HTTP client for its lifetime."""

    def __init__(
        self,
        spec: RemoteSpec,
        *,
        env: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        backoff: float = 0.5,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self._env = os.environ if env is None else env
        self._transport = transport
        self._backoff = backoff
        self._client: httpx.AsyncClient | None = None

    def _headers(self) -> dict[str, str]:
        if self.spec.api_key_env is None:
            return {}
        key = self._env.get(self.spec.api_key_env)
        if not key:
            raise UpstreamError(
                f"remote {self.name!r}: environment variable {self.spec.api_key_env} is not set"
            )
        return {"Authorization": f"Bearer {key}"}

    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self.spec.url, timeout=self.spec.timeout, transport=self._transport
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def body(
        self, messages: Sequence[Mapping[str, Any]], fields: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The upstream request: our messages and sampling fields, under the remote's model name."""
        return {
            **{k: v for k, v in fields.items() if v is not None},
            "model": self.spec.model,
            "messages": [dict(m) for m in messages],
            "stream": True,
            "stream_options": {"include_usage": True},
        }

    async def start(
        self, body: Mapping[str, Any], emit: Callable[[Event], None]
    ) -> asyncio.Task[None]:
        """Stream ``body`` upstream in a task that emits Delta/Finished/Failed events."""
        headers = self._headers()  # a missing key is the caller's error, raised now
        return asyncio.create_task(self._run(dict(body), headers, emit))

    async def _run(
        self, body: dict[str, Any], headers: dict[str, str], emit: Callable[[Event], None]
    ) -> None:
        t0 = time.monotonic()
        ttft: float | None = None
        usage: dict[str, Any] = {}
        finish = "stop"
        pieces = 0  # content chunks: the token count when the upstream sends no usage
        try:
            async for chunk in self._chunks(body, headers):
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or ():
                    text = (choice.get("delta") or {}).get("content") or ""
                    if text:
                        ttft = ttft if ttft is not None else time.monotonic() - t0
                        pieces += 1
                        emit(Delta(text))
                    finish = choice.get("finish_reason") or finish
        except EdgeInferError as exc:
            emit(Failed(exc))
            return
        reason: FinishReason = "length" if finish == "length" else "stop"
        emit(
            Finished(
                reason,
                Usage(
                    int(usage.get("prompt_tokens", 0)),
                    int(usage.get("completion_tokens", pieces)),
                    int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0),
                    ttft or 0.0,
                    time.monotonic() - t0,
                ),
            )
        )

    async def _chunks(
        self, body: dict[str, Any], headers: dict[str, str]
    ) -> AsyncIterator[dict[str, Any]]:
        started = False  # after the first chunk a retry would duplicate text: fail instead
        for attempt in range(self.spec.retries + 1):
            last = attempt == self.spec.retries or started
            try:
                async with self.client().stream(
                    "POST", "/chat/completions", json=body, headers=headers
                ) as resp:
                    if resp.status_code != 200:
                        detail = (await resp.aread()).decode(errors="replace")[:300]
                        if resp.status_code in _RETRYABLE and not last:
                            await asyncio.sleep(self._backoff * 2**attempt)
                            continue
                        raise UpstreamError(
                            f"remote {self.name!r} answered HTTP {resp.status_code}: {detail}"
                        )
                    async for chunk in _sse(resp):
                        started = True
                        yield chunk
                    return
            except httpx.TimeoutException as exc:
                if not last:
                    continue
                raise UpstreamError(
                    f"remote {self.name!r} timed out after {self.spec.timeout:g} s"
                ) from exc
            except httpx.TransportError as exc:
                if not last:
                    await asyncio.sleep(self._backoff * 2**attempt)
                    continue
                raise UpstreamError(
                    f"remote {self.name!r} unreachable at {self.spec.url}: {exc}"
                ) from exc


async def _sse(resp: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    async for line in resp.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            chunk = json.loads(data)
        except ValueError as exc:
            raise UpstreamError(f"remote sent a malformed stream chunk: {data[:120]!r}") from exc
        if "error" in chunk:
            raise UpstreamError(f"remote error: {json.dumps(chunk['error'])[:300]}")
        yield chunk
