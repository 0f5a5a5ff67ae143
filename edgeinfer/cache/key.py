"""Cache keys and cacheability: pure functions, table-tested.

Two keys come from one canonical request:

- the *exact key* hashes the model route, the model file's digest, the whole conversation and
  every request field that can change the output. Two requests with the same exact key would get
  the same answer from a deterministic model.
- the *namespace key* hashes the same minus the last user turn. The semantic layer only compares
  questions inside one namespace, so a follow-up ("and in Rust?") is never answered from another
  conversation, another system prompt, other sampling settings or another model file.

Output-relevant fields are everything in ``sampling`` except a short list known not to change the
text (``stream``, ``user``, ...): a field added to the API later makes keys differ, which costs a
miss, never a wrong hit. Numbers are canonicalised (``0`` and ``0.0`` are one key); ``None`` is
the same as absent.

Called by the service before step 1 of the pipeline and again when it stores an answer.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any, Literal

from edgeinfer.errors import InvalidRequest

CacheMode = Literal["off", "exact", "semantic"]
MODES: tuple[CacheMode, ...] = ("off", "exact", "semantic")
DEFAULT_THRESHOLD = 0.95
MIN_THRESHOLD = 0.5  # the lowest edgeinfer.cache_threshold a request may set
KEY_VERSION = 1

IGNORED_FIELDS = frozenset(
    {
        "model",
        "messages",
        "prompt",
        "stream",
        "stream_options",
        "user",
        "edgeinfer",
        "metadata",
        "store",
    }
)
"""Request fields that never change the generated text (``model``/``messages`` are keyed apart)."""


def exact_key(
    model: str, digest: str, messages: list[dict[str, Any]], sampling: dict[str, Any]
) -> str:
    """The exact-layer key: sha256 over route, model digest, full conversation and sampling."""
    return _digest("exact", model, digest, messages, sampling)


def namespace_key(
    model: str, digest: str, messages: list[dict[str, Any]], sampling: dict[str, Any]
) -> str:
    """The semantic layer's namespace: everything the exact key covers but the last user turn.

    Messages after the last user turn (an assistant prefill) stay in the namespace.
    """
    last = _last_user_index(messages)
    context = messages if last is None else messages[:last] + messages[last + 1 :]
    return _digest("namespace", model, digest, context, sampling)


def semantic_question(messages: list[dict[str, Any]]) -> str | None:
    """The text the semantic layer embeds: the last user turn, when it is plain text.

    None when there is no user turn, or it carries non-text parts (images, audio): those are
    cached exactly or not at all.
    """
    last = _last_user_index(messages)
    if last is None:
        return None
    content = messages[last].get("content")
    if isinstance(content, str):
        return content if content.strip() else None
    if isinstance(content, list) and all(
        isinstance(p, Mapping) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in content
    ):
        text = "\n".join(str(p["text"]) for p in content)
        return text if text.strip() else None
    return None


def cache_mode(requested: str | None, temperature: float, seed: int | None) -> CacheMode:
    """Which layers a request may use.

    By default only deterministic requests (temperature 0, or a fixed seed, which the key
    includes) are cached, through both layers. An explicit ``edgeinfer.cache`` wins: a client
    may opt a sampled request in, or any request out.
    """
    if requested is not None:
        if requested not in MODES:
            raise InvalidRequest(
                f"edgeinfer.cache must be one of {', '.join(MODES)}, got {requested!r}",
                param="edgeinfer.cache",
            )
        return requested
    deterministic = temperature == 0 or seed is not None
    return "semantic" if deterministic else "off"


def cache_threshold(requested: float | None, default: float = DEFAULT_THRESHOLD) -> float:
    """The cosine threshold of a request: ``edgeinfer.cache_threshold`` or the default."""
    if requested is None:
        return default
    if isinstance(requested, bool) or not isinstance(requested, int | float):
        raise InvalidRequest(
            "edgeinfer.cache_threshold must be a number", param="edgeinfer.cache_threshold"
        )
    if not MIN_THRESHOLD <= float(requested) <= 1.0:
        # below the floor nearly any question of the same context would match: a client could
        # fish for stored answers instead of asking for one
        raise InvalidRequest(
            f"edgeinfer.cache_threshold must be in [{MIN_THRESHOLD}, 1], got {requested}",
            param="edgeinfer.cache_threshold",
        )
    return float(requested)


def output_fields(sampling: Mapping[str, Any]) -> dict[str, Any]:
    """The request fields that go into keys, canonicalised (see the module docstring)."""
    return {
        k: _canonical(v)
        for k, v in sorted(sampling.items())
        if k not in IGNORED_FIELDS and v is not None
    }


def _digest(
    kind: str, model: str, digest: str, messages: list[dict[str, Any]], sampling: Mapping[str, Any]
) -> str:
    body = {
        "v": KEY_VERSION,
        "kind": kind,
        "model": model,
        "digest": digest,
        "messages": [_canonical(m) for m in messages],
        "sampling": output_fields(sampling),
    }
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _canonical(value: Any) -> Any:
    """JSON-ready value with one spelling per meaning: integral floats as ints, no ``None`` keys."""
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return value
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return int(value)
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    raise InvalidRequest(f"cannot key a request holding a {type(value).__name__}")


def _last_user_index(messages: list[dict[str, Any]]) -> int | None:
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].get("role") == "user":
            return index
    return None
