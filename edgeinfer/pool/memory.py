"""The memory budget: estimate a model's bytes before loading, and pick what to unload.

Estimated from the GGUF header (``engine/gguf.py``) and the catalogue entry, so the scheduler can
refuse or make room before llama.cpp allocates anything:

- weights: the file size (llama.cpp maps the file; the pages count once touched);
- KV cache: ``n_layer * n_ctx * slots * n_head_kv * (k_dim + v_dim) * bytes per element``;
- compute buffers: the worst-case ubatch graph (logits of ``n_ubatch`` tokens plus activations);
- the prompt cache's RAM tier (``prompt_cache_ram_mb``), which fills up while serving.

With ``gpu_layers`` the offloaded share of weights and KV (and the compute buffer) moves to VRAM.
After a load the pool measures the process's RSS delta and reports it beside the estimate.
The decisions (what fits, which idle models to unload first) are pure functions, table-tested.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgeinfer.config.schema import ModelSpec
from edgeinfer.engine.gguf import read_metadata
from edgeinfer.errors import ModelUnavailable

_KV_BYTES = {"f16": 2.0, "q8_0": 34 / 32}  # q8_0: 32 int8 values + one f16 scale per block
_ACTIVATION_ROWS = 16  # activations of one token, in units of n_embd floats (a generous bound)


@dataclass(frozen=True)
class ModelShape:
    """The few hyperparameters the KV and compute estimates need, from the GGUF header."""

    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    k_dim: int
    v_dim: int
    n_vocab: int
    file_bytes: int


def shape_from_metadata(meta: Mapping[str, object], file_bytes: int) -> ModelShape:
    """Read the shape out of GGUF metadata (keys are prefixed with the architecture)."""
    arch = str(meta.get("general.architecture", "llama"))

    def num(key: str, default: int) -> int:
        value = meta.get(f"{arch}.{key}", default)
        return int(value) if isinstance(value, int | float) else default

    n_embd = num("embedding_length", 0)
    n_head = max(1, num("attention.head_count", 1))
    head_dim = n_embd // n_head if n_embd else 0
    vocab = meta.get("tokenizer.ggml.tokens", num("vocab_size", 0))
    return ModelShape(
        n_layer=num("block_count", 0),
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=max(1, num("attention.head_count_kv", n_head)),
        k_dim=num("attention.key_length", head_dim),
        v_dim=num("attention.value_length", head_dim),
        n_vocab=int(vocab) if isinstance(vocab, int) else 0,
        file_bytes=file_bytes,
    )


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a loaded model will hold, by part; ``ram`` and ``vram`` are what the budget checks."""

    weights: int
    kv_cache: int
    compute: int
    prompt_cache: int
    ram: int
    vram: int

    def as_dict(self) -> dict[str, int]:
        return {
            "weights": self.weights,
            "kv_cache": self.kv_cache,
            "compute": self.compute,
            "prompt_cache": self.prompt_cache,
            "ram": self.ram,
            "vram": self.vram,
        }


def estimate(shape: ModelShape, spec: ModelSpec) -> MemoryEstimate:
    """What loading ``spec`` with this shape costs (see the module docstring)."""
    n_ctx = spec.n_ctx * spec.slots
    kv = int(
        shape.n_layer
        * n_ctx
        * shape.n_head_kv
        * (shape.k_dim + shape.v_dim)
        * _KV_BYTES[spec.kv_type]
    )
    ubatch = min(spec.n_ubatch, max(spec.n_batch, spec.slots))
    compute = ubatch * (shape.n_vocab + _ACTIVATION_ROWS * shape.n_embd) * 4
    if spec.flash_attn == "off":  # without flash attention the KQ matrix is materialised
        compute += ubatch * n_ctx * shape.n_head * 4
    prompt_cache = spec.prompt_cache_ram_mb << 20
    share = _gpu_share(spec.gpu_layers, shape.n_layer)
    gpu = int((shape.file_bytes + kv) * share) + (compute if share else 0)
    ram = shape.file_bytes + kv + compute + prompt_cache - gpu
    return MemoryEstimate(shape.file_bytes, kv, compute, prompt_cache, ram, gpu)


def estimate_file(spec: ModelSpec, path: Path) -> MemoryEstimate:
    """The estimate for ``spec`` served from the GGUF file at ``path`` (header read: ~20 ms).
    A header this reader cannot parse still counts the weights; llama.cpp has the last word."""
    size = path.stat().st_size
    try:
        meta = read_metadata(path)
    except ModelUnavailable:
        meta = {}
    return estimate(shape_from_metadata(meta, size), spec)


def _gpu_share(gpu_layers: int, n_layer: int) -> float:
    """The share of layers offloaded (``-1``: all)."""
    if gpu_layers == 0 or n_layer <= 0:
        return 0.0
    if gpu_layers < 0:
        return 1.0
    return min(gpu_layers, n_layer) / n_layer


@dataclass(frozen=True)
class Resident:
    """A loaded model as the eviction decision sees it."""

    name: str
    ram: int
    vram: int
    idle: bool
    pinned: bool
    last_used: float


def plan_evictions(
    resident: Sequence[Resident],
    need_ram: int,
    need_vram: int,
    *,
    ram_budget: int | None,
    vram_budget: int | None,
) -> list[str] | None:
    """The models to unload (least recently used first) so ``need_*`` fits; ``[]`` when it
    fits already, ``None`` when unloading every idle, unpinned model would still not do."""
    used_ram = sum(r.ram for r in resident)
    used_vram = sum(r.vram for r in resident)

    def fits(ram: int, vram: int) -> bool:
        ok_ram = ram_budget is None or ram + need_ram <= ram_budget
        ok_vram = vram_budget is None or need_vram == 0 or vram + need_vram <= vram_budget
        return ok_ram and ok_vram

    chosen: list[str] = []
    candidates = sorted((r for r in resident if r.idle and not r.pinned), key=lambda r: r.last_used)
    for victim in [None, *candidates]:
        if victim is not None:
            chosen.append(victim.name)
            used_ram -= victim.ram
            used_vram -= victim.vram
        if fits(used_ram, used_vram):
            return chosen
    return None


def keep_alive_expired(keep_alive: float, idle_since: float, now: float) -> bool:
    """Whether an idle model has outlived its ``keep_alive`` (seconds; negative: forever)."""
    return keep_alive >= 0 and now - idle_since >= keep_alive


def total_ram() -> int:
    """Physical memory of this machine in bytes (0 when the platform will not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def rss_bytes() -> int:
    """This process's resident set size now (Linux ``/proc``; elsewhere the peak, a bound)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)
