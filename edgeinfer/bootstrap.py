"""The composition root: builds the daemon from configuration.

The only place that picks real parts (llama.cpp engine, model store pulling from PyPI) or
injected ones (tests pass a fake engine factory). Everything below receives what it needs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgeinfer.cache.layer import ResponseCache
from edgeinfer.cache.savings import (
    ENCODING_ASSETS,
    CostEstimator,
    Price,
    load_encoding,
)
from edgeinfer.cache.store import CacheStore, default_path
from edgeinfer.config.load import bundled_catalogue_path, load_catalogue
from edgeinfer.config.schema import CacheSettings, Catalogue
from edgeinfer.embed.base import MINILM_DIM, MINILM_NAME
from edgeinfer.engine.base import EngineFactory
from edgeinfer.errors import ConfigError, EdgeInferError
from edgeinfer.models.assets import ensure_asset
from edgeinfer.models.store import ModelStore, Quantizer
from edgeinfer.paths import Paths
from edgeinfer.pool.runner import LatencyObserver
from edgeinfer.pool.scheduler import ModelPool
from edgeinfer.service import InferenceService
from edgeinfer.stats import Metrics

if TYPE_CHECKING:
    from fastapi import FastAPI
    from rich.progress import Progress

log = logging.getLogger("edgeinfer")


@dataclass(frozen=True)
class DaemonSettings:
    paths: Paths
    socket: Path
    models: Sequence[str] | None = None  # None: every catalogue entry with serve = true
    request_timeout: float = 600.0
    cache: bool = True  # False: `serve --no-cache`; [cache] enabled in models.toml also counts
    max_body_bytes: int = 8 << 20  # a request body above this is refused with 413


def catalogue_paths(paths: Paths) -> list[Path]:
    """The bundled catalogue, then the user's file (which overrides and adds entries)."""
    return [bundled_catalogue_path(), paths.user_models_toml]


def load(paths: Paths) -> Catalogue:
    return load_catalogue(catalogue_paths(paths))


def real_engine_factory() -> EngineFactory:
    from edgeinfer.engine import llama

    return llama.load


def real_quantizer() -> Quantizer:
    from edgeinfer.engine import llama

    return llama.quantize


def open_cache_store(paths: Paths, settings: CacheSettings) -> CacheStore:
    """The cache database as the daemon opens it (the CLI's ``cache`` commands use it too)."""
    store = CacheStore(
        default_path(paths),
        dim=MINILM_DIM,
        max_bytes=settings.max_mb << 20,
        ttl_s=settings.ttl_hours * 3600 if settings.ttl_hours else None,
        embedder=MINILM_NAME,
    )
    store.start()
    return store


def served_names(catalogue: Catalogue, requested: Sequence[str] | None) -> list[str]:
    """The models to serve; an unknown requested name is a config error naming the choices."""
    if not requested:
        return catalogue.served()
    unknown = [n for n in requested if catalogue.get(n) is None]
    if unknown:
        raise ConfigError(
            f"unknown model {unknown[0]!r}; the catalogue has: {', '.join(catalogue.models)}"
        )
    return list(dict.fromkeys(requested))


def build_pool(
    catalogue: Catalogue,
    store: ModelStore,
    names: Sequence[str],
    factory: EngineFactory,
    *,
    state_dir: Path | None = None,
    observer: LatencyObserver | None = None,
) -> ModelPool:
    """Pull (first use) and verify each model, then start its runner. A model that fails is
    recorded with its reason and the others still serve."""
    pool = ModelPool(factory, state_dir=state_dir, observer=observer)
    for name in names:
        spec = catalogue.models[name]
        try:
            path = store.ensure(name)
            digest = store.digest(name)
        except EdgeInferError as exc:
            log.error("model %s is unavailable: %s", name, exc.message)
            pool.add_failed(spec, exc)
            continue
        pool.add(spec, path, digest)
    return pool


def build_app(
    settings: DaemonSettings,
    *,
    factory: EngineFactory | None = None,
    progress: Progress | None = None,
) -> FastAPI:
    """The whole daemon as an ASGI app, its models pulled and loading."""
    from edgeinfer.server.app import create_app

    catalogue = load(settings.paths)
    names = served_names(catalogue, settings.models)
    store = ModelStore(
        settings.paths.models_dir, catalogue, quantizer=real_quantizer(), progress=progress
    )
    metrics = Metrics()
    pool = build_pool(
        catalogue,
        store,
        names,
        factory or real_engine_factory(),
        state_dir=settings.paths.cache_dir / "kv",
        observer=metrics,
    )
    pool.wait_loaded()
    cache = None
    if settings.cache and catalogue.cache.enabled:
        cache = build_cache(settings.paths, catalogue, pool)
    service = InferenceService(pool, cache=cache, request_timeout=settings.request_timeout)

    def shutdown() -> None:
        pool.stop()
        if cache is not None:
            cache.close()

    return create_app(
        service, metrics=metrics, on_shutdown=shutdown, max_body_bytes=settings.max_body_bytes
    )


def build_cache(paths: Paths, catalogue: Catalogue, pool: ModelPool) -> ResponseCache | None:
    """The exact + semantic response cache. Without its embedding model (say, offline on first
    use) the daemon still serves, uncached, and says why in the log."""
    from edgeinfer.embed.onnx import open_minilm  # onnxruntime loads only for the daemon

    settings = catalogue.cache
    try:
        embedder = open_minilm(paths.models_dir)
        estimator = cost_estimator(paths, catalogue)
        store = open_cache_store(paths, settings)
    except EdgeInferError as exc:
        log.error("response cache disabled: %s", exc.message)
        return None
    for served in pool.models():
        if served.digest:  # entries of a model file that changed can never be served again
            store.purge_model(served.name, served.digest)
    return ResponseCache(store, embedder, threshold=settings.threshold, estimator=estimator)


def cost_estimator(paths: Paths, catalogue: Catalogue) -> CostEstimator | None:
    """Counts tokens as the [cache] estimate_with cloud API would (tiktoken, offline)."""
    name = catalogue.cache.estimate_with
    if name is None:
        return None
    price = catalogue.prices[name]
    vocab = ensure_asset(paths.models_dir, ENCODING_ASSETS[price.encoding])
    encoding = load_encoding(price.encoding, vocab, paths.cache_dir / "tiktoken")
    return CostEstimator(
        Price(price.input_per_1m, price.output_per_1m, price.encoding),
        lambda text: len(encoding.encode(text, disallowed_special=())),
    )
