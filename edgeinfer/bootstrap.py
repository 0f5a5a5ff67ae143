"""The composition root: builds the daemon from configuration.

The only place that picks real parts (llama.cpp engine, model store pulling from PyPI) or
injected ones (tests pass a fake engine factory). Everything below receives what it needs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgeinfer.cache.key import DEFAULT_THRESHOLD
from edgeinfer.cache.layer import ResponseCache
from edgeinfer.cache.savings import (
    ENCODING_ASSETS,
    CostEstimator,
    Price,
    load_encoding,
)
from edgeinfer.cache.store import CacheStore, default_path
from edgeinfer.cache.verifier import WEIGHTS_PATH, Calibration, Verifier
from edgeinfer.config.load import bundled_catalogue_path, load_catalogue
from edgeinfer.config.schema import (
    CacheSettings,
    Catalogue,
    MemorySettings,
    ModelSpec,
    RouterSettings,
)
from edgeinfer.config.watch import ConfigWatcher
from edgeinfer.core.embedding import MINILM_DIM, MINILM_VECTORS, Embedder
from edgeinfer.engine.base import EngineFactory
from edgeinfer.errors import ConfigError, EdgeInferError
from edgeinfer.metrics import Metrics
from edgeinfer.models.assets import ensure_asset
from edgeinfer.models.store import ModelStore, Quantizer
from edgeinfer.paths import Paths
from edgeinfer.pool.admission import LatencyObserver, Runner
from edgeinfer.pool.memory import total_ram
from edgeinfer.pool.process import RunnerProcess
from edgeinfer.pool.retire import Drainer
from edgeinfer.pool.runner import ModelRunner
from edgeinfer.pool.scheduler import Budget, ModelPool
from edgeinfer.routing.classifier import BUNDLED as BUNDLED_WEIGHTS
from edgeinfer.routing.classifier import Classifier
from edgeinfer.routing.distill import DistillLog
from edgeinfer.service.pipeline import InferenceService
from edgeinfer.service.remote import RemoteTier

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


def real_engine_factory(paths: Paths) -> EngineFactory:
    """llama.cpp, with the extra-buffer verdicts of this machine kept in the cache dir."""
    from edgeinfer.engine import llama

    return llama.Loader(extra_buffer_verdicts(paths))


def extra_buffer_verdicts(paths: Paths) -> Path:
    return paths.cache_dir / "extra_buffers.json"


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
        embedder=MINILM_VECTORS,
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


class ModelFiles:
    """The pool's resolver: pulls (first use) and verifies a model's file through a
    :class:`ModelStore` over the config in force (a reload swaps ``catalogue``)."""

    def __init__(
        self, models_dir: Path, catalogue: Catalogue, progress: Progress | None = None
    ) -> None:
        self.models_dir = models_dir
        self.catalogue = catalogue
        self.progress = progress  # startup only: the CLI's bars are gone once serving

    def __call__(self, spec: ModelSpec) -> tuple[Path, str | None]:
        store = ModelStore(
            self.models_dir, self.catalogue, quantizer=real_quantizer(), progress=self.progress
        )
        return store.ensure(spec.name), store.digest(spec.name)


def budget_of(settings: MemorySettings) -> Budget:
    """The [memory] budget; without ``budget``, ``ram_share`` of this machine's RAM."""
    ram = settings.budget or int(total_ram() * settings.ram_share) or None
    return Budget(ram=ram, vram=settings.vram_budget)


def served_specs(catalogue: Catalogue, requested: Sequence[str] | None) -> dict[str, ModelSpec]:
    """The served slice of a (reloaded) catalogue: ``--models`` names it still has, else every
    ``serve = true`` entry."""
    names = [n for n in requested if n in catalogue.models] if requested else catalogue.served()
    return {name: catalogue.models[name] for name in names}


