"""Per-model default sampling: what a request that leaves a sampling field out gets.

In order: the request's own field; the model's ``[models.NAME.sampling]`` table; the GGUF's
``general.sampling.*`` metadata (llama.cpp's keys, written by some converters); the engine's
neutral defaults (:class:`~edgeinfer.core.values.Sampling`: temperature 1, no truncation).

They are applied once the serving model is known (``InferenceService._local``), *before* the
cache lookup, so the cache key holds the effective settings and the cache's deterministic test
(temperature 0 or a seed) sees the temperature that will really be used.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from edgeinfer.config.schema import ModelSpec
from edgeinfer.core.options import GenerateOptions
from edgeinfer.engine.gguf import read_metadata
from edgeinfer.errors import EdgeInferError

log = logging.getLogger("edgeinfer.service.sampling")

DEFAULTABLE = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repeat_penalty",
    "presence_penalty",
    "frequency_penalty",
)
"""The sampling fields a model may give a default for."""

GGUF_KEYS = {
    "general.sampling.temp": "temperature",
    "general.sampling.top_p": "top_p",
    "general.sampling.top_k": "top_k",
    "general.sampling.min_p": "min_p",
    "general.sampling.penalty_repeat": "repeat_penalty",
}
"""llama.cpp's GGUF metadata keys for recommended sampling, and the field each sets."""

_RANGES: dict[str, tuple[float, float]] = {
    "temperature": (0.0, 2.0),
    "top_p": (1e-9, 1.0),
    "top_k": (0, 1 << 20),
    "min_p": (0.0, 1.0),
    "repeat_penalty": (1e-9, 10.0),
}


def gguf_defaults(meta: Mapping[str, object]) -> dict[str, float | int]:
    """The sampling defaults a GGUF's metadata recommends; values of a wrong type or out of
    the API's range are skipped (a file's metadata is not trusted to be sane)."""
    found: dict[str, float | int] = {}
    for key, name in GGUF_KEYS.items():
        value = meta.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        low, high = _RANGES[name]
        if not low <= value <= high:  # also refuses NaN
            continue
        found[name] = int(value) if name == "top_k" else float(value)
    return found


@functools.lru_cache(maxsize=64)
def _file_defaults(path: Path, mtime_ns: int) -> dict[str, float | int]:
    try:
        return gguf_defaults(read_metadata(path))
    except EdgeInferError as exc:
        log.warning("%s: no sampling defaults from its metadata: %s", path, exc.message)
        return {}


def file_defaults(path: Path | None) -> dict[str, float | int]:
    """:func:`gguf_defaults` of the file at ``path`` (read once per file version)."""
    if path is None:
        return {}
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        return {}
    return dict(_file_defaults(path, mtime))


def model_defaults(spec: ModelSpec, path: Path | None) -> dict[str, float | int]:
    """A model's defaults: its catalogue table over its GGUF's metadata."""
    return {**file_defaults(path), **spec.sampling.given()}


def with_defaults(options: GenerateOptions, defaults: Mapping[str, float | int]) -> GenerateOptions:
    """``options`` with each sampling field the request left out set to ``defaults`` (or kept
    at the engine's neutral value when the model has none); nothing is left to default after."""
    if not options.default_sampling:
        return options
    fields = {n: defaults[n] for n in options.default_sampling if n in defaults}
    sampling = replace(options.sampling, **fields)  # type: ignore[arg-type]
    return replace(options, sampling=sampling, default_sampling=frozenset())
