"""The response cache: exact and semantic layers in one SQLite file (steps 1-2 of the request
flow in docs/architecture.md).

``key`` turns a request into keys and decides cacheability (pure); ``guard`` decides whether a
semantic neighbour may answer (pure); ``store.CacheStore`` keeps entries and vectors on disk with
one writer thread; ``savings`` counts what the cache saved, measured and estimated apart.
"""

from edgeinfer.cache.entry import CacheEntry, CacheHit, GuardRejection
from edgeinfer.cache.guard import guard
from edgeinfer.cache.key import (
    cache_mode,
    cache_threshold,
    exact_key,
    namespace_key,
    semantic_question,
)
from edgeinfer.cache.store import CacheStore, default_path

__all__ = [
    "CacheEntry",
    "CacheHit",
    "CacheStore",
    "GuardRejection",
    "cache_mode",
    "cache_threshold",
    "default_path",
    "exact_key",
    "guard",
    "namespace_key",
    "semantic_question",
]
