"""Pure formatting: a finished answer's badge, and ``/stats`` snapshots as rows to show.

No Textual here, so the decisions (what a badge says, how a rate is derived, what counts as a
saving) are small functions with table-driven tests (``tests/test_tui_view.py``).

The ``/stats`` keys read here: ``models.<name>`` (``status``, ``slots``, ``slots_busy``,
``queue_depth``, ``requests``, ``generated_tokens``, ``ttft_avg_s``, ``cached_tokens``,
``cached_token_ratio``, optional ``memory_bytes``), ``cache.layers.<layer>`` (``hits``,
``misses``, ``measured``, ``estimated``), and, when the daemon has those layers, ``router``
(shown as it comes; ``tokens_on_smaller_tiers`` and ``compute_seconds_saved_est`` feed the
ledger) and ``prompt.tokens_removed``. Per model memory is ``memory_measured_bytes``, else
``memory_estimated_bytes``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

_BLOCKS = "▁▂▃▄▅▆▇█"
MISSING = "—"


def sparkline(values: Iterable[float], width: int) -> str:
    """The last ``width`` values as block characters scaled to their maximum (no spaces, so a
    sparkline stays one token in a table row)."""
    tail = list(values)[-width:]
    if not tail:
        return MISSING
    top = max(tail)
    if top <= 0:
        return _BLOCKS[0] * len(tail)
    return "".join(_BLOCKS[min(7, int(v / top * 7.999))] if v > 0 else _BLOCKS[0] for v in tail)


def human_count(n: float) -> str:
    """12, 1.2k, 3.4M: token counts fit a narrow column."""
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}"


def human_bytes(n: float | None) -> str:
    if n is None:
        return MISSING
    for size, unit in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}B"


def _route(route: Mapping[str, Any]) -> list[str]:
    """The router's part of a badge: the tiers that ran, the draft's confidence, and why it
    escalated (``edgeinfer.route``: ``tiers`` [{model, confidence: {score}, kept}],
    ``escalated``, ``escalation_reason``)."""
    parts: list[str] = []
    tiers = [t for t in route.get("tiers") or [] if isinstance(t, Mapping)]
    names = [str(t.get("model")) for t in tiers]
    if len(names) > 1 or (names and route.get("escalated")):
        parts.append("→".join(names))
    scores = [(t.get("confidence") or {}).get("score") for t in tiers]
    score = next((x for x in scores if isinstance(x, int | float)), None)
    if score is not None:
        parts.append(f"conf {score:.2f}")
    if route.get("escalated"):
        reason = route.get("escalation_reason")
        parts.append(f"escalated: {reason}" if reason else "escalated")
    return parts


def badge(final: Mapping[str, Any]) -> str:
    """One line under an answer: model · cache layer · cached prompt tokens · tokens/s · route.

    ``final`` is the non-streamed response, or the streamed chunks' ``model``, ``usage`` and
    ``edgeinfer`` merged. Fields a daemon does not send yet are left out, never guessed.
    """
    info: Mapping[str, Any] = final.get("edgeinfer") or {}
    usage: Mapping[str, Any] = final.get("usage") or {}
    parts = [str(info.get("model") or final.get("model") or "?")]
    layer = (info.get("cache") or {}).get("layer")
    if layer:
        similarity = (info.get("cache") or {}).get("similarity")
        sim = f" {similarity:.2f}" if layer == "semantic" and similarity is not None else ""
        parts.append(f"cache {layer}{sim}")
    else:
        parts.append("generated")
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
    if cached is None:
        cached = info.get("cached_tokens")
    if cached is not None:
        parts.append(f"{cached} cached tok")
    rate = tokens_per_s(usage, info.get("timings") or {})
    if rate is not None:
        parts.append(f"{rate:.1f} tok/s")
    removed = (info.get("prompt") or {}).get("tokens_removed")
    if removed:
        parts.append(f"prompt −{removed} tok")
    parts.extend(_route(info.get("route") or {}))
    return " · ".join(parts)


def tokens_per_s(usage: Mapping[str, Any], timings: Mapping[str, Any]) -> float | None:
    """Decode speed: completion tokens over the time after the first token (a cache hit has no
    generation time, hence no speed)."""
    tokens = usage.get("completion_tokens")
    total, ttft = timings.get("total_ms"), timings.get("ttft_ms") or 0.0
    if not tokens or not total:
        return None
    decode_s = (total - ttft) / 1000 if total > ttft and tokens > 1 else total / 1000
    return float(tokens / decode_s) if decode_s > 0 else None


@dataclass(frozen=True)
class ModelRow:
    name: str
    status: str
    slots: str
    queue: int
    rate: float | None
    trend: str
    ttft_ms: float | None
    requests: int
    memory: str


@dataclass(frozen=True)
class LayerRow:
    layer: str
    hits: str
    misses: str
    rate: float


@dataclass(frozen=True)
class StatsView:
    """Everything the stats pane shows, already formatted."""

    models: list[ModelRow]
    layers: list[LayerRow]
    router: list[tuple[str, str]]
    measured: list[tuple[str, str]]
    estimated: list[tuple[str, str]]


def _delta(now: float, before: float | None) -> float:
    """A counter's increase; a counter that went down means the daemon restarted."""
    if before is None:
        return 0.0
    return now - before if now >= before else now


