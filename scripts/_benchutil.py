"""Helpers for the scripts: deterministic workload text, the model under test, server and daemon
processes, replies, tables. Nothing here measures anything by itself."""

from __future__ import annotations

import importlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import httpx

from edgeinfer.bootstrap import load, real_quantizer
from edgeinfer.config.load import bundled_catalogue_path, load_catalogue
from edgeinfer.config.schema import ModelSpec
from edgeinfer.engine.base import EngineParams
from edgeinfer.models.store import ModelStore
from edgeinfer.paths import Paths, resolve
from edgeinfer.pool import slots
from edgeinfer.server import daemon

# -- workload text ----------------------------------------------------------------------------

_SUBJECTS = [
    "The old lighthouse keeper",
    "A young civil engineer",
    "The city council",
    "Our neighbour's cat",
    "The research team",
    "A travelling violinist",
    "The night-shift baker",
    "A retired sea captain",
    "The village librarian",
    "Two curious students",
    "The orchard manager",
    "A clockmaker's apprentice",
]
_VERBS = [
    "repaired",
    "described",
    "discovered",
    "painted",
    "measured",
    "forgot about",
    "catalogued",
    "photographed",
    "argued over",
    "carefully wrapped",
    "sold",
    "borrowed",
]
_OBJECTS = [
    "a broken brass compass",
    "the northern footbridge",
    "three copper kettles",
    "an unfinished map of the coast",
    "the blue wooden boat",
    "a jar of wild honey",
    "the tallest pine on the hill",
    "a box of faded letters",
    "the station's signal lamp",
    "a pair of leather boots",
    "the seventh chapter of an old novel",
    "a basket of green apples",
]
_TAILS = [
    "before the storm arrived",
    "while the market was closing",
    "after a long and quiet winter",
    "in the reading room of the library",
    "on the first warm day of spring",
    "without telling anyone",
    "as the tide went out",
    "during the harvest festival",
    "late on a Tuesday evening",
    "under a sky full of gulls",
    "with surprising patience",
    "because the mayor had asked",
]
TOPICS_ADJ = ["brave", "lonely", "clever", "tiny", "ancient", "curious", "sleepy", "noisy"]
TOPICS_NOUN = ["robot", "dragon", "gardener", "lighthouse", "fox", "pirate", "astronaut", "baker"]


def sentences(seed: int) -> Callable[[], str]:
    """A deterministic source of varied sentences (same seed, same sequence)."""
    rng = random.Random(seed)

    def next_sentence() -> str:
        parts = [rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS)]
        tail = rng.choice(_TAILS)
        day = f" on day {rng.randint(2, 400)}" if rng.random() < 0.3 else ""
        return f"{' '.join(parts)} {tail}{day}."

    return next_sentence


def text_of_tokens(count: Callable[[str], int], n_tokens: int, seed: int) -> str:
    """Varied prose of at least ``n_tokens`` tokens (counted with the model's tokenizer)."""
    nxt = sentences(seed)
    words: list[str] = []
    while True:
        words.extend(nxt() for _ in range(4))
        text = " ".join(words)
        if count(text) >= n_tokens:
            return text


def topics(n: int, offset: int = 0) -> list[str]:
    """``n`` distinct story topics such as "a brave robot"; ``offset`` skips earlier ones."""
    pairs = [(a, b) for b in TOPICS_NOUN for a in TOPICS_ADJ]
    return [f"a {a} {b}" for a, b in pairs[offset : offset + n]]


def chatml(messages: Sequence[tuple[str, str]], *, open_assistant: bool = True) -> str:
    """ChatML (SmolLM2 and Qwen use it), formatted once and sent raw to every side."""
    body = "".join(f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in messages)
    return body + ("<|im_start|>assistant\n" if open_assistant else "")


common_prefix = slots.common_prefix


# -- one answered request ------------------------------------------------------------------------


