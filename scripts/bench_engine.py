"""Benchmark edgeinfer's engine against the baseline, side by side, in one run.

Same model file, same machine, same prompts (ChatML formatted here and sent raw as completions, so
every side evaluates identical tokens), plain greedy decoding (temperature 0, repeat_penalty 1.0
on every side: the daemon would otherwise apply the model's default penalty). The sides never
run at the same time:

* ``baseline``: llama-cpp-python's high-level ``llama_cpp.Llama`` in this process, one sequence
  serving requests one at a time (on one worker thread), with its own prefix reuse of the
  previous prompt. Loaded only while it is measured, freed before the daemon starts.
* ``edgeinfer``: a real ``python -m edgeinfer serve`` subprocess on a short Unix socket, with a
  temporary ``EDGEINFER_HOME`` whose ``config/models.toml`` sets the model's ``slots`` (and
  ``threads``), sharing the pulled models through ``EDGEINFER_MODELS_DIR``.
* ``in-process``: the same daemon with ``[server] runners = "thread"`` (the model inside the
  daemon, no runner process), throughput only: what the process boundary costs.
* ``llama-server`` (only with ``--llama-server PATH``): llama.cpp's C++ server, ``-np <slots>``,
  over TCP loopback on a free port.

Sections (each prints a table; ratios carry their target, nothing asserts):

a) throughput: C concurrent clients (``--clients``) each sending requests for ``--tokens``-token
   completions; aggregate generated tokens/s = completion tokens / wall time. Target at 8
   clients: edgeinfer >= 1.6x baseline. A shared machine drifts by 10% or more between minutes,
   so this section runs ``--rounds`` times (default 3), the sides taking turns in an order that
   reverses every round; the table shows each side's median and the ratio is the median of the
   per-round ratios (every round's ratio is printed too). Targets with runner processes: 1
   client >= 0.97x baseline; 8 clients within 3% of ``in-process``.
b) prefix: a ~1,200-token shared prefix; cold request, then warm one with another question.
   Client TTFT (streaming, first content chunk), server TTFT and cached tokens. Target: warm
   <= 5% of cold.
c) interleaved: 4 conversations with >= 600 tokens of history, round-robin, several turns each.
   Prompt tokens really evaluated (edgeinfer: per-request usage, cross-checked against /stats;
   baseline: counted at ``Llama.eval``, cross-checked against the common-prefix rule it uses).
   Target: edgeinfer evaluates <= 20% of the baseline's prompt tokens.
d) restart (edgeinfer only): a ~1,200-token request, SIGTERM, start again on the same
   EDGEINFER_HOME, same request: cached tokens and TTFT after the restart.
e) crash (edgeinfer only): ``slots + 2`` streams, SIGSEGV to the model's runner process, one
   more request at once: time from the kill to its answer, and the requests lost (target: only
   those that had streamed text).
Memory: RSS of the daemon and its runner processes after the throughput section.

Run (the model is pulled on first use; EDGEINFER_MODELS_DIR is honoured)::

    .venv/bin/python scripts/bench_engine.py                  # tiny, ~5-9 min on 2 cores
    .venv/bin/python scripts/bench_engine.py --quick          # smoke run
    .venv/bin/python scripts/bench_engine.py --skip b,c,d --rounds 5   # throughput only
    .venv/bin/python scripts/bench_engine.py --model small --clients 1,8 --json out.json
    .venv/bin/python scripts/bench_engine.py --llama-server ~/llama.cpp/build/bin/llama-server

``--skip`` takes section names or letters (throughput/a, prefix/b, interleaved/c, restart/d,
crash/e) and
sides (baseline, edgeinfer). Progress goes to stderr, the report to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import httpx
from _benchutil import (
    BenchError,
    CpuWatch,
    Reply,
    ServerProcess,
    Target,
    chatml,
    common_prefix,
    extra_buffers,
    fmt,
    free_port,
    machine_share,
    merge_chunk,
    note,
    physical_cores,
    print_table,
    quiet_stderr,
    ratio,
    reply_from_openai,
    resolve_target,
    rss_mib,
    text_of_tokens,
    toml_table,
    topics,
    tree_rss_mib,
    unix_accepts,
    verdict,
)

SECTIONS = {"a": "throughput", "b": "prefix", "c": "interleaved", "d": "restart", "e": "crash"}
SIDES = ("baseline", "edgeinfer", "in-process", "llama-server")
TARGET_THROUGHPUT = 1.6  # edgeinfer / baseline tok/s at 8 clients, at least
TARGET_PREFIX = 0.05  # warm / cold TTFT, at most
TARGET_EVALUATED = 0.20  # edgeinfer / baseline prompt tokens evaluated, at most
BUSY_LIMIT = 0.05  # share of the machine other processes may use before figures are flagged
QUESTIONS = [
    "Who repaired something in these notes?",
    "Summarise the last message in one sentence.",
    "Which place is mentioned most often?",
    "What happened before the storm?",
    "Name one object from the notes.",
    "What should we do next?",
]


@dataclass(frozen=True)
class Config:
    model: str
    clients: list[int]
    tokens: int
    slots: int
    threads: int  # as given: 0 leaves the daemon's engine default
    llama_server: Path | None
    skip: frozenset[str]
    json_path: Path | None
    quick: bool
    per_client: int  # requests per client in the throughput section
    rounds: int  # runs of the throughput section per side, the sides taking turns
    prefix_tokens: int
    history_tokens: int
    conversations: int
    turns: int
    answer_tokens: int
    ttft_tokens: int

    @property
    def n_threads(self) -> int:
        return self.threads or physical_cores()

    def wants(self, name: str) -> bool:
        return name not in self.skip


@dataclass(frozen=True)
class Workload:
    throughput: dict[int, list[list[str]]]  # clients -> prompts of each client
    cold: str
    warm: str
    restart: str
    conversations: list[list[tuple[str, str]]]
    questions: list[list[str]]  # [conversation][turn]


class Side(Protocol):
    name: str

    async def complete(self, prompt: str, max_tokens: int, *, stream: bool = False) -> Reply: ...

    async def evaluated_counter(self) -> int | None:
        """An independent running count of prompt tokens evaluated (cross-check), if any."""
        ...

    def rss_mib(self) -> float | None: ...

    def server_pid(self) -> int | None: ...


# -- sides ----------------------------------------------------------------------------------------


class HttpSide:
    """edgeinfer's daemon (Unix socket) or llama-server (TCP), through their OpenAI API."""

    def __init__(
        self,
        name: str,
        model: str,
        make_client: Callable[[], httpx.AsyncClient],
        pid: Callable[[], int],
        *,
        stats: bool,
    ) -> None:
        self.name, self._model, self._make_client, self._pid = name, model, make_client, pid
        self._stats = stats
        self.client = make_client()

    async def reconnect(self) -> None:
        await self.client.aclose()
        self.client = self._make_client()

    async def aclose(self) -> None:
        await self.client.aclose()

    async def complete(self, prompt: str, max_tokens: int, *, stream: bool = False) -> Reply:
        payload: dict[str, Any] = {
            "model": self._model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            # Plain greedy on every side, as the baseline's Llama does: without it the daemon
            # applies the model's default repeat_penalty (a sampler chain on every token).
            "repeat_penalty": 1.0,
            "stream": stream,
        }
        if stream:
            payload["stream_options"] = {"include_usage": True}
            return await self._stream(payload)
        t0 = time.perf_counter()
        resp = await self.client.post("/v1/completions", json=payload)
        await _check(resp)
        body = resp.json()
        return reply_from_openai(body, body["choices"][0]["text"], time.perf_counter() - t0, None)

    async def _stream(self, payload: dict[str, Any]) -> Reply:
        meta: dict[str, Any] = {}
        pieces: list[str] = []
        ttft: float | None = None
        t0 = time.perf_counter()
        async with self.client.stream("POST", "/v1/completions", json=payload) as resp:
            await _check(resp)
            async for line in resp.aiter_lines():
                data = line.removeprefix("data:").strip() if line.startswith("data:") else ""
                if data == "[DONE]":
                    break
                piece = merge_chunk(meta, json.loads(data)) if data else ""
                if piece and ttft is None:
                    ttft = time.perf_counter() - t0
                pieces.append(piece)
        return reply_from_openai(meta, "".join(pieces), time.perf_counter() - t0, ttft)

    async def evaluated_counter(self) -> int | None:
        if not self._stats:
            return None
        resp = await self.client.get("/stats")
        await _check(resp)
        return int(resp.json()["models"][self._model]["prompt_tokens_evaluated"])

    def rss_mib(self) -> float | None:
        return tree_rss_mib(self._pid())  # the daemon with its runner processes

    def server_pid(self) -> int | None:
        return self._pid()