@dataclass
class StatsModel:
    """Turns successive snapshots into a :class:`StatsView`.

    The daemon's own ``generation_tokens_per_s`` is a lifetime average; the pane wants the
    speed *now*, so rates are derived here from the change of ``generated_tokens`` between
    two snapshots over the change of their ``time``.
    """

    history: int = 60
    _prev: dict[str, Any] | None = None
    _rates: dict[str, deque[float]] = field(default_factory=dict)

    def update(self, snap: Mapping[str, Any]) -> StatsView:
        prev = self._prev or {}
        dt = float(snap.get("time", 0.0)) - float(prev.get("time", 0.0)) if prev else 0.0
        rows = []
        for name, m in (snap.get("models") or {}).items():
            before = (prev.get("models") or {}).get(name, {}).get("generated_tokens")
            rate = _delta(m.get("generated_tokens", 0), before) / dt if dt > 0 else None
            series = self._rates.setdefault(name, deque(maxlen=self.history))
            if rate is not None:
                series.append(rate)
            rows.append(_model_row(name, m, rate, sparkline(series, 12)))
        self._prev = dict(snap)
        return StatsView(rows, layer_rows(snap), router_rows(snap.get("router")), *ledger(snap))


def _model_row(name: str, m: Mapping[str, Any], rate: float | None, trend: str) -> ModelRow:
    status = str(m.get("status", "?"))
    restarts = int(m.get("restarts") or 0)
    if restarts:  # its runner process crashed and came back
        status += f" ({restarts} restart{'s' if restarts > 1 else ''})"
    ttft = m.get("ttft_avg_s")
    return ModelRow(
        name=name,
        status=status,
        slots=f"{m.get('slots_busy', 0)}/{m.get('slots', 0)}",
        queue=int(m.get("queue_depth", 0)),
        rate=rate,
        trend=trend,
        ttft_ms=ttft * 1000 if ttft is not None else None,
        requests=int(m.get("requests", 0)),
        memory=_memory(m),
    )


def _memory(m: Mapping[str, Any]) -> str:
    """Measured bytes when the daemon has them, else its estimate marked with ``~``."""
    if m.get("memory_measured_bytes"):
        return human_bytes(m["memory_measured_bytes"])
    if m.get("memory_estimated_bytes"):
        return "~" + human_bytes(m["memory_estimated_bytes"])
    return MISSING


