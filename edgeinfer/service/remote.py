"""A remote tier: any OpenAI-compatible endpoint (vLLM, llama.cpp's server, a cloud API).

The router treats it like a local model; the service wraps its stream in the same events a
local runner emits, so caching, accounting and the wire format stay the same. Retries cover
connection failures, 429 and 5xx before the first token; after that a failure ends the stream
with ``upstream_error`` (a half-streamed answer cannot be retried silently). The request's
timeout bounds the whole call, retries included; any other failure (a chunk edgeinfer cannot
read, a bug) still ends the request, as ``upstream_error``, and is logged with its traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from contextlib import aclosing
from typing import Any

import httpx

from edgeinfer.config.schema import RemoteSpec
from edgeinfer.core.generation import Generation
from edgeinfer.core.options import GenerateOptions
from edgeinfer.core.tier import TierCard
from edgeinfer.core.values import Delta, Event, Failed, Finished, FinishReason, Usage
from edgeinfer.errors import EdgeInferError, InvalidRequest, RequestTimeout, UpstreamError

log = logging.getLogger("edgeinfer.service.remote")

_RETRYABLE = {408, 409, 425, 429, 500, 502, 503, 504}


def request_fields(options: GenerateOptions) -> dict[str, Any]:
    """The request's sampling fields, as an OpenAI-compatible server takes them.

    ``top_k``, ``min_p`` and ``repeat_penalty`` are the extra body fields llama.cpp's and
    vLLM's servers read; ``logit_bias`` goes as the OpenAI API's map of token id strings (ids of
    the upstream's own vocabulary). A field at its default is left out, so the upstream's own
    default applies and a strict cloud API is never sent one it refuses; one the caller did set
    is always sent, so an upstream that does not take it says so (a 400, reported as
    ``upstream_error``) instead of the setting silently doing nothing. None values are dropped.
    """
    s = options.sampling
    fields = {
        "max_tokens": options.max_tokens,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "top_k": s.top_k or None,
        "min_p": s.min_p or None,
        "repeat_penalty": s.repeat_penalty if s.repeat_penalty != 1.0 else None,
        "presence_penalty": s.presence_penalty or None,
        "frequency_penalty": s.frequency_penalty or None,
        "logit_bias": {str(k): v for k, v in s.logit_bias.items()} or None,
        "seed": s.seed,
        "stop": list(options.stop) or None,
    }
    # a field the request left out is the upstream's to default (it knows its own model)
    return {k: v for k, v in fields.items() if k not in options.default_sampling}


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

    @property
    def card(self) -> TierCard:
        spec = self.spec
        digest = f"remote:{spec.url}:{spec.model}"
        return TierCard(
            self.name, spec.quality, spec.cost_per_1k, frozenset(spec.tags), True, digest
        )

    def settle(self, options: GenerateOptions) -> GenerateOptions:
        """Unchanged: a sampling field the request left out is the upstream's to default."""
        return options

    async def answer(
        self, messages: Sequence[Mapping[str, Any]], options: GenerateOptions
    ) -> Generation:
        """The answer to a chat request, streamed from the endpoint; the request's deadline
        (``options.deadline``) bounds the whole call, retries included."""
        if options.tools is not None and options.tools.offered:
            raise InvalidRequest(f"remote tier {self.name!r} gets no tools", param="tools")
        if options.logprobs is not None or options.response_format is not None:
            raise InvalidRequest(
                f"model {self.name!r} is a remote tier: logprobs and response_format are"
                " served by local models only"
            )
        queue: asyncio.Queue[Event] = asyncio.Queue()
        body = self.body(messages, request_fields(options))
        task = await self.start(body, queue.put_nowait, deadline=options.deadline)

        def cancel() -> None:
            task.cancel()

        return Generation(
            self.name, None, queue, prompt_tokens=0, cancel=cancel, deadline=options.deadline
        )

    async def start(
        self,
        body: Mapping[str, Any],
        emit: Callable[[Event], None],
        *,
        deadline: float | None = None,
    ) -> asyncio.Task[None]:
        """Stream ``body`` upstream in a task that emits Delta events, then exactly one
        Finished or Failed (unless cancelled), until ``deadline`` (monotonic seconds)."""
        headers = self._headers()  # a missing key is the caller's error, raised now
        return asyncio.create_task(self._run(dict(body), headers, emit, deadline))

    async def _run(
        self,
        body: dict[str, Any],
        headers: dict[str, str],
        emit: Callable[[Event], None],
        deadline: float | None,
    ) -> None:
        scope = asyncio.timeout(None if deadline is None else max(0.0, deadline - time.monotonic()))
        try:
            async with scope:
                done = await self._stream(body, headers, emit)
        except EdgeInferError as exc:
            emit(Failed(exc))
        except TimeoutError as exc:
            if not scope.expired():
                emit(Failed(self._unexpected(exc)))
            else:
                emit(Failed(RequestTimeout(f"remote {self.name!r} ran past the request's timeout")))
        except Exception as exc:  # whatever it is, the request must end, not wait forever
            emit(Failed(self._unexpected(exc)))
        else:
            emit(done)

    def _unexpected(self, exc: Exception) -> UpstreamError:
        log.error("remote %s: the call failed unexpectedly", self.name, exc_info=exc)
        return UpstreamError(
            f"remote {self.name!r} failed: {type(exc).__name__}: {exc}"
            " (the daemon's log has the details)"
        )

    async def _stream(
        self, body: dict[str, Any], headers: dict[str, str], emit: Callable[[Event], None]
    ) -> Finished:
        """Emit the answer's text as it comes; the Finished event to end it with."""
        t0 = time.monotonic()
        ttft: float | None = None
        usage: dict[str, Any] = {}
        finish: str | None = None
        pieces = 0  # content chunks: the token count when the upstream sends no usage
        async with aclosing(self._chunks(body, headers)) as chunks:
            async for chunk in chunks:
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or ():
                    text = (choice.get("delta") or {}).get("content") or ""
                    if text:
                        ttft = ttft if ttft is not None else time.monotonic() - t0
                        pieces += 1
                        emit(Delta(text))
                    finish = choice.get("finish_reason") or finish
        if finish is None:  # a close-delimited stream cut between chunks reads like a whole one
            raise UpstreamError(f"remote {self.name!r} ended its stream before its answer did")
        reason: FinishReason = "length" if finish == "length" else "stop"
        return Finished(
            reason,
            Usage(
                int(usage.get("prompt_tokens", 0)),
                int(usage.get("completion_tokens", pieces)),
                int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0),
                ttft or 0.0,
                time.monotonic() - t0,
            ),
        )

    async def _chunks(
        self, body: dict[str, Any], headers: dict[str, str]
    ) -> AsyncGenerator[dict[str, Any], None]:
        started = False  # after the first chunk a retry would duplicate text: fail instead
        for attempt in range(self.spec.retries + 1):
            retry = attempt < self.spec.retries
            try:
                async with self.client().stream(
                    "POST", "/chat/completions", json=body, headers=headers
                ) as resp:
                    if resp.status_code != 200:
                        detail = (await resp.aread()).decode(errors="replace")[:300]
                        if resp.status_code in _RETRYABLE and retry:
                            await asyncio.sleep(self._backoff * 2**attempt)
                            continue
                        raise UpstreamError(
                            f"remote {self.name!r} answered HTTP {resp.status_code}: {detail}"
                        )
                    async for chunk in _sse(resp):
                        started = True
                        yield chunk
                    return
            except httpx.TransportError as exc:  # timeouts too
                timed_out = isinstance(exc, httpx.TimeoutException)
                if started:  # checked now, not when the attempt began: the answer is under way
                    why = str(exc) or type(exc).__name__
                    raise UpstreamError(
                        f"remote {self.name!r} broke off its answer after it had started"
                        f" (not retried, which would repeat its text): {why}"
                    ) from exc
                if retry:
                    if not timed_out:
                        await asyncio.sleep(self._backoff * 2**attempt)
                    continue
                if timed_out:
                    raise UpstreamError(
                        f"remote {self.name!r} timed out after {self.spec.timeout:g} s"
                    ) from exc
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
        if not isinstance(chunk, dict):
            raise UpstreamError(f"remote sent a stream chunk that is no object: {data[:120]!r}")
        if "error" in chunk:
            raise UpstreamError(f"remote error: {json.dumps(chunk['error'])[:300]}")
        yield chunk