async def _check(resp: httpx.Response) -> None:
    if resp.status_code >= 400:
        await resp.aread()
        raise BenchError(f"HTTP {resp.status_code} from {resp.url}: {resp.text[:500]}")


class BaselineSide:
    """``llama_cpp.Llama`` in this process: one sequence, requests served one at a time.

    Every call into llama.cpp, the load included, runs on one dedicated worker thread. This
    llama.cpp build uses OpenMP: once a second OS thread has decoded, and while it lives, every
    decode in the process runs ~40% slower (libgomp throttles its spin-wait when it manages more
    threads than there are CPUs), which would penalise the baseline for the harness's sake.
    """

    name = "baseline"

    def __init__(self, load: Callable[[], Any]) -> None:
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="baseline")
        self._rss_before = rss_mib(os.getpid())
        self._llm: Any = self._worker.submit(load).result()
        self._evals: list[int] = []
        self._predicted = 0
        original = self._llm.eval

        def counting_eval(tokens: Any) -> Any:
            self._evals.append(len(tokens))  # the first eval of a call is the prompt's remainder
            return original(tokens)

        self._llm.eval = counting_eval  # generate() calls self.eval: the instance attribute wins

    async def complete(self, prompt: str, max_tokens: int, *, stream: bool = False) -> Reply:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker, self._complete, prompt, max_tokens, stream)

    def _complete(self, prompt: str, max_tokens: int, stream: bool) -> Reply:
        tokens = list(self._llm.tokenize(prompt.encode(), add_bos=True, special=True))
        self._predicted += len(tokens) - self._reuse(tokens)
        self._evals.clear()
        t0 = time.perf_counter()
        text, ttft, n_gen = self._generate(prompt, max_tokens, stream, t0)
        wall = time.perf_counter() - t0
        evaluated = self._evals[0] if self._evals else 0
        return Reply(text, len(tokens), n_gen, len(tokens) - evaluated, evaluated, ttft, None, wall)

    def _reuse(self, tokens: list[int]) -> int:
        """Prompt tokens ``Llama.generate`` keeps: the common prefix with its previous sequence,
        less one when that is the whole prompt (it replays a token to refresh the logits)."""
        if self._llm.n_tokens == 0:
            return 0
        lcp = common_prefix([int(t) for t in self._llm._input_ids], tokens)
        return lcp - 1 if lcp == len(tokens) else lcp

    def _generate(
        self, prompt: str, max_tokens: int, stream: bool, t0: float
    ) -> tuple[str, float | None, int]:
        kwargs: dict[str, Any] = {
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "repeat_penalty": 1.0,
        }
        if not stream:
            out = self._llm.create_completion(**kwargs)
            return str(out["choices"][0]["text"]), None, int(out["usage"]["completion_tokens"])
        pieces: list[str] = []
        ttft: float | None = None
        for chunk in self._llm.create_completion(**kwargs, stream=True):
            piece = str(chunk["choices"][0]["text"])
            if piece and ttft is None:
                ttft = time.perf_counter() - t0
            pieces.append(piece)
        text = "".join(pieces)
        return text, ttft, len(self._llm.tokenize(text.encode(), add_bos=False, special=True))

    async def evaluated_counter(self) -> int | None:
        return self._predicted

    def rss_mib(self) -> float | None:
        now = rss_mib(os.getpid())
        return now - self._rss_before if now is not None and self._rss_before is not None else None

    def server_pid(self) -> int | None:
        return None

    def close(self) -> None:
        self._worker.submit(self._llm.close).result()
        self._llm = None
        self._worker.shutdown()
        gc.collect()


