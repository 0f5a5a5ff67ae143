"""Whether llama.cpp's extra buffer types are safe to use on this machine.

llama.cpp's CPU backend can move weights into "extra" buffer types: AMX tiles on Intel Xeons
with AMX, and repacked layouts for the AVX2/AVX-512/NEON matmul kernels. They are faster where
they work, but some builds crash on them: on a Xeon with AMX in a VM, llama-cpp-python 0.3.36
dies with SIGILL (``tileloadd``) on the first decode of every bundled model, and a crash there
takes the whole process down with it. ``use_extra_bufts = false`` (llama.cpp's ``--no-repack``)
avoids it.

A model's ``extra_buffers`` key says ``"on"``, ``"off"`` or ``"auto"``. On ``auto``,
:class:`ExtraBuffers` asks a *child process* to load the model with extra buffers on and decode
a prompt chunk and a few single tokens (the two kernel shapes a request runs): if the child dies
by a signal the verdict is off, if it answers the verdict is on. Verdicts are remembered in the
cache dir, keyed on what decides the outcome (the llama.cpp libraries' hash, the CPU model and
its feature flags, the model's quant type), so later starts pay nothing. ``edgeinfer doctor``
prints them. The llama.cpp engine (``engine/llama.py``) is the only caller; this module imports
no native code, so the decision logic is tested with a stand-in probe.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from edgeinfer.engine.gguf import read_metadata
from edgeinfer.errors import EdgeInferError

log = logging.getLogger("edgeinfer.engine")

PROBE_TIMEOUT_S = 300.0  # a large model on a slow disk; a hang counts as inconclusive
_STDERR_TAIL = 2000

# llama_ftype values (llama.h) of the quant types people meet; others print as their number.
_FTYPE_NAMES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    12: "Q3_K_M",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    25: "IQ4_NL",
    32: "BF16",
}


@dataclass(frozen=True)
class CpuIdentity:
    """What the verdict depends on from the CPU: its model and its feature flags."""

    model: str
    flags: tuple[str, ...]

    @property
    def notable(self) -> list[str]:
        """The flags that pick llama.cpp's CPU kernels, for ``edgeinfer doctor``."""
        arm = {"neon", "asimd", "asimddp", "sve", "sve2", "sme", "sme2", "i8mm", "bf16", "dotprod"}
        return [f for f in self.flags if f.startswith(("avx", "amx")) or f in {"f16c", "fma", *arm}]


def cpu_identity(cpuinfo: Path = Path("/proc/cpuinfo")) -> CpuIdentity:
    """The CPU's model name and feature flags (``flags`` on x86, ``Features`` on ARM Linux);
    elsewhere what :mod:`platform` says, which still tells one machine type from another."""
    model, flags = "", ""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = value.strip()
        if model and flags:
            break
    model = model or platform.processor() or platform.machine()
    return CpuIdentity(model=f"{model} ({platform.machine()})", flags=tuple(sorted(flags.split())))


def quant_type(path: Path) -> str:
    """The model file's quant type from its GGUF header (``general.file_type``)."""
    try:
        ftype = read_metadata(path).get("general.file_type")
    except EdgeInferError:
        return "unknown"
    if not isinstance(ftype, int):
        return "unknown"
    return _FTYPE_NAMES.get(ftype, f"ftype-{ftype}")


def files_digest(files: Sequence[Path]) -> str:
    """sha256 over the named files' names and bytes (the llama.cpp shared libraries): a
    rebuilt or upgraded llama.cpp gets fresh verdicts."""
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f.name.encode() + b"\0")
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class ProbeResult:
    """How the child that decoded with extra buffers on ended."""

    returncode: int | None  # None: it did not finish within the timeout
    stderr: str = ""

    def describe(self) -> str:
        if self.returncode is None:
            return "the probe did not finish in time"
        if self.returncode < 0:
            try:
                name = signal.Signals(-self.returncode).name
            except ValueError:
                name = f"signal {-self.returncode}"
            return f"llama.cpp died with {name}"
        return f"the probe exited with status {self.returncode}"


Probe = Callable[[Sequence[str]], ProbeResult]


