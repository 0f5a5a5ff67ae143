"""Load models.toml files into a :class:`Catalogue`, with errors a person can act on.

Every problem is reported as ``<file>: <key.path>: <what is wrong>`` plus a "did you mean"
for unknown keys, and all problems are collected at once (``edgeinfer models check``).
"""

from __future__ import annotations

import difflib
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from edgeinfer.config.schema import (
    CacheSettings,
    Catalogue,
    MemorySettings,
    ModelSpec,
    PathSource,
    PriceSpec,
    PromptSettings,
    PypiSource,
    QuantizeSource,
    RemoteSpec,
    RouterSettings,
    ServerSettings,
    UrlSource,
    catalogue_problems,
    valid_model_name,
)
from edgeinfer.errors import ConfigError

_SOURCE_MODELS: dict[str, type[BaseModel]] = {
    "pypi": PypiSource,
    "path": PathSource,
    "url": UrlSource,
    "quantize": QuantizeSource,
}


_TABLES: dict[str, type[BaseModel]] = {
    "cache": CacheSettings,
    "router": RouterSettings,
    "prompt": PromptSettings,
    "server": ServerSettings,
    "memory": MemorySettings,
}
"""Top-level tables besides [models]; a user file's keys override the bundled ones."""

_COLLECTIONS: dict[str, type[BaseModel]] = {"prices": PriceSpec, "remotes": RemoteSpec}
"""Top-level tables of named tables ([prices.NAME], [remotes.NAME])."""


def bundled_catalogue_path() -> Path:
    """The models.toml shipped in the wheel, or the repo root one in a source checkout."""
    packaged = resources.files("edgeinfer") / "data" / "models.toml"
    if packaged.is_file():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / "models.toml"


def _fields_at(loc: tuple[int | str, ...], raw: dict[str, Any]) -> list[str]:
    """The keys allowed at the location of an unknown key, for "did you mean"."""
    if len(loc) >= 3 and loc[0] == "models":
        if len(loc) == 3:
            return [f for f in ModelSpec.model_fields if f != "name"]
        if loc[2] == "source":
            source = raw.get("models", {}).get(loc[1], {}).get("source", {})
            model = _SOURCE_MODELS.get(source.get("type", "") if isinstance(source, dict) else "")
            if model is not None:
                return [(f.alias or n) for n, f in model.model_fields.items()]
    if len(loc) == 2 and loc[0] in _TABLES:
        return list(_TABLES[str(loc[0])].model_fields)
    if len(loc) == 3 and loc[0] in _COLLECTIONS:
        return [f for f in _COLLECTIONS[str(loc[0])].model_fields if f != "name"]
    if len(loc) == 1:
        return ["models", *_TABLES, *_COLLECTIONS]
    return []


def _describe(err: Any, raw: dict[str, Any]) -> str:
    loc = tuple(err["loc"])
    # pydantic puts the discriminator tag into the location of union members; drop it.
    if len(loc) > 3 and loc[0] == "models" and loc[2] == "source" and loc[3] in _SOURCE_MODELS:
        loc = loc[:3] + loc[4:]
    key = ".".join(str(p) for p in loc)
    if err["type"] == "extra_forbidden":
        hint = difflib.get_close_matches(str(loc[-1]), _fields_at(loc[:-1] + ("",), raw), n=1)
        return f"{key}: unknown key" + (f" (did you mean {hint[0]!r}?)" if hint else "")
    if err["type"] == "union_tag_invalid":
        return f"{key}.type: must be one of {', '.join(sorted(_SOURCE_MODELS))}"
    if err["type"] == "union_tag_not_found":
        return f"{key}.type: required key is missing (one of {', '.join(sorted(_SOURCE_MODELS))})"
    if err["type"] == "missing":
        return f"{key}: required key is missing"
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"{key}: {msg}" if key else msg


def _read(path: Path) -> tuple[dict[str, Any], list[str]]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh), []
    except tomllib.TOMLDecodeError as exc:
        return {}, [f"{path}: not valid TOML: {exc}"]
    except UnicodeDecodeError as exc:  # tomllib decodes the bytes itself
        return {}, [f"{path}: not valid TOML: not UTF-8 text (byte {exc.start})"]
    except RecursionError:  # tomllib recurses per nesting level
        return {}, [f"{path}: not valid TOML: nested too deeply"]
    except OSError as exc:
        return {}, [f"{path}: cannot read: {exc.strerror}"]


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """User entries override bundled ones key by key; a user `source` replaces it whole."""
    merged = {k: v for k, v in base.items()}
    for key, value in override.items():
        if (
            key in _TABLES | _COLLECTIONS
            and isinstance(value, dict)
            and isinstance(merged.get(key), dict)
        ):
            merged[key] = {**merged[key], **value}
            continue
        if key != "models" or not isinstance(value, dict):
            merged[key] = value
            continue
        known = merged.get("models")
        models = dict(known) if isinstance(known, dict) else {}
        for name, entry in value.items():
            if isinstance(entry, dict) and isinstance(models.get(name), dict):
                base_entry = models[name]
                models[name] = {**base_entry, **entry}
                sampling = entry.get("sampling")
                if isinstance(sampling, dict) and isinstance(base_entry.get("sampling"), dict):
                    # [models.NAME.sampling] overrides the bundled defaults key by key
                    models[name]["sampling"] = {**base_entry["sampling"], **sampling}
            else:
                models[name] = entry
        merged["models"] = models
    return merged