# -- sections -------------------------------------------------------------------------------------


async def throughput_section(side: Side, cfg: Config, wl: Workload) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for clients, per_client in wl.throughput.items():
        note(f"{side.name}: throughput, {clients} client(s)")
        out[str(clients)] = await _throughput_at(side, per_client, cfg.tokens)
    return out


async def _throughput_at(side: Side, per_client: list[list[str]], tokens: int) -> dict[str, Any]:
    async def client(prompts: list[str]) -> list[Reply]:
        return [await side.complete(p, tokens) for p in prompts]

    t0 = time.perf_counter()
    replies = [r for rs in await asyncio.gather(*map(client, per_client)) for r in rs]
    wall = time.perf_counter() - t0
    generated = sum(r.completion_tokens for r in replies)
    return {
        "clients": len(per_client),
        "requests": len(replies),
        "completion_tokens": generated,
        "wall_s": wall,
        "tok_s": generated / wall,
        "mean_latency_s": sum(r.wall_s for r in replies) / len(replies),
    }


async def prefix_section(side: Side, cfg: Config, wl: Workload) -> dict[str, Any]:
    note(f"{side.name}: prefix reuse (cold, then warm)")
    cold = await side.complete(wl.cold, cfg.ttft_tokens, stream=True)
    warm = await side.complete(wl.warm, cfg.ttft_tokens, stream=True)
    return {"cold": cold.as_dict(), "warm": warm.as_dict()}


async def interleaved_section(side: Side, cfg: Config, wl: Workload) -> dict[str, Any]:
    note(f"{side.name}: {len(wl.conversations)} interleaved conversations x {cfg.turns} turns")
    histories = [list(h) for h in wl.conversations]
    before = await side.evaluated_counter()
    replies: list[Reply] = []
    t0 = time.perf_counter()
    for turn in range(cfg.turns):
        for i, history in enumerate(histories):
            history.append(("user", wl.questions[i][turn]))
            reply = await side.complete(chatml(history), cfg.answer_tokens)
            history.append(("assistant", reply.text))
            replies.append(reply)
    wall = time.perf_counter() - t0
    after = await side.evaluated_counter()
    later = replies[len(histories) :]
    return {
        "requests": len(replies),
        "prompt_tokens": sum(r.prompt_tokens for r in replies),
        "evaluated": _total(r.evaluated for r in replies),
        "prompt_tokens_later_turns": sum(r.prompt_tokens for r in later),
        "evaluated_later_turns": _total(r.evaluated for r in later),
        "evaluated_check": None if before is None or after is None else after - before,
        "wall_s": wall,
    }


def _total(values: Iterable[int | None]) -> int | None:
    """The sum, or None when a side did not report one of them."""
    items = list(values)
    return None if any(v is None for v in items) else sum(v for v in items if v is not None)


async def restart_section(
    proc: ServerProcess, side: HttpSide, cfg: Config, wl: Workload
) -> dict[str, Any]:
    note("edgeinfer: restart (request, SIGTERM, start, same request)")
    first = await side.complete(wl.restart, cfg.ttft_tokens, stream=True)
    await side.aclose()
    stop_s = await asyncio.to_thread(proc.stop)
    start_s = await asyncio.to_thread(proc.start)
    await side.reconnect()
    again = await side.complete(wl.restart, cfg.ttft_tokens, stream=True)
    return {
        "before": first.as_dict(),
        "after": again.as_dict(),
        "stop_s": stop_s,
        "start_s": start_s,
    }


async def crash_section(side: HttpSide, cfg: Config) -> dict[str, Any]:
    """``slots + 2`` streams (the slots' worth generating, two queued), SIGSEGV to the model's
    runner process once some have streamed text, then one more short request. Measured from
    the kill: the restarted runner serving again, the first request answered, the short one
    answered (it queues behind the retried ones); and which requests were lost. Only those
    that had streamed text may fail; the rest must be answered by the restarted runner."""
    note("edgeinfer: crash (SIGSEGV to the runner during slots + 2 streams)")

    async def runner() -> dict[str, Any]:
        resp = await side.client.get("/stats")
        await _check(resp)
        process: dict[str, Any] = resp.json()["models"][cfg.model]["runner"]
        return process

    pid = (await runner())["pid"]
    streamed = [asyncio.Event() for _ in range(cfg.slots + 2)]

    async def one(i: int) -> dict[str, Any]:
        question = f"Crash test {i}: tell a long story about the number {i}."
        payload = {
            "model": cfg.model,
            "prompt": chatml([("user", question)]),
            "max_tokens": 200,
            "temperature": 0.0,
            "stream": True,
        }
        error, first = None, None
        async with side.client.stream("POST", "/v1/completions", json=payload) as resp:
            await _check(resp)
            async for line in resp.aiter_lines():
                data = line.removeprefix("data:").strip() if line.startswith("data:") else ""
                if not data or data == "[DONE]":
                    continue
                event = json.loads(data)
                if "error" in event:
                    error = event["error"]["code"]
                elif event.get("choices") and event["choices"][0].get("text"):
                    streamed[i].set()
                    first = first or time.perf_counter()
        return {
            "streamed": streamed[i].is_set(),
            "error": error,
            "at": time.perf_counter(),
            "first": first,
        }

    tasks = [asyncio.create_task(one(i)) for i in range(len(streamed))]
    deadline = time.perf_counter() + 120
    while not any(e.is_set() for e in streamed):
        if time.perf_counter() > deadline:
            raise BenchError("no stream produced text within 120 s")
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # the slots' streams under way, the queued ones still waiting
    before = [e.is_set() for e in streamed]
    t_kill = time.perf_counter()
    os.kill(pid, signal.SIGSEGV)
    probe = asyncio.create_task(side.complete(chatml([("user", "Crash probe: a colour?")]), 8))
    for _ in range(3000):  # polled: the daemon has no event to wait on for a restart
        now = await runner()
        if now["pid"] not in (None, pid) and now["state"] == "running":
            break
        await asyncio.sleep(0.02)
    restarted_s = time.perf_counter() - t_kill
    reply = await probe
    probe_s = time.perf_counter() - t_kill
    outcomes = await asyncio.gather(*tasks)
    lost = [o for o in outcomes if o["error"]]
    answered = [o["at"] - t_kill for o in outcomes if not o["error"]]
    retried = [o["first"] - t_kill for o in outcomes if o["first"] and o["first"] > t_kill]
    return {
        "requests": len(outcomes),
        "streamed_at_kill": sum(before),
        "lost": len(lost),
        "lost_unstreamed": sum(1 for o in lost if not o["streamed"]),
        "lost_codes": sorted({o["error"] for o in lost}),
        "restarted_s": restarted_s,
        "first_token_s": min(retried, default=None),
        "first_answer_s": min(answered, default=None),
        "probe_s": probe_s,
        "probe_tokens": reply.completion_tokens,
    }


