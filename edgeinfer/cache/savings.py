"""What the cache saved, per layer: measured figures and estimated API cost, kept apart.

*Measured* comes from the entries themselves: each stores the prompt and completion tokens the
local model processed and how long the generation took, so a hit saves exactly those. *Estimated*
is what the same tokens would have cost on a cloud API: the conversation and the answer are
counted with tiktoken (the tokenizer cloud prices are quoted in) and multiplied by a price per
million tokens. The service records every lookup here; ``/stats`` and ``edgeinfer cache stats``
show :meth:`Savings.snapshot`.

tiktoken downloads its vocabulary files on first use, which fails offline; :func:`load_encoding`
builds them from the pinned ``quicktok-v1`` vocabularies instead (docs/architecture.md, "Models").
"""

from __future__ import annotations

import base64
import hashlib
import inspect
import os
import re
import struct
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeinfer.cache.entry import CacheHit, Layer
from edgeinfer.errors import ConfigError, ModelStoreError
from edgeinfer.models.manifest import atomic_write_bytes

if TYPE_CHECKING:
    import tiktoken

ENCODING_ASSETS = {"cl100k_base": "cl100k-vocab", "o200k_base": "o200k-vocab"}
"""tiktoken encodings edgeinfer can build offline, and the asset (models/assets.py) holding each."""
_ENV_LOCK = threading.Lock()


@dataclass(frozen=True)
class Price:
    """A cloud model's list price, to put a figure on tokens the cache did not send.

    Attributes:
        input_per_1m: USD per million prompt tokens.
        output_per_1m: USD per million completion tokens.
        encoding: the tiktoken encoding the provider counts in.
    """

    input_per_1m: float
    output_per_1m: float
    encoding: str = "cl100k_base"


def parse_prices(table: Mapping[str, Any]) -> dict[str, Price]:
    """A ``{name: {input_per_1m, output_per_1m, encoding}}`` table (TOML) as :class:`Price`."""
    prices: dict[str, Price] = {}
    for name, row in table.items():
        try:
            prices[name] = Price(**row)
        except TypeError as exc:
            raise ConfigError(f"prices.{name}: {exc}") from exc
        if prices[name].encoding not in ENCODING_ASSETS:
            raise ConfigError(f"prices.{name}.encoding: one of {', '.join(ENCODING_ASSETS)}")
    return prices


@dataclass(frozen=True)
class Estimate:
    prompt_tokens: int
    completion_tokens: int
    usd: float


class CostEstimator:
    """Counts a request the way a cloud API would and prices it.

    Args:
        price: the reference price.
        count: tokens in a text (``len(encoding.encode(text))``; injected so tests need no
            vocabulary file).
    """

    def __init__(self, price: Price, count: Callable[[str], int]) -> None:
        self.price = price
        self._count = count

    def estimate(self, messages: list[dict[str, Any]], completion: str) -> Estimate:
        """Chat framing as OpenAI counts it: 3 tokens per message, 3 to prime the reply."""
        prompt = 3
        for message in messages:
            prompt += 3 + sum(self._count(v) for v in message.values() if isinstance(v, str))
        completion_tokens = self._count(completion)
        usd = (
            prompt * self.price.input_per_1m + completion_tokens * self.price.output_per_1m
        ) / 1e6
        return Estimate(prompt, completion_tokens, usd)


@dataclass
class LayerSavings:
    """Counters of one layer; ``measured`` and ``estimated`` never mix."""

    hits: int = 0
    misses: int = 0
    guard_rejections: int = 0
    too_long: int = 0  # questions longer than the embedder reads: exact layer only
    prompt_tokens: int = 0
    completion_tokens: int = 0
    time_saved_s: float = 0.0
    est_prompt_tokens: int = 0
    est_completion_tokens: int = 0
    est_cost_usd: float = 0.0

    def view(self) -> dict[str, Any]:
        lookups = self.hits + self.misses
        return {
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": self.hits / lookups if lookups else 0.0,
            "guard_rejections": self.guard_rejections,
            "skipped_too_long": self.too_long,
            "measured": {
                "prompt_tokens_saved": self.prompt_tokens,
                "completion_tokens_saved": self.completion_tokens,
                "time_saved_s": round(self.time_saved_s, 6),
            },
            "estimated": {
                "prompt_tokens": self.est_prompt_tokens,
                "completion_tokens": self.est_completion_tokens,
                "api_cost_saved_usd": round(self.est_cost_usd, 6),
            },
        }