@dataclass
class Reply:
    """One answered request, as every side reports it."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int | None  # prompt tokens whose KV was reused
    evaluated: int | None  # prompt tokens the engine really evaluated for this request
    client_ttft_s: float | None  # streaming only: time to the first content chunk
    server_ttft_ms: float | None
    wall_s: float

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("text")
        return data


def reply_from_openai(body: Mapping[str, Any], text: str, wall: float, ttft: float | None) -> Reply:
    """A :class:`Reply` from an OpenAI completion body (edgeinfer's or llama-server's)."""
    usage = body.get("usage") or {}
    timings = body.get("timings") or {}  # llama-server
    ours = (body.get("edgeinfer") or {}).get("timings") or {}
    details = usage.get("prompt_tokens_details") or {}
    prompt = int(usage.get("prompt_tokens", 0))
    cached = details.get("cached_tokens", timings.get("cache_n"))
    evaluated = timings.get("prompt_n")
    if evaluated is None and cached is not None:
        evaluated = prompt - int(cached)
    server_ttft = ours.get("ttft_ms", timings.get("prompt_ms"))
    return Reply(
        text=text,
        prompt_tokens=prompt,
        completion_tokens=int(usage.get("completion_tokens", 0)),
        cached_tokens=None if cached is None else int(cached),
        evaluated=None if evaluated is None else int(evaluated),
        client_ttft_s=ttft,
        server_ttft_ms=None if server_ttft is None else float(server_ttft),
        wall_s=wall,
    )


def merge_chunk(into: dict[str, Any], chunk: Mapping[str, Any]) -> str:
    """Fold one SSE chunk's usage/timings into ``into``; return its text (may be empty)."""
    if "error" in chunk:
        raise BenchError(f"server error in stream: {json.dumps(chunk['error'])}")
    for key in ("usage", "timings", "edgeinfer"):
        if chunk.get(key):
            into[key] = chunk[key]
    choices = chunk.get("choices") or []
    return str(choices[0].get("text") or "") if choices else ""


class BenchError(RuntimeError):
    """The benchmark cannot go on (a server failed to start, a request failed)."""


# -- processes ----------------------------------------------------------------------------------


class ServerProcess:
    """A server subprocess (edgeinfer daemon or llama-server) logging to a file."""

    def __init__(
        self, argv: list[str], env: dict[str, str], log: Path, ready: Callable[[], bool]
    ) -> None:
        self.argv, self.env, self.log, self._ready = argv, env, log, ready
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 300.0) -> float:
        """Start and wait until ready; return the seconds it took."""
        t0 = time.monotonic()
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=out)
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise BenchError(
                    f"{self.argv[0]} exited with {self.proc.returncode}:\n{self.tail()}"
                )
            if self._ready():
                return time.monotonic() - t0
            time.sleep(0.1)
        self.stop()
        raise BenchError(f"{self.argv[0]} not ready after {timeout:.0f} s:\n{self.tail()}")

    def stop(self, timeout: float = 30.0) -> float:
        """SIGTERM, wait (SIGKILL past ``timeout``); return the seconds it took."""
        t0 = time.monotonic()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return time.monotonic() - t0

    def tail(self, n: int = 30) -> str:
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return "\n".join(lines[-n:])


unix_accepts = daemon.accepts


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux /proc; elsewhere ``pid`` alone): edgeinfer's daemon
    runs each model in a runner process of its own, whose CPU and memory are the daemon's."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo += [int(child) for child in task.read_text().split()]
            except OSError:
                continue
    return found


def tree_rss_mib(pid: int) -> float | None:
    """Resident memory of ``pid`` and its descendants, in MiB."""
    sizes = [rss_mib(p) for p in process_tree(pid)]
    known = [s for s in sizes if s is not None]
    return sum(known) if known else None