SectionRun = Callable[[], Awaitable[dict[str, Any]]]
SideRun = Callable[[Config, Target, Workload], dict[str, Any]]  # one side, every section


async def measure(
    side: Side,
    cfg: Config,
    wl: Workload,
    restart: SectionRun | None,
    crash: SectionRun | None = None,
) -> dict[str, Any]:
    """Every wanted section on one side, in an order that keeps the prefix test's cold request
    the first long prompt this side sees (after a short warm-up sharing no prefix with it).
    Records the share of the machine other processes used during each section."""
    sections: list[tuple[str, SectionRun]] = [
        ("prefix", lambda: prefix_section(side, cfg, wl)),
        ("throughput", lambda: throughput_section(side, cfg, wl)),
        ("interleaved", lambda: interleaved_section(side, cfg, wl)),
    ]
    if restart is not None:
        sections.append(("restart", restart))
    if crash is not None:
        sections.append(("crash", crash))
    out: dict[str, Any] = {}
    busy: dict[str, float | None] = {}
    await side.complete("Hello", 4)
    for name, run in sections:
        if not cfg.wants(name):
            continue
        watch, t0 = CpuWatch(side.server_pid), time.perf_counter()
        try:
            out[name] = await run()
        except (BenchError, httpx.HTTPError) as exc:  # report it, keep the other figures
            note(f"{side.name}: {name} failed: {exc}")
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
        busy[name] = machine_share(watch.others_s(), time.perf_counter() - t0)
        if name == "throughput":
            out["rss_mib"] = side.rss_mib()
    out.setdefault("rss_mib", side.rss_mib())
    return {**out, "other_cpu_share": busy}


# -- running each side ----------------------------------------------------------------------------


def run_baseline(cfg: Config, target: Target, wl: Workload) -> dict[str, Any]:
    from llama_cpp import Llama

    from edgeinfer.engine.llama import llama_defaults

    extra = extra_buffers(target, cfg.n_threads)

    def load() -> Any:
        with llama_defaults(extra_buffers=extra):
            return Llama(
                model_path=str(target.gguf),
                n_ctx=target.spec.n_ctx,
                n_batch=target.spec.n_batch,
                n_threads=cfg.n_threads,
                n_threads_batch=cfg.n_threads,
                n_gpu_layers=target.spec.gpu_layers,
                flash_attn=True,
                verbose=False,
            )

    t0 = time.perf_counter()
    side = BaselineSide(load)
    load_s = time.perf_counter() - t0
    note(f"baseline: Llama loaded in {load_s:.1f} s")
    try:
        return {"load_s": load_s, **asyncio.run(measure(side, cfg, wl, None))}
    finally:
        side.close()


def user_catalogue(cfg: Config, target: Target) -> str:
    """The daemon's ``config/models.toml``: the slots (and threads) override, as a user writes
    it; a model only the user's own catalogue defines is written out whole."""
    spec = target.spec
    values: dict[str, Any] = {}
    if not target.bundled:
        values = spec.model_dump(by_alias=True, exclude={"name"}, exclude_none=True)
    values["slots"] = cfg.slots
    if cfg.threads:
        values["threads"] = cfg.threads
    return toml_table(cfg.model, values)


def daemon_process(
    cfg: Config, target: Target, root: Path, runners: str = "process"
) -> tuple[ServerProcess, Path]:
    home, sock = root / "home", root / "ei.sock"
    (home / "config").mkdir(parents=True)
    server = f'\n[server]\nrunners = "{runners}"\n' if runners != "process" else ""
    (home / "config" / "models.toml").write_text(user_catalogue(cfg, target) + server)
    env = {
        **os.environ,
        "EDGEINFER_HOME": str(home),
        "EDGEINFER_MODELS_DIR": str(target.paths.models_dir),
    }
    env.pop("EDGEINFER_SOCKET", None)
    argv = [sys.executable, "-m", "edgeinfer", "serve"]
    argv += ["--models", cfg.model, "--socket", str(sock)]
    proc = ServerProcess(argv, env, root / "daemon.log", lambda: _daemon_ready(sock, cfg.model))
    return proc, sock


def _daemon_ready(sock: Path, model: str) -> bool:
    if not (sock.exists() and unix_accepts(sock)):
        return False
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=5) as c:
            resp = c.get("http://edgeinfer/health")
    except httpx.TransportError:
        return False
    status = resp.json()["models"].get(model, {}) if resp.status_code == 200 else {}
    if status.get("status") in ("error", "unavailable"):
        raise BenchError(f"model {model} failed in the daemon: {status.get('reason')}")
    return status.get("status") == "ready"


def run_edgeinfer(cfg: Config, target: Target, wl: Workload) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="eib-", dir="/tmp"))  # AF_UNIX paths must stay short
    proc, sock = daemon_process(cfg, target, root)
    try:
        start_s = proc.start()
        note(f"edgeinfer: daemon ready in {start_s:.1f} s (pid {proc.pid}, {cfg.slots} slots)")
        return {"start_s": start_s, **asyncio.run(_measure_daemon(cfg, wl, proc, sock))}
    finally:
        proc.stop()
        shutil.rmtree(root, ignore_errors=True)