def build_pool(
    catalogue: Catalogue,
    files: ModelFiles,
    names: Sequence[str],
    factory: EngineFactory,
    *,
    state_dir: Path | None = None,
    observer: LatencyObserver | None = None,
    runner: Callable[..., Runner] = ModelRunner,
) -> ModelPool:
    """Pull (first use) and verify each model, then load those that fit the memory budget in
    order; the rest load on demand. A model that fails is recorded with its reason and the
    others still serve."""
    pool = ModelPool(
        factory,
        state_dir=state_dir,
        observer=observer,
        runner=runner,
        resolve=files,
        budget=budget_of(catalogue.memory),
        drainer=Drainer(timeout=catalogue.memory.drain_timeout_s),
        reap_every=1.0,
    )
    pool.configure({name: catalogue.models[name] for name in names})
    for name in names:
        pool.prepare(name)
    pool.preload(names)
    return pool


def build_app(
    settings: DaemonSettings,
    *,
    factory: EngineFactory | None = None,
    progress: Progress | None = None,
) -> FastAPI:
    """The whole daemon as an ASGI app, its models pulled and loading."""
    from edgeinfer.server.admin import Operations
    from edgeinfer.server.app import create_app

    catalogue = load(settings.paths)
    names = served_names(catalogue, settings.models)
    files = ModelFiles(settings.paths.models_dir, catalogue, progress)
    metrics = Metrics()
    # The real engine runs each model in a runner process (a native fault costs one request)
    # unless [server] runners = "thread"; an injected engine (tests' fakes) runs on a thread.
    isolated = factory is None and catalogue.server.runners == "process"
    pool = build_pool(
        catalogue,
        files,
        names,
        factory or real_engine_factory(settings.paths),
        state_dir=settings.paths.cache_dir / "kv",
        observer=metrics,
        runner=RunnerProcess if isolated else ModelRunner,
    )
    files.progress = None
    embedder = build_embedder(settings.paths)
    cache = None
    if embedder is not None and settings.cache and catalogue.cache.enabled:
        cache = build_cache(settings.paths, catalogue, pool, embedder)
    service = InferenceService(
        pool,
        cache=cache,
        embedder=embedder,
        request_timeout=settings.request_timeout,
        remotes={name: RemoteTier(spec) for name, spec in catalogue.remotes.items()},
        router=catalogue.router,
        classifier=load_classifier(settings.paths, catalogue.router),
        distill=DistillLog(settings.paths.distill_db) if catalogue.router.distill else None,
        outcomes=settings.paths.router_outcomes,
        prompt=catalogue.prompt,
    )

    def shutdown() -> None:
        pool.stop()
        if cache is not None:
            cache.close()

    def store(progress: Progress | None) -> ModelStore:
        """The store over the config in force (a reload swaps ``files.catalogue``)."""
        quantizer = real_quantizer()
        return ModelStore(files.models_dir, files.catalogue, quantizer=quantizer, progress=progress)

    watcher = config_watcher(settings, catalogue, files, pool, service)
    return create_app(
        service,
        metrics=metrics,
        on_shutdown=shutdown,
        max_body_bytes=settings.max_body_bytes,
        admin=Operations(pool, watcher),
        store=store,
    )


def config_watcher(
    settings: DaemonSettings,
    catalogue: Catalogue,
    files: ModelFiles,
    pool: ModelPool,
    service: InferenceService | None = None,
) -> ConfigWatcher:
    """Hot reload: a valid new config swaps in whole; the pool applies its model changes, the
    service its [router], [prompt] and [remotes]. [cache] and [server] apply at restart."""

    def apply(new: Catalogue) -> None:
        # What can fail is built before anything changes. A distillation log turned off stays
        # open: answers in flight still record into it.
        classifier, distill = None, None
        if service is not None:
            classifier = load_classifier(settings.paths, new.router)
            if new.router.distill:
                distill = service.router.distill or DistillLog(settings.paths.distill_db)
        files.catalogue = new
        pool.configure(served_specs(new, settings.models), budget_of(new.memory))
        if service is not None:
            service.configure(
                router=new.router,
                prompt=new.prompt,
                remotes=new.remotes,
                classifier=classifier,
                distill=distill,
            )
        for table in ("cache", "server"):
            if getattr(new, table) != getattr(catalogue, table):
                log.warning(
                    "config: [%s] differs from the running one; it applies at restart", table
                )

    # the user's config dir must exist for its (future) models.toml to be watched
    settings.paths.user_models_toml.parent.mkdir(parents=True, exist_ok=True)
    return ConfigWatcher(
        catalogue_paths(settings.paths), lambda: load(settings.paths), apply, initial=catalogue
    )


