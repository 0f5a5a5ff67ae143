"""The Ollama API's model routes: ``/api/tags``, ``/api/show``, ``/api/ps`` and ``/api/pull``.

Models are the served ones, named ``NAME:latest`` as Ollama names them; a digest is the sha256
of the GGUF file (the one the response cache keys on), details come from the catalogue entry
and the file's GGUF header. ``/api/pull`` fetches into the model store (it does not start
serving the model) on a worker thread and reports progress as NDJSON.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, StreamingResponse
from rich.progress import Progress

from edgeinfer.config.schema import ModelSpec
from edgeinfer.engine.gguf import Value, read_metadata
from edgeinfer.errors import EdgeInferError, ModelNotFound, ModelUnavailable
from edgeinfer.models.store import ModelStore
from edgeinfer.server.ollama_schemas import ModelRequest, PullRequest
from edgeinfer.service.pipeline import InferenceService, ServedModel

StoreFactory = Callable[[Progress | None], ModelStore]
"""The model store over the config in force, reporting to the given Progress (or none)."""

_FOREVER = "9999-12-31T23:59:59Z"  # a model that is never unloaded when idle (keep_alive -1)
_TEMPLATE_KEY = "tokenizer.chat_template"


def tagged(name: str) -> str:
    return name if ":" in name else f"{name}:latest"


def _iso(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _line(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode()


class _Files:
    """Model files as the store has them; GGUF headers read once per file version."""

    def __init__(self, store: StoreFactory | None) -> None:
        self.store = store
        self._meta: dict[tuple[Path, int], dict[str, Value]] = {}

    def path(self, name: str) -> Path | None:
        if self.store is None:
            return None
        path = self.store(None).path_for(name)
        return path if path.is_file() else None

    def metadata(self, path: Path | None) -> dict[str, Value]:
        if path is None:
            return {}
        key = (path, path.stat().st_mtime_ns)
        if key not in self._meta:
            try:
                self._meta[key] = read_metadata(path)
            except EdgeInferError:
                self._meta[key] = {}
        return self._meta[key]

    def row(self, model: ServedModel) -> dict[str, Any]:
        """What ``/api/tags`` says of one model (blocking: stats and reads the file)."""
        path = self.path(model.name)
        stat = path.stat() if path is not None else None
        meta = self.metadata(path)
        return {
            "name": tagged(model.name),
            "model": tagged(model.name),
            "modified_at": _iso(stat.st_mtime if stat else time.time()),
            "size": stat.st_size if stat else (model.spec.size or 0),
            "digest": model.digest or model.spec.sha256 or "",
            "details": details(model.spec, meta),
        }


def details(spec: ModelSpec, meta: dict[str, Value]) -> dict[str, Any]:
    family = str(meta.get("general.architecture", ""))
    return {
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": [family] if family else None,
        "parameter_size": str(meta.get("general.size_label", "")),
        "quantization_level": spec.quant,
    }


def _parameters(spec: ModelSpec) -> str:
    """The ``/api/show`` parameters: what a request gets unless it sets its own options."""
    return "\n".join(
        [
            f"num_ctx {spec.n_ctx}",
            "temperature 0.8",
            "top_k 40",
            "top_p 0.9",
            "repeat_penalty 1.1",
            "repeat_last_n 64",
        ]
    )


def _status(description: str) -> str:
    if description.startswith("sha256"):
        return "verifying sha256 digest"
    if description.startswith("waiting"):
        return description
    return "downloading"


async def _pull_lines(store: ModelStore, name: str, progress: Progress) -> AsyncIterator[bytes]:
    """``pulling manifest``, ``downloading`` with bytes done and expected (as the store reports
    them), ``verifying sha256 digest``, ``success``; a failure is an ``{"error"}`` line. The
    pull runs on a worker thread and finishes even if the client hangs up."""
    yield _line({"status": "pulling manifest"})
    job = asyncio.ensure_future(asyncio.to_thread(store.pull, name))
    last: dict[str, Any] = {}
    try:
        while True:
            await asyncio.wait({job}, timeout=0.25)
            for task in progress.tasks[-1:]:
                line: dict[str, Any] = {"status": _status(task.description)}
                if task.total:
                    line |= {"total": int(task.total), "completed": int(task.completed)}
                if line != last:
                    yield _line(line)
                    last = line
            if job.done():
                break
        job.result()
        digest = await asyncio.to_thread(store.digest, name)
        yield _line({"status": "verifying sha256 digest", "digest": f"sha256:{digest}"})
        yield _line({"status": "success"})
    except EdgeInferError as exc:
        yield _line({"error": exc.message})


def add_model_routes(
    router: APIRouter, service: InferenceService, store: StoreFactory | None
) -> None:
    files = _Files(store)

    def served(name: str) -> ServedModel:
        for model in service.pool.models():
            if model.name == name:
                return model
        known = ", ".join(tagged(m.name) for m in service.pool.models()) or "none"
        raise ModelNotFound(f"model {name!r} not found (served: {known})", param="model")

    @router.get("/api/tags")
    async def tags() -> dict[str, Any]:
        def rows() -> list[dict[str, Any]]:
            return [files.row(m) for m in service.pool.models()]

        return {"models": await asyncio.to_thread(rows)}

    @router.post("/api/show")
    async def show(body: ModelRequest) -> dict[str, Any]:
        model = served(body.target())
        path = await asyncio.to_thread(files.path, model.name)
        meta = await asyncio.to_thread(files.metadata, path)
        info = {k: v for k, v in meta.items() if k != _TEMPLATE_KEY}
        stamp = await asyncio.to_thread(lambda: path.stat().st_mtime if path else time.time())
        return {
            "modelfile": f"# {model.spec.description}\nFROM {path or model.name}\n",
            "parameters": _parameters(model.spec),
            "template": str(meta.get(_TEMPLATE_KEY, "")),
            "license": model.spec.license,
            "details": details(model.spec, meta),
            "model_info": info,
            "capabilities": ["completion"],
            "modified_at": _iso(stamp),
        }

    @router.get("/api/ps")
    async def ps() -> dict[str, Any]:
        """Loaded models; ``size`` is the memory the pool accounts them for (estimate or
        measure, whichever is larger), ``expires_at`` the latest they stay idle."""
        snapshot = await asyncio.to_thread(service.pool.snapshot)
        loaded = [m for m in service.pool.models() if m.status() == "ready"]
        rows = await asyncio.to_thread(lambda: [files.row(m) for m in loaded])
        out = []
        for model, row in zip(loaded, rows, strict=True):
            memory = snapshot.get(model.name, {}).get("memory", {})
            estimated = memory.get("estimated") or {}
            ram = max(int(estimated.get("ram", 0)), int(memory.get("measured_bytes") or 0))
            vram = int(estimated.get("vram", 0))
            keep = model.spec.keep_alive
            out.append(
                {
                    **row,
                    "size": ram + vram or row["size"],
                    "size_vram": vram,
                    "expires_at": _FOREVER if keep < 0 else _iso(time.time() + keep),
                    "context_length": model.spec.n_ctx,
                }
            )
        return {"models": out}

    @router.post("/api/pull", response_model=None)
    async def pull(body: PullRequest) -> Response:
        if store is None:
            raise ModelUnavailable("this daemon has no model store to pull into")
        name = body.target()
        progress = Progress(disable=True)
        model_store = store(progress)
        await asyncio.to_thread(model_store.spec, name)  # an unknown name is a 404 up front
        if not body.stream:
            await asyncio.to_thread(model_store.pull, name)
            return JSONResponse({"status": "success"})
        lines = _pull_lines(model_store, name, progress)
        return StreamingResponse(lines, media_type="application/x-ndjson")