def run_in_process(cfg: Config, target: Target, wl: Workload) -> dict[str, Any]:
    """The same daemon with ``[server] runners = "thread"``: the model inside the daemon, as
    before runner processes. Throughput only: what the process boundary costs."""
    root = Path(tempfile.mkdtemp(prefix="eib-", dir="/tmp"))
    proc, sock = daemon_process(cfg, target, root, runners="thread")
    only = replace(cfg, skip=cfg.skip | {"prefix", "interleaved", "restart", "crash"})
    try:
        start_s = proc.start()
        note(f"in-process: daemon ready in {start_s:.1f} s (pid {proc.pid}, runner threads)")
        figures = asyncio.run(_measure_daemon(only, wl, proc, sock, name="in-process"))
        return {"start_s": start_s, **figures}
    finally:
        proc.stop()
        shutil.rmtree(root, ignore_errors=True)


async def _measure_daemon(
    cfg: Config, wl: Workload, proc: ServerProcess, sock: Path, name: str = "edgeinfer"
) -> dict[str, Any]:
    def make_client() -> httpx.AsyncClient:
        transport = httpx.AsyncHTTPTransport(uds=str(sock))
        return httpx.AsyncClient(transport=transport, base_url="http://edgeinfer", timeout=600)

    side = HttpSide(name, cfg.model, make_client, lambda: proc.pid, stats=True)
    isolated = name == "edgeinfer"
    try:
        return await measure(
            side,
            cfg,
            wl,
            (lambda: restart_section(proc, side, cfg, wl)) if isolated else None,
            (lambda: crash_section(side, cfg)) if isolated else None,
        )
    finally:
        await side.aclose()


def run_llama_server(cfg: Config, target: Target, wl: Workload) -> dict[str, Any]:
    assert cfg.llama_server is not None
    root = Path(tempfile.mkdtemp(prefix="eib-ls-"))
    port = free_port()
    layers = 999 if target.spec.gpu_layers < 0 else target.spec.gpu_layers
    argv = [str(cfg.llama_server), "-m", str(target.gguf), "-np", str(cfg.slots)]
    argv += ["-c", str(target.spec.n_ctx * cfg.slots), "--host", "127.0.0.1", "--port", str(port)]
    argv += ["-t", str(cfg.n_threads), "-tb", str(cfg.n_threads), "-ngl", str(layers)]
    if not extra_buffers(target, cfg.n_threads):
        argv += ["--no-repack"]
    base = f"http://127.0.0.1:{port}"
    proc = ServerProcess(argv, dict(os.environ), root / "llama-server.log", lambda: _up(base))
    try:
        start_s = proc.start()
        note(f"llama-server: ready in {start_s:.1f} s on {base}")

        def make_client() -> httpx.AsyncClient:
            return httpx.AsyncClient(base_url=base, timeout=600)

        return {"start_s": start_s, **asyncio.run(_measure_plain(cfg, wl, make_client, proc))}
    finally:
        proc.stop()
        shutil.rmtree(root, ignore_errors=True)


def more_rounds(
    cfg: Config,
    target: Target,
    wl: Workload,
    runs: list[tuple[str, SideRun]],
    results: dict[str, Any],
) -> None:
    """Rounds 2.. of the throughput section, the sides in reversed order every other round.
    Each side's ``throughput_rounds`` lists every round's figures; round 1 is ``throughput``."""
    if cfg.rounds < 2 or not cfg.wants("throughput"):
        return
    only = replace(cfg, skip=cfg.skip | {"prefix", "interleaved", "restart", "crash"})
    live = [(n, run) for n, run in runs if "throughput" in (results.get(n) or {})]
    for side in (n for n, _ in live):
        results[side]["throughput_rounds"] = [results[side]["throughput"]]
    for k in range(1, cfg.rounds):
        for name, run in live if k % 2 == 0 else live[::-1]:
            note(f"round {k + 1} of {cfg.rounds}: {name}")
            try:
                figures = run(only, target, wl).get("throughput")
            except (BenchError, httpx.HTTPError) as exc:
                note(f"{name} failed in round {k + 1}: {exc}")
                figures = {"error": str(exc)}
            results[name]["throughput_rounds"].append(figures)


def _up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


async def _measure_plain(
    cfg: Config, wl: Workload, make_client: Callable[[], httpx.AsyncClient], proc: ServerProcess
) -> dict[str, Any]:
    side = HttpSide("llama-server", cfg.model, make_client, lambda: proc.pid, stats=False)
    try:
        return await measure(side, cfg, wl, None)
    finally:
        await side.aclose()


# -- workload -------------------------------------------------------------------------------------


def build_workload(cfg: Config, count: Callable[[str], int]) -> Workload:
    throughput: dict[int, list[list[str]]] = {}
    offset = 0
    for clients in cfg.clients:
        # one client alone runs 3x the requests: 4 took 5 s and its rounds swung by 10%
        n = clients * cfg.per_client * (3 if clients == 1 else 1)
        prompts = [chatml([("user", f"Write a story about {t}.")]) for t in topics(n, offset)]
        offset += n
        throughput[clients] = [prompts[i::clients] for i in range(clients)]
    notes = text_of_tokens(count, cfg.prefix_tokens, seed=1)
    other = text_of_tokens(count, cfg.prefix_tokens, seed=2)

    def ask(system: str, question: str) -> str:
        return chatml([("system", f"Notes:\n{system}"), ("user", question)])

    return Workload(
        throughput=throughput,
        cold=ask(notes, "What is the main topic of these notes? Answer in one sentence."),
        warm=ask(notes, "Which objects are mentioned in these notes? Name two."),
        restart=ask(other, "Who appears most often in these notes? Answer briefly."),
        conversations=[
            conversation(count, cfg.history_tokens, i) for i in range(cfg.conversations)
        ],
        questions=[
            [f"{QUESTIONS[(i + t) % len(QUESTIONS)]} (turn {t + 1})" for t in range(cfg.turns)]
            for i in range(cfg.conversations)
        ],
    )


def conversation(count: Callable[[str], int], n_tokens: int, index: int) -> list[tuple[str, str]]:
    """A deterministic multi-turn history of at least ``n_tokens`` tokens."""
    history = [("system", "You are a helpful assistant. Answer briefly.")]
    k = 0
    while count(chatml(history, open_assistant=False)) < n_tokens:
        seed = 100 + 10 * index + k
        history.append(("user", "Here are my notes: " + text_of_tokens(count, 60, seed)))
        history.append(("assistant", "Understood. " + text_of_tokens(count, 90, seed + 1000)))
        k += 1
    return history