def layer_rows(snap: Mapping[str, Any]) -> list[LayerRow]:
    """Hit rate per cache layer: the response cache's layers by request, and the KV prefix
    reuse of all models by prompt token (the same question a layer answers: how much of the
    work was already done)."""
    rows = []
    for layer, row in ((snap.get("cache") or {}).get("layers") or {}).items():
        hits, misses = int(row.get("hits", 0)), int(row.get("misses", 0))
        rate = hits / (hits + misses) if hits + misses else 0.0
        rows.append(LayerRow(layer, str(hits), str(misses), rate))
    models = [m for m in (snap.get("models") or {}).values() if "prompt_tokens" in m]
    if models:
        cached = sum(m.get("cached_tokens", 0) for m in models)
        total = sum(m.get("prompt_tokens", 0) for m in models)
        rate = cached / total if total else 0.0
        rows.append(LayerRow("kv prefix", human_count(cached), human_count(total - cached), rate))
    return rows


# Router figures the ledger shows already, or the models table does.
_LEDGER_KEYS = frozenset({"tiers", "tokens_on_smaller_tiers", "compute_seconds_saved_est"})


def router_rows(router: Any) -> list[tuple[str, str]]:
    """The router's section as it comes (flattened one level), so new counters show up
    without a TUI release; nothing when the daemon has no router."""
    if not isinstance(router, Mapping):
        return []
    rows: list[tuple[str, str]] = []
    for key, value in router.items():
        if key in _LEDGER_KEYS:
            continue
        if isinstance(value, Mapping):
            rows.extend((f"{key} {k}", _fmt(v)) for k, v in value.items())
        else:
            rows.append((str(key), _fmt(value)))
    return rows


def _fmt(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value)) or MISSING
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, float) and value < 1:
        return f"{value:.2f}"
    return human_count(value)


def ledger(snap: Mapping[str, Any]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The savings ledger: measured rows (counted by the daemon) and estimated rows (priced
    with a cloud model's tokenizer and list price) never mixed. A layer the daemon does not
    have yet shows ``—``, not zero."""
    models = list((snap.get("models") or {}).values())
    layers = list(((snap.get("cache") or {}).get("layers") or {}).values())
    measured = [row.get("measured") or {} for row in layers]
    estimated = [row.get("estimated") or {} for row in layers]
    router, prompt = snap.get("router"), snap.get("prompt")
    router = router if isinstance(router, Mapping) else {}
    moved = router.get("tokens_on_smaller_tiers")
    compute = router.get("compute_seconds_saved_est")
    removed = prompt.get("tokens_removed") if isinstance(prompt, Mapping) else None
    reused = sum(m.get("cached_tokens", 0) for m in models)
    skipped = sum(m.get("prompt_tokens_saved", 0) + m.get("completion_tokens_saved", 0)
                  for m in measured)  # fmt: skip
    not_sent = sum(e.get("prompt_tokens", 0) + e.get("completion_tokens", 0) for e in estimated)
    return (
        [
            ("tokens not recomputed (KV)", human_count(reused)),
            ("requests served from cache", human_count(sum(r.get("hits", 0) for r in layers))),
            ("tokens skipped by cache", human_count(skipped)),
            ("generation time saved", f"{sum(m.get('time_saved_s', 0.0) for m in measured):.1f}s"),
            ("tokens removed (prompt)", MISSING if removed is None else human_count(removed)),
            ("tokens moved to small tiers", MISSING if moved is None else human_count(moved)),
        ],
        [
            ("API tokens not sent", human_count(not_sent)),
            ("API cost saved", f"${sum(e.get('api_cost_saved_usd', 0.0) for e in estimated):.4f}"),
            ("compute saved by routing", MISSING if compute is None else f"{compute:.1f}s"),
        ],
    )


def config_problem(snap: Mapping[str, Any]) -> str | None:
    """The daemon's config error, when its last reload failed and it kept the last good
    config (``/stats`` ``config``); ``None`` when the config in force is the file's."""
    config = snap.get("config")
    if not isinstance(config, Mapping) or config.get("ok", True):
        return None
    where = f" in {config['path']}" if config.get("path") else ""
    return f"config error{where} (last good config in use): {config.get('error') or 'unknown'}"