@dataclass
class Savings:
    """Thread-safe per-layer counters (the service records from its worker threads)."""

    layers: dict[str, LayerSavings] = field(
        default_factory=lambda: {"exact": LayerSavings(), "semantic": LayerSavings()}
    )
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def hit(self, hit: CacheHit, estimate: Estimate | None = None) -> None:
        with self._lock:
            layer = self.layers[hit.layer]
            layer.hits += 1
            layer.guard_rejections += len(hit.guard_rejections)
            layer.prompt_tokens += hit.prompt_tokens
            layer.completion_tokens += hit.completion_tokens
            layer.time_saved_s += hit.generation_s
            if estimate is not None:
                layer.est_prompt_tokens += estimate.prompt_tokens
                layer.est_completion_tokens += estimate.completion_tokens
                layer.est_cost_usd += estimate.usd

    def miss(self, layer: Layer, guard_rejections: int = 0) -> None:
        with self._lock:
            self.layers[layer].misses += 1
            self.layers[layer].guard_rejections += guard_rejections

    def too_long(self) -> None:
        """A question the semantic layer did not look up: longer than the embedder's window."""
        with self._lock:
            self.layers["semantic"].too_long += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {name: layer.view() for name, layer in self.layers.items()}

    def raw(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {name: asdict(layer) for name, layer in self.layers.items()}


def load_encoding(name: str, vocab: Path, cache_dir: Path) -> tiktoken.Encoding:
    """A tiktoken encoding built offline from a quicktok vocabulary (docs/architecture.md, Models).

    quicktok's binary file (u32 count, then per token u16 length, bytes, u32 rank) is rewritten
    as tiktoken's text format (base64 token, space, rank per line) into ``cache_dir`` under the
    sha1 of the URL tiktoken would download (read from ``tiktoken_ext.openai_public``), checked
    against the sha256 tiktoken expects, then tiktoken loads it with ``TIKTOKEN_CACHE_DIR`` set.
    Done once per ``cache_dir``; later calls only load.
    """
    import tiktoken
    from tiktoken_ext import openai_public

    source = inspect.getsource(openai_public.ENCODING_CONSTRUCTORS[name])
    url = re.search(r'"(https://[^"]+\.tiktoken)"', source)
    sha = re.search(r'expected_hash="([0-9a-f]{64})"', source)
    if url is None or sha is None:
        raise ModelStoreError(f"tiktoken {tiktoken.__version__} does not say where {name} lives")
    target = Path(cache_dir) / hashlib.sha1(url[1].encode()).hexdigest()
    if not target.is_file() or hashlib.sha256(target.read_bytes()).hexdigest() != sha[1]:
        data = Path(vocab).read_bytes()
        (count,), pos, lines = struct.unpack_from("<I", data), 4, []
        for _ in range(count):
            (size,) = struct.unpack_from("<H", data, pos)
            token = data[pos + 2 : pos + 2 + size]
            (rank,) = struct.unpack_from("<I", data, pos + 2 + size)
            lines.append(base64.b64encode(token) + b" " + str(rank).encode() + b"\n")
            pos += 6 + size
        text = b"".join(lines)
        if hashlib.sha256(text).hexdigest() != sha[1]:
            raise ModelStoreError(f"{vocab} does not convert to tiktoken's {name} file")
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, text)
    with _ENV_LOCK:
        previous = os.environ.get("TIKTOKEN_CACHE_DIR")
        os.environ["TIKTOKEN_CACHE_DIR"] = str(cache_dir)
        try:
            return tiktoken.get_encoding(name)
        finally:
            if previous is None:
                os.environ.pop("TIKTOKEN_CACHE_DIR", None)
            else:
                os.environ["TIKTOKEN_CACHE_DIR"] = previous