# -- report ---------------------------------------------------------------------------------------


def _get(results: dict[str, Any], side: str, *keys: str) -> Any:
    node: Any = results.get(side)
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _rates(results: dict[str, Any], side: str, clients: int) -> list[float | None]:
    """The side's tok/s at ``clients`` in every throughput round (None where a round failed)."""
    rounds = _get(results, side, "throughput_rounds") or [_get(results, side, "throughput")]
    return [(r or {}).get(str(clients), {}).get("tok_s") for r in rounds]


def _median(values: Iterable[float | None]) -> float | None:
    seen = [v for v in values if v is not None]
    return statistics.median(seen) if seen else None


def _paired(results: dict[str, Any], num: str, den: str, clients: int) -> list[float | None]:
    """``num`` over ``den`` at ``clients``, round by round (the rounds ran side by side)."""
    pairs = zip(_rates(results, num, clients), _rates(results, den, clients), strict=False)
    return [ratio(a, b) for a, b in pairs]


def report_throughput(cfg: Config, results: dict[str, Any]) -> list[str]:
    rows: list[list[object]] = []
    for c in cfg.clients:
        base = _get(results, "baseline", "throughput", str(c)) or {}
        ei = _get(results, "edgeinfer", "throughput", str(c)) or {}
        tokens = f"{fmt(base.get('completion_tokens'))}/{fmt(ei.get('completion_tokens'))}"
        row: list[object] = [c, ei.get("requests"), tokens]
        row += [_median(_rates(results, "edgeinfer", c)), _median(_rates(results, "baseline", c))]
        row.append(_x(_median(_paired(results, "edgeinfer", "baseline", c))))
        if "in-process" in results:
            row.append(_median(_rates(results, "in-process", c)))
            row.append(_x(_median(_paired(results, "edgeinfer", "in-process", c))))
        if cfg.llama_server:
            row.append(_median(_rates(results, "llama-server", c)))
            row.append(_x(_median(_paired(results, "edgeinfer", "llama-server", c))))
        rows.append(row)
    headers = [
        "clients",
        "requests",
        "tokens base/ei",
        "edgeinfer tok/s",
        "baseline tok/s",
        "ratio",
    ]
    headers += ["in-process tok/s", "ei/in-process"] if "in-process" in results else []
    headers += ["llama-server tok/s", "ei/llama-server"] if cfg.llama_server else []
    title = f"a) Throughput, {cfg.tokens}-token completions (generated tok/s"
    title += f", median of {cfg.rounds} rounds)" if cfg.rounds > 1 else ")"
    print_table(title, headers, rows)
    at8 = _paired(results, "edgeinfer", "baseline", 8)
    line = f"throughput at 8 clients, edgeinfer/baseline: {_x(_median(at8))}  "
    line += verdict(_median(at8), ">=", TARGET_THROUGHPUT)
    lines = [line]
    if len(at8) > 1:
        lines.append("  each round: " + " ".join(_x(r) for r in at8))
    at1 = _paired(results, "edgeinfer", "baseline", 1)
    if at1:
        lines.append(
            f"throughput at 1 client, edgeinfer/baseline: {_x(_median(at1))}  "
            + verdict(_median(at1), ">=", 0.97)
        )
    if "in-process" in results:
        ip8 = _paired(results, "edgeinfer", "in-process", 8)
        lines.append(
            f"throughput at 8 clients, runner process/in-process: {_x(_median(ip8))}  "
            + verdict(_median(ip8), ">=", 0.97)
        )
        if len(ip8) > 1:
            lines.append("  each round: " + " ".join(_x(r) for r in ip8))
    if cfg.llama_server:
        ls8 = _paired(results, "edgeinfer", "llama-server", 8)
        lines.append(
            f"throughput at 8 clients, edgeinfer/llama-server: {_x(_median(ls8))} (reference)"
        )
        if len(ls8) > 1:
            lines.append("  each round: " + " ".join(_x(r) for r in ls8))
    for text in lines:
        print("  " + text)
    return lines


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def report_prefix(results: dict[str, Any]) -> list[str]:
    rows: list[list[object]] = []
    ratios: dict[str, tuple[float | None, float | None]] = {}
    for side in SIDES:
        cold, warm = _get(results, side, "prefix", "cold"), _get(results, side, "prefix", "warm")
        if not cold or not warm:
            continue
        client = ratio(warm["client_ttft_s"], cold["client_ttft_s"])
        server = ratio(warm["server_ttft_ms"], cold["server_ttft_ms"])
        ratios[side] = (client, server)
        for label, r in (("cold", cold), ("warm", warm)):
            rows.append(
                [
                    side if label == "cold" else "",
                    label,
                    r["prompt_tokens"],
                    r["cached_tokens"],
                    _ms(r["client_ttft_s"]),
                    r["server_ttft_ms"],
                ]
            )
        rows.append(["", "warm/cold", "", "", _pct(client), _pct(server)])
    headers = ["side", "request", "prompt tok", "cached tok", "client TTFT ms", "server TTFT ms"]
    print_table("b) Prefix reuse: TTFT of a ~1,200-token shared prefix", headers, rows)
    client, server = ratios.get("edgeinfer", (None, None))
    base = ratios.get("baseline", (None, None))[0]
    line = f"prefix warm/cold TTFT, edgeinfer: {_pct(client)} client, {_pct(server)} server  "
    line += verdict(client, "<=", TARGET_PREFIX, unit="%")
    print("  " + line)
    lines = [line, f"prefix warm/cold TTFT, baseline (reference): {_pct(base)} client"]
    if "llama-server" in ratios:
        ls = ratios["llama-server"][0]
        lines.append(f"prefix warm/cold TTFT, llama-server (reference): {_pct(ls)} client")
    return lines


def _cmp(results: dict[str, Any], num: str, den: str, *keys: str) -> float | None:
    """Side ``num``'s figure at ``keys`` over side ``den``'s (None when one is missing)."""
    return ratio(_get(results, num, *keys), _get(results, den, *keys))