def run_probe(argv: Sequence[str], timeout: float = PROBE_TIMEOUT_S) -> ProbeResult:
    """Run the probe child; its exit status is the answer, its stderr's tail the evidence."""
    try:
        proc = subprocess.run(list(argv), capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raw = exc.stderr if isinstance(exc.stderr, bytes) else b""
        return ProbeResult(None, raw[-_STDERR_TAIL:].decode("utf-8", "replace"))
    tail = proc.stderr[-_STDERR_TAIL:].decode("utf-8", "replace")
    return ProbeResult(proc.returncode, tail)


@dataclass(frozen=True)
class Verdict:
    """One remembered answer: whether extra buffers are used for this (library, CPU, quant)."""

    on: bool
    reason: str
    cpu: str
    cpu_flags_digest: str
    quant: str
    library: str
    at: float

    @property
    def key(self) -> str:
        return verdict_key(self.library, self.cpu_flags_digest, self.quant)


def verdict_key(library: str, cpu_flags_digest: str, quant: str) -> str:
    return f"{library[:16]}:{cpu_flags_digest[:16]}:{quant}"


class VerdictStore:
    """Verdicts in a small JSON file (``extra_buffers.json`` in the cache dir), written whole
    and atomically; ``path=None`` keeps them for this process only."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._mem: dict[str, Verdict] = {}

    def all(self) -> dict[str, Verdict]:
        with self._lock:
            return {**self._read(), **self._mem}

    def get(self, key: str) -> Verdict | None:
        return self.all().get(key)

    def put(self, verdict: Verdict) -> None:
        with self._lock:
            self._mem[verdict.key] = verdict
            if self.path is None:
                return
            data = {**self._read(), verdict.key: verdict}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".tmp{os.getpid()}")
            payload = {k: asdict(v) for k, v in data.items()}
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(payload, fh, indent=1, sort_keys=True)
            os.replace(tmp, self.path)

    def _read(self) -> dict[str, Verdict]:
        if self.path is None or not self.path.exists():
            return {}
        try:
            raw = json.loads(self.path.read_text())
            return {k: Verdict(**v) for k, v in raw.items()}
        except (OSError, ValueError, TypeError) as exc:
            # a damaged file costs one probe per model, never a start
            log.warning("ignoring unreadable extra-buffer verdicts %s: %s", self.path, exc)
            return {}


class ExtraBuffers:
    """Decides, per model load, whether llama.cpp may use its extra buffer types.

    Args:
        store: where verdicts are remembered.
        library: digest of the llama.cpp libraries in use (:func:`files_digest`).
        probe: runs that command (:func:`run_probe`; tests inject their own).
        cpu: this machine's CPU (:func:`cpu_identity`).
    """

    def __init__(
        self,
        store: VerdictStore,
        *,
        library: str,
        probe: Probe = run_probe,
        cpu: CpuIdentity | None = None,
    ) -> None:
        self.store = store
        self.library = library
        self.cpu = cpu or cpu_identity()
        self.cpu_flags_digest = hashlib.sha256(
            " ".join([self.cpu.model, *self.cpu.flags]).encode()
        ).hexdigest()
        self._probe = probe
        self._lock = threading.Lock()  # one probe at a time: two would race for the cores

    def use(self, setting: str, path: Path, probe_argv: Sequence[str], *, name: str = "") -> bool:
        """Whether to load ``path`` with extra buffers, for a model whose key says ``setting``;
        ``probe_argv`` is the child command that loads it with them on and decodes."""
        if setting in ("on", "off"):
            return setting == "on"
        quant = quant_type(path)
        key = verdict_key(self.library, self.cpu_flags_digest, quant)
        with self._lock:
            known = self.store.get(key)
            if known is not None:
                return known.on
            started = time.monotonic()
            result = self._probe(probe_argv)
            took = time.monotonic() - started
            label = name or path.name
            if result.returncode == 0:
                ok = f"a decode with them on worked ({took:.1f} s probe)"
                self.store.put(self._verdict(True, ok, quant))
                log.info("%s: llama.cpp extra buffer types work on this CPU (%s)", label, quant)
                return True
            reason = result.describe()
            if result.returncode is not None and result.returncode < 0:
                self.store.put(self._verdict(False, f"{reason} on a decode with them on", quant))
                log.warning(
                    "%s: llama.cpp's extra buffer types (AMX, repacked weights) crash on this CPU "
                    "(%s in a probe decode); loading with extra_buffers off, and remembering it",
                    label,
                    reason,
                )
            else:
                # Inconclusive (a bad file, a hang): off is the safe way to load, and the next
                # start asks again. The real load reports a bad file with its own error.
                log.warning(
                    "%s: could not tell whether llama.cpp's extra buffer types are safe (%s); "
                    "loading with extra_buffers off this time. %s",
                    label,
                    reason,
                    _last_line(result.stderr),
                )
            return False

    def record_off(self, path: Path, reason: str) -> None:
        """A model running with extra buffers died of them (SIGILL in its runner): off from
        now on for its quant type, on this CPU and build."""
        quant = quant_type(path)
        with self._lock:
            self.store.put(self._verdict(False, reason, quant))

    def _verdict(self, on: bool, reason: str, quant: str) -> Verdict:
        return Verdict(
            on=on,
            reason=reason,
            cpu=self.cpu.model,
            quant=quant,
            library=self.library,
            at=time.time(),
            cpu_flags_digest=self.cpu_flags_digest,
        )


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


__all__ = [
    "CpuIdentity",
    "ExtraBuffers",
    "ProbeResult",
    "Verdict",
    "VerdictStore",
    "cpu_identity",
    "files_digest",
    "quant_type",
    "run_probe",
]