def rss_mib(pid: int) -> float | None:
    """Resident set size of ``pid`` in MiB (Linux /proc, else psutil when installed)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        psutil = importlib.import_module("psutil")  # optional, never a dependency
    except ImportError:
        return None
    return float(psutil.Process(pid).memory_info().rss) / (1 << 20)


class CpuWatch:
    """CPU seconds other processes used since it was made (Linux): a busy machine skews figures.

    Whole-machine busy time from /proc/stat, less this process's, its waited-for children's and
    the live server's and its children's (``server()`` gives its pid, which may change across a
    restart).
    """

    def __init__(self, server: Callable[[], int | None] = lambda: None) -> None:
        self._server = server
        self._busy, self._ours = _machine_busy_s(), self._our_cpu_s()

    def _our_cpu_s(self) -> float:
        t = os.times()
        pid = self._server()
        server = sum(proc_cpu_s(p) for p in process_tree(pid)) if pid is not None else 0.0
        return t.user + t.system + t.children_user + t.children_system + server

    def others_s(self) -> float | None:
        busy = _machine_busy_s()
        if busy is None or self._busy is None:
            return None
        return max(0.0, (busy - self._busy) - (self._our_cpu_s() - self._ours))


def machine_share(cpu_s: float | None, wall_s: float) -> float | None:
    """``cpu_s`` CPU seconds over ``wall_s`` as a share of all the machine's CPUs."""
    return None if cpu_s is None or wall_s <= 0 else cpu_s / wall_s / (os.cpu_count() or 1)