def report_interleaved(results: dict[str, Any]) -> list[str]:
    keys = ["requests", "prompt_tokens", "evaluated", "evaluated_check", "evaluated_later_turns"]
    rows = [
        [side, *(r[k] for k in keys), r["wall_s"]]
        for side in SIDES
        if (r := _get(results, side, "interleaved")) and "error" not in r
    ]
    headers = ["side", "requests", "prompt tok", "evaluated", "cross-check", "eval. turns 2+", "s"]
    print_table("c) Interleaved conversations: prompt tokens evaluated", headers, rows)
    print(
        "  cross-check: edgeinfer /stats prompt_tokens_evaluated delta; baseline: common-prefix"
        " rule of Llama.generate"
    )
    ev = _cmp(results, "edgeinfer", "baseline", "interleaved", "evaluated")
    later = _cmp(results, "edgeinfer", "baseline", "interleaved", "evaluated_later_turns")
    ei = _get(results, "edgeinfer", "interleaved") or {}
    first_turns = ei.get("prompt_tokens", 0) - ei.get("prompt_tokens_later_turns", 0)
    floor = ratio(first_turns, _get(results, "baseline", "interleaved", "evaluated"))
    line = f"interleaved evaluated, edgeinfer/baseline (all turns): {_pct(ev)}  "
    line += verdict(ev, "<=", TARGET_EVALUATED, unit="%")
    line2 = f"interleaved evaluated, edgeinfer/baseline (turns 2+ only): {_pct(later)}  "
    line2 += verdict(later, "<=", TARGET_EVALUATED, unit="%")
    lines = [
        line,
        f"  (floor with free later turns: {_pct(floor)}; the first turns are cold on every side)",
        line2,
        "interleaved time, baseline/edgeinfer:"
        f" {_x(_cmp(results, 'baseline', 'edgeinfer', 'interleaved', 'wall_s'))}",
    ]
    if "llama-server" in results:
        vs_ls = _cmp(results, "edgeinfer", "llama-server", "interleaved", "evaluated")
        lines.append(f"interleaved evaluated, edgeinfer/llama-server (reference): {_pct(vs_ls)}")
    for text in lines:
        print("  " + text)
    return lines


def report_restart(results: dict[str, Any]) -> list[str]:
    r = _get(results, "edgeinfer", "restart")
    if not r or "error" in r:
        return []
    before, after = r["before"], r["after"]
    rows = [
        [
            label,
            x["prompt_tokens"],
            x["cached_tokens"],
            _ms(x["client_ttft_s"]),
            x["server_ttft_ms"],
        ]
        for label, x in (("before restart", before), ("after restart", after))
    ]
    headers = ["edgeinfer request", "prompt tok", "cached tok", "client TTFT ms", "server TTFT ms"]
    print_table("d) Restart: the same ~1,200-token request before and after", headers, rows)
    print(f"  stop {r['stop_s']:.1f} s, start to healthy {r['start_s']:.1f} s")
    cached = after["cached_tokens"] or 0
    disk = (
        f"disk tier: served from disk (cached_tokens={cached})"
        if cached
        else "disk tier: not served from disk (cached_tokens=0)"
    )
    t = ratio(after["client_ttft_s"], before["client_ttft_s"])
    line = f"restart TTFT after/before: {_pct(t)}; {disk}"
    print("  " + line)
    return [line]


def report_crash(results: dict[str, Any]) -> list[str]:
    r = _get(results, "edgeinfer", "crash")
    if not r or "error" in r:
        return []
    rows = [
        [
            r["requests"],
            r["streamed_at_kill"],
            r["lost"],
            r["lost_unstreamed"],
            ", ".join(r["lost_codes"]) or "-",
            _ms(r["restarted_s"]),
            _ms(r["first_token_s"]),
            _ms(r["first_answer_s"]),
            _ms(r["probe_s"]),
        ]
    ]
    headers = ["streams", "streaming at kill", "lost", "lost unstreamed", "codes"]
    headers += ["kill→restarted ms", "kill→first token ms", "kill→first answer ms"]
    headers += ["kill→new request answered ms"]
    print_table("e) Crash: SIGSEGV to the runner process under load", headers, rows)
    line = (
        f"crash: runner serving again {r['restarted_s']:.2f} s after the kill, first token"
        f" {fmt(r['first_token_s'], 2)} s, first answer {fmt(r['first_answer_s'])} s;"
        f" lost {r['lost']} of {r['requests']}"
        f" ({r['lost_unstreamed']} that had not streamed; target 0)"
    )
    print("  " + line)
    return [line]


def report_memory(cfg: Config, results: dict[str, Any]) -> list[str]:
    labels = {
        "edgeinfer": f"edgeinfer daemon + runner RSS ({cfg.slots} slots)",
        "baseline": "baseline Llama (growth of this process)",
        "in-process": f"edgeinfer in-process RSS ({cfg.slots} slots)",
        "llama-server": f"llama-server RSS (-np {cfg.slots})",
    }
    rows = [[labels[s], _get(results, s, "rss_mib")] for s in SIDES if s in results]
    print_table("Memory after the throughput section", ["process", "MiB"], rows)
    ei = _get(results, "edgeinfer", "rss_mib")
    return [f"edgeinfer daemon + runner RSS: {fmt(ei)} MiB with {cfg.slots} slots"]


def report(cfg: Config, target: Target, results: dict[str, Any]) -> list[str]:
    print(
        f"\nedgeinfer engine benchmark: model {cfg.model} ({target.gguf.name},"
        f" {target.gguf.stat().st_size:,} bytes), slots {cfg.slots}, threads {cfg.n_threads},"
        f" n_ctx {target.spec.n_ctx}, cpus {os.cpu_count()}{', quick' if cfg.quick else ''}"
    )
    summary: list[str] = []
    if cfg.wants("throughput"):
        summary += report_throughput(cfg, results)
    if cfg.wants("prefix"):
        summary += report_prefix(results)
    if cfg.wants("interleaved"):
        summary += report_interleaved(results)
    summary += report_restart(results)
    summary += report_crash(results)
    summary += report_memory(cfg, results)
    summary += report_machine(results)
    summary += report_errors(results)
    print("\nSUMMARY")
    for line in summary:
        print("  " + line)
    return summary