def check_catalogue(paths: list[Path]) -> tuple[Catalogue | None, list[str]]:
    """Validate and merge ``paths`` in order; return the catalogue and every problem found.

    Each file is validated on its own first so an error names the file holding the key; then the
    merged entries are checked (required keys, ``from`` references) for the models that passed,
    so one run of ``edgeinfer models check`` reports everything.
    """
    problems: list[str] = []
    merged: dict[str, Any] = {}
    origin: dict[str, Path] = {}
    failed: set[str] = set()
    for path in paths:
        raw, errs = _read(path)
        problems += errs
        models = raw.get("models")
        for name in models if isinstance(models, dict) else {}:
            origin[name] = path
        for err in _validate(raw, partial=path != paths[0]):
            problems.append(f"{path}: {_describe(err, raw)}")
            if len(err["loc"]) >= 2:
                failed.add(str(err["loc"][1]))
        merged = _merge(merged, raw)
    models = merged.get("models", {})
    specs, found = _merged_specs(models if isinstance(models, dict) else {}, failed)
    problems += [f"{origin.get(name, paths[-1])}: {msg}" for name, msg in found]
    if problems:
        return None, problems
    extra = {k: merged[k] for k in (*_TABLES, *_COLLECTIONS) if k in merged}
    remotes = extra.get("remotes") or {}
    extra["remotes"] = {name: {**row, "name": name} for name, row in remotes.items()}
    try:
        catalogue = Catalogue.model_validate({"models": {}, **extra}).model_copy(
            update={"models": specs}
        )
    except ValidationError as exc:
        return None, [f"{paths[-1]}: {_describe(e, merged)}" for e in exc.errors()]
    problems = [f"{paths[-1]}: {msg}" for msg in catalogue.routing_problems()]
    return (None, problems) if problems else (catalogue, [])


def _merged_specs(
    models: dict[str, Any], failed: set[str]
) -> tuple[dict[str, ModelSpec], list[tuple[str, str]]]:
    """Validate merged entries (skipping those already reported) and their cross-references."""
    specs: dict[str, ModelSpec] = {}
    problems: list[tuple[str, str]] = []
    for name, entry in models.items():
        if name in failed or not isinstance(entry, dict):
            continue
        try:
            specs[name] = ModelSpec.model_validate({**entry, "name": name})
        except ValidationError as exc:
            for err in exc.errors():
                loc = ("models", name, *err["loc"])
                described = _describe({**err, "loc": loc}, {"models": models})
                problems.append((name, described))
    return specs, problems + catalogue_problems(specs, known=models.keys())


def _validate(raw: dict[str, Any], *, partial: bool) -> list[Any]:
    """Schema errors of one file. A user file may set a few keys of a bundled entry."""
    errors: list[Any] = []
    for key in raw:
        if key not in ("models", *_TABLES, *_COLLECTIONS):
            errors.append({"loc": (key,), "type": "extra_forbidden", "msg": ""})
    for key, model in (_TABLES | _COLLECTIONS).items():
        if key in raw:
            errors += _table_errors(key, model, raw[key])
    models = raw.get("models", {})
    if not isinstance(models, dict):
        return errors + [{"loc": ("models",), "type": "dict_type", "msg": "must be a table"}]
    for name, entry in models.items():
        if not isinstance(entry, dict):
            errors.append({"loc": ("models", name), "type": "x", "msg": "must be a table"})
            continue
        if not valid_model_name(str(name)):
            msg = "model name must be lowercase letters, digits, '.', '_' or '-', no '..'"
            errors.append({"loc": ("models", name), "type": "x", "msg": msg})
        if "name" in entry:  # the table name is the model name; a `name` key would be ignored
            errors.append({"loc": ("models", name, "name"), "type": "extra_forbidden", "msg": ""})
        data = {**entry, "name": name}
        if partial and "source" not in data:
            data["source"] = {"type": "path", "path": "-"}  # source may come from the bundled entry
        try:
            ModelSpec.model_validate(data)
        except ValidationError as exc:
            errors += [{**e, "loc": ("models", name, *e["loc"])} for e in exc.errors()]
    return errors


def _table_errors(key: str, model: type[BaseModel], value: Any) -> list[Any]:
    """Schema errors of a top-level table other than [models] ([cache], [prices], ...)."""
    if not isinstance(value, dict):
        return [{"loc": (key,), "type": "x", "msg": "must be a table"}]
    checks = (
        [((key, name), model, row) for name, row in value.items()]
        if key in _COLLECTIONS
        else [((key,), model, value)]
    )
    errors: list[Any] = []
    for prefix, schema, data in checks:
        try:
            schema.model_validate(data)
        except ValidationError as exc:
            errors += [{**e, "loc": (*prefix, *e["loc"])} for e in exc.errors()]
    return errors


def load_catalogue(paths: list[Path]) -> Catalogue:
    """Load and merge catalogues, raising one :class:`ConfigError` listing every problem."""
    catalogue, problems = check_catalogue([p for p in paths if p.exists() or p == paths[0]])
    if catalogue is None:
        raise ConfigError("invalid model catalogue:\n  " + "\n  ".join(problems))
    return catalogue