def _machine_busy_s() -> float | None:
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (int(f) for f in fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


@contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence native code writing to fd 2 (llama.cpp's context warnings)."""
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def physical_cores() -> int:
    """The thread count edgeinfer's engine picks for ``threads = 0`` (same rule, both sides)."""
    n = os.cpu_count() or 2
    return max(1, n // 2 if n > 4 else n)


# -- user catalogue for the daemon ----------------------------------------------------------------


def toml_value(value: Any) -> str:
    """The TOML for the plain values a ModelSpec dumps to (no dates, no nested arrays of tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = [f"{k} = {toml_value(v)}" for k, v in value.items() if v is not None]
        return "{ " + ", ".join(items) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def toml_table(name: str, values: Mapping[str, Any]) -> str:
    lines = [f"[models.{json.dumps(name)}]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in values.items() if v is not None]
    return "\n".join(lines) + "\n"


# -- output -------------------------------------------------------------------------------------


def note(message: str) -> None:
    """Progress, on stderr so stdout holds only the report."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def fmt(value: object, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [list(headers)] + [[fmt(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    print(f"\n{title}")
    for k, row in enumerate(cells):
        line = "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        print("  " + line.rstrip())
        if k == 0:
            print("  " + "  ".join("-" * w for w in widths))


def verdict(value: float | None, op: str, target: float, unit: str = "x") -> str:
    """ "target >= 1.6x: MET" (``op`` is ">=" or "<=")."""
    shown = f"{target:g}{unit}" if unit == "x" else f"{target:.0%}"
    if value is None:
        return f"target {op} {shown}: n/a"
    met = value >= target if op == ">=" else value <= target
    return f"target {op} {shown}: {'MET' if met else 'NOT MET'}"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


# -- the model under test ---------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    paths: Paths
    spec: ModelSpec
    gguf: Path
    bundled: bool  # the model is in the bundled catalogue (else the user's file defines it)


def resolve_target(model: str, models_dir: Path | None = None) -> Target:
    """A catalogue model's spec and file, pulled on first use like the daemon does, in
    ``models_dir`` when given (else EDGEINFER_MODELS_DIR or the default store)."""
    with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR, unused here
        warnings.simplefilter("ignore")
        paths = resolve()
    if models_dir is not None:
        paths = replace(paths, models_dir=models_dir.expanduser().resolve())
    catalogue = load(paths)
    spec = catalogue.get(model)
    if spec is None:
        raise BenchError(
            f"unknown model {model!r}; the catalogue has: {', '.join(catalogue.models)}"
        )
    bundled = model in load_catalogue([bundled_catalogue_path()]).models
    note(f"model {model}: resolving in {paths.models_dir} (pulled on first use)")
    gguf = ModelStore(paths.models_dir, catalogue, quantizer=real_quantizer()).ensure(model)
    return Target(paths, spec, gguf, bundled)


def extra_buffers(target: Target, threads: int) -> bool:
    """The daemon's extra-buffer verdict for this model (its probe, its cache file), so every
    side runs the same llama.cpp kernels and none crashes where they do."""
    from edgeinfer.bootstrap import extra_buffer_verdicts
    from edgeinfer.engine.llama import Loader

    params = EngineParams(
        threads=threads,
        gpu_layers=target.spec.gpu_layers,
        extra_buffers=target.spec.extra_buffers,
        name=target.spec.name,
    )
    return Loader(extra_buffer_verdicts(target.paths)).extra_buffers(target.gguf, params)


def open_llama(target: Target, threads: int, **params: Any) -> Any:
    """llama-cpp-python's ``Llama`` over ``target``'s file, quiet, with ``threads`` for prompt
    and generation and the daemon's extra-buffer verdict (:func:`extra_buffers`): the naive
    side of a benchmark, run as the daemon would run it."""
    from llama_cpp import Llama

    from edgeinfer.engine.llama import llama_defaults

    with quiet_stderr(), llama_defaults(extra_buffers=extra_buffers(target, threads)):
        return Llama(
            model_path=str(target.gguf),
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
            **params,
        )


# -- a daemon on a temporary socket -----------------------------------------------------------


@contextmanager
def edgeinfer_daemon(
    models: str, models_dir: Path, config: str = "", *, timeout: float = 600
) -> Iterator[tuple[httpx.Client, ServerProcess]]:
    """A fresh daemon serving ``models`` on a temporary socket, with ``config`` (TOML) as its
    models.toml when given; its own home, so no cache or state carries over."""
    root = Path(tempfile.mkdtemp(prefix="eir-", dir="/tmp"))
    if config:
        (root / "home" / "config").mkdir(parents=True)
        (root / "home" / "config" / "models.toml").write_text(config)
    sock = root / "ei.sock"
    env = {
        **os.environ,
        "EDGEINFER_HOME": str(root / "home"),
        "EDGEINFER_MODELS_DIR": str(models_dir),
    }
    env.pop("EDGEINFER_SOCKET", None)
    argv = [sys.executable, "-m", "edgeinfer", "serve", "--models", models, "--socket", str(sock)]
    proc = ServerProcess(argv, env, root / "daemon.log", lambda: _ready(sock, models.split(",")))
    try:
        proc.start(timeout=1800)  # first use pulls the models from PyPI
        with httpx.Client(
            transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://ei", timeout=timeout
        ) as client:
            yield client, proc
    finally:
        proc.stop()
        shutil.rmtree(root, ignore_errors=True)


def _ready(sock: Path, models: list[str]) -> bool:
    if not (sock.exists() and unix_accepts(sock)):
        return False
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=5) as c:
            status = c.get("http://ei/health").json()["models"]
    except (httpx.TransportError, KeyError, ValueError):
        return False
    for name in models:
        if status.get(name, {}).get("status") in ("error", "unavailable"):
            raise BenchError(f"model {name} failed: {status[name].get('reason')}")
    return all(status.get(name, {}).get("status") == "ready" for name in models)


def post_chat(
    client: httpx.Client, body: Mapping[str, Any], what: str
) -> tuple[dict[str, Any], str, float]:
    """POST a chat completion; the reply, its text and the seconds it took. Anything but a 200
    is a BenchError naming ``what`` was asked."""
    t0 = time.perf_counter()
    resp = client.post("/v1/chat/completions", json=body)
    elapsed = time.perf_counter() - t0
    if resp.status_code != 200:
        raise BenchError(f"{what}: HTTP {resp.status_code}: {resp.text[:300]}")
    reply: dict[str, Any] = resp.json()
    return reply, reply["choices"][0]["message"]["content"] or "", elapsed