def report_machine(results: dict[str, Any]) -> list[str]:
    names = ["prefix", "throughput", "interleaved", "restart", "crash"]
    shares = {side: _get(results, side, "other_cpu_share") or {} for side in SIDES}
    rows = [
        [side, *(_pct(shares[side].get(n)) for n in names)] for side in results if side in SIDES
    ]
    title = "CPU used by other processes during each section (share of the machine)"
    print_table(title, ["side", *names], rows)
    # a crash replaces the runner: its CPU before and after the kill reads as another process's
    seen = [v for per in shares.values() for n, v in per.items() if v is not None and n != "crash"]
    worst = max(seen, default=0.0)
    if worst <= BUSY_LIMIT:
        return []
    line = f"WARNING: other processes used up to {worst:.0%} of the machine in a section: skewed"
    print("  " + line)
    return [line]


def errors(results: dict[str, Any]) -> list[str]:
    """ "side: message" or "side/section: message" for everything that failed."""
    found = []
    for side in SIDES:
        node = results.get(side) or {}
        if "error" in node:
            found.append(f"{side}: {node['error']}")
        for section, value in node.items():
            if isinstance(value, dict) and "error" in value:
                found.append(f"{side}/{section}: {value['error']}")
    return found


def report_errors(results: dict[str, Any]) -> list[str]:
    lines = [f"FAILED {e}" for e in errors(results)]
    for line in lines:
        print("\n" + line)
    return [line.splitlines()[0] for line in lines]


# -- main -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> Config:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--model", default="tiny", help="catalogue model (default: tiny)")
    p.add_argument("--clients", default="1,4,8", help="concurrent clients to try (default 1,4,8)")
    p.add_argument("--tokens", type=int, default=128, help="completion tokens per request")
    p.add_argument(
        "--turns", type=int, default=6, help="turns per interleaved conversation (default 6)"
    )
    p.add_argument("--slots", type=int, default=8, help="the daemon's slots (and llama-server -np)")
    p.add_argument("--threads", type=int, default=0, help="threads, 0 = physical cores")
    p.add_argument("--llama-server", type=Path, help="a llama.cpp llama-server binary to compare")
    p.add_argument("--skip", default="", help="sections (a-d or names) or sides to skip")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    p.add_argument(
        "--rounds", type=int, default=3, help="throughput runs per side, in turns (default 3)"
    )
    p.add_argument("--quick", action="store_true", help="fewer, shorter requests (smoke run)")
    a = p.parse_args(argv)
    skip = {SECTIONS.get(s.strip(), s.strip()) for s in a.skip.split(",") if s.strip()}
    unknown = skip - set(SECTIONS.values()) - set(SIDES)
    if unknown:
        p.error(f"--skip: unknown {', '.join(sorted(unknown))}")
    clients = _positive_ints(a.clients)
    if clients is None or min(a.tokens, a.slots, a.rounds, a.threads + 1) < 1:
        p.error("--clients, --tokens, --slots and --rounds must be positive (--threads >= 0)")
    return Config(
        model=a.model,
        clients=clients,
        tokens=min(a.tokens, 64) if a.quick else a.tokens,
        slots=a.slots,
        threads=a.threads,
        llama_server=a.llama_server.expanduser() if a.llama_server else None,
        skip=frozenset(skip),
        json_path=a.json,
        quick=a.quick,
        per_client=1 if a.quick else 4,
        rounds=1 if a.quick else a.rounds,
        prefix_tokens=1200,
        history_tokens=600,
        conversations=4,
        turns=2 if a.quick else a.turns,
        answer_tokens=32,
        ttft_tokens=8 if a.quick else 16,
    )


def _positive_ints(text: str) -> list[int] | None:
    """ "1,4,8" as [1, 4, 8] (duplicates dropped); None when an item is not a positive integer."""
    items = [c.strip() for c in text.split(",") if c.strip()]
    if not items or not all(c.isdigit() and int(c) > 0 for c in items):
        return None
    return list(dict.fromkeys(int(c) for c in items))


def token_counter(gguf: Path) -> Callable[[str], int]:
    """Token counts with the model's own tokenizer (vocabulary only, no weights)."""
    from llama_cpp import Llama

    with quiet_stderr():
        vocab = Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    return lambda text: len(vocab.tokenize(text.encode(), add_bos=False, special=True))


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    if cfg.llama_server and not cfg.llama_server.is_file():
        raise BenchError(f"--llama-server: no such file {cfg.llama_server}")
    target = resolve_target(cfg.model)
    wl = build_workload(cfg, token_counter(target.gguf))
    runs: list[tuple[str, SideRun]] = [
        ("baseline", run_baseline),
        ("edgeinfer", run_edgeinfer),
        ("in-process", run_in_process),
    ]
    if cfg.llama_server:
        runs.append(("llama-server", run_llama_server))
    t0, watch = time.perf_counter(), CpuWatch()
    results: dict[str, Any] = {}
    for name, run in runs:
        if cfg.wants(name):
            try:
                results[name] = run(cfg, target, wl)
            except (BenchError, httpx.HTTPError) as exc:  # report it, run the other sides
                note(f"{name} failed: {exc}")
                results[name] = {"error": str(exc)}
    more_rounds(cfg, target, wl, runs, results)
    wall, others = time.perf_counter() - t0, watch.others_s()
    results["machine"] = {"wall_s": wall, "other_processes_cpu_s": others}
    summary = report(cfg, target, results)
    share = _pct(machine_share(others, wall))
    print(f"\n(total benchmark time {wall:.0f} s; other processes used {share} of the machine)")
    if cfg.json_path:
        config = {**asdict(cfg), "skip": sorted(cfg.skip), "n_threads": cfg.n_threads}
        doc = {
            "config": config,
            "model_file": str(target.gguf),
            "results": results,
            "summary": summary,
        }
        cfg.json_path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return 1 if errors(results) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench_engine: error: {exc}", file=sys.stderr)
        sys.exit(1)
