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

from edgeinfer.config.load import bundled_catalogue_path, load_catalogue
from edgeinfer.config.schema import Catalogue
from edgeinfer.engine.base import EngineFactory
from edgeinfer.errors import ConfigError, EdgeInferError
from edgeinfer.models.store import ModelStore, Quantizer
from edgeinfer.paths import Paths
from edgeinfer.pool.scheduler import ModelPool
from edgeinfer.service import InferenceService

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
) -> ModelPool:
    """Pull (first use) and verify each model, then start its runner. A model that fails is
    recorded with its reason and the others still serve."""
    pool = ModelPool(factory, state_dir=state_dir)
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
    pool = build_pool(
        catalogue,
        store,
        names,
        factory or real_engine_factory(),
        state_dir=settings.paths.cache_dir / "kv",
    )
    pool.wait_loaded()
    service = InferenceService(pool, request_timeout=settings.request_timeout)
    return create_app(service, on_shutdown=pool.stop)