def load_classifier(paths: Paths, settings: RouterSettings) -> Classifier | None:
    """The router's classifier: configured, else trained here, else bundled; None if unreadable
    (the router then ranks tiers by their configured quality, and says so in the log).

    One fitted on another embedder's vectors (an older release's) is passed over, with a
    warning: it would read vectors it was never fitted on."""
    candidates = [Path(settings.classifier).expanduser()] if settings.classifier else []
    candidates += [paths.router_weights, BUNDLED_WEIGHTS]
    for path in candidates:
        if not path.exists():
            continue
        try:
            classifier = Classifier.load(path)
        except (OSError, ValueError, KeyError) as exc:
            log.error("router classifier %s unreadable: %s", path, exc)
            continue
        made_by = classifier.meta.get("embedder")
        if made_by == MINILM_VECTORS:
            return classifier
        log.warning(
            "router classifier %s was fitted on vectors of %s, not %s; passed over"
            " (retrain it with `edgeinfer router train`)",
            path,
            made_by or "an older embedder",
            MINILM_VECTORS,
        )
    log.warning("router: no classifier; tiers are ranked by their configured quality")
    return None


def build_embedder(paths: Paths) -> Embedder | None:
    """The daemon's one embedder (MiniLM), shared by the cache, the router's classifier, the
    prompt layer and the embeddings routes, with or without the cache. Without its files (say,
    offline on first use) the daemon still serves and the log says what is off."""
    from edgeinfer.embed.onnx import open_minilm  # onnxruntime loads only for the daemon

    try:
        return open_minilm(paths.models_dir)
    except EdgeInferError as exc:
        log.error(
            "embedding model unavailable (%s): the semantic cache, the router's classifier,"
            " context_budget and the embeddings routes are off",
            exc.message,
        )
        return None


def build_cache(
    paths: Paths, catalogue: Catalogue, pool: ModelPool, embedder: Embedder
) -> ResponseCache | None:
    """The exact + semantic response cache over ``embedder``. Without its database the daemon
    still serves, uncached, and says why in the log."""
    settings = catalogue.cache
    try:
        estimator = cost_estimator(paths, catalogue)
        store = open_cache_store(paths, settings)
    except EdgeInferError as exc:
        log.error("response cache disabled: %s", exc.message)
        return None
    verifier = build_verifier(settings, paths)
    store.verify = verifier.check
    for served in pool.models():
        if served.digest:  # entries of a model file that changed can never be served again
            store.purge_model(served.name, served.digest)
    threshold = settings.threshold
    if threshold is None:
        threshold = verifier.calibration.cosine if verifier.calibration else DEFAULT_THRESHOLD
    return ResponseCache(store, embedder, threshold=threshold, estimator=estimator)


def build_verifier(settings: CacheSettings, paths: Paths) -> Verifier:
    """The semantic layer's verifier; a missing or unusable pair model falls back to the rules."""
    if settings.verifier == "rules":
        return Verifier()
    from edgeinfer.embed.onnx import open_pair_scorer  # onnxruntime loads only for the daemon

    try:
        calibration = Calibration.load()
        scorer = open_pair_scorer(paths.models_dir, WEIGHTS_PATH)
    except (OSError, ValueError, KeyError, EdgeInferError) as exc:
        reason = exc.message if isinstance(exc, EdgeInferError) else str(exc)
        log.error("cache verifier unavailable (%s); semantic hits use the rule guard alone", reason)
        return Verifier()
    return Verifier(scorer.same, calibration, cutoff=settings.verifier_cutoff)


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
