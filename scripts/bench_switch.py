"""Requests moving between models, against each model served alone: side by side, in one run.

Each model runs in a runner process of its own, and each process has its own llama.cpp OpenMP
thread team. This checks what that costs when requests hop between models (as the router's and
eval_router's phases make them): the same prompts, greedy, one request at a time,

* ``alone``: a daemon serving one model, for each model in turn;
* ``switching``: one daemon serving all of them, the requests going round-robin between models;

then the ratio of the median request time, switching / alone, per model (target: <= 1.10x), and
the CPU the switching daemon and its runners use while idle for ``--idle`` seconds afterwards
(target: ~0%). The phases alternate ``--rounds`` times so a drifting machine weighs on both.

    .venv/bin/python scripts/bench_switch.py                      # tiny, small, large
    .venv/bin/python scripts/bench_switch.py --models tiny,small --requests 6
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from _benchutil import (
    CpuWatch,
    ServerProcess,
    machine_share,
    note,
    print_table,
    proc_cpu_s,
    process_tree,
    unix_accepts,
)

from edgeinfer.paths import resolve

PROMPTS = [
    "Name three colours.",
    "What is 12 times 12?",
    "Give a synonym for quick.",
    "Which planet is closest to the sun?",
    "Write one sentence about rain.",
    "What is the capital of Italy?",
    "Spell the word necessary backwards.",
    "Name a mammal that lives in the sea.",
]


class Daemon:
    """A fresh daemon (its own home: no phase inherits another's KV disk tier), sharing the
    extra-buffer verdicts file so only the first start of each model probes."""

    def __init__(self, models: list[str], root: Path, verdicts: Path) -> None:
        root.mkdir(parents=True)
        self.sock, self._verdicts = root / "ei.sock", verdicts
        self._home_verdicts = root / "home" / "cache" / "extra_buffers.json"
        if verdicts.exists():
            self._home_verdicts.parent.mkdir(parents=True)
            shutil.copy(verdicts, self._home_verdicts)
        env = {
            **os.environ,
            "EDGEINFER_HOME": str(root / "home"),
            "EDGEINFER_MODELS_DIR": str(resolve().models_dir),
        }
        env.pop("EDGEINFER_SOCKET", None)
        argv = [sys.executable, "-m", "edgeinfer", "serve", "--no-cache"]
        argv += ["--models", ",".join(models), "--socket", str(self.sock)]
        self.models = models
        self.proc = ServerProcess(argv, env, root / "daemon.log", self._ready)
        self.proc.start()
        transport = httpx.HTTPTransport(uds=str(self.sock))
        self.client = httpx.Client(transport=transport, base_url="http://edgeinfer", timeout=600)

    def _ready(self) -> bool:
        if not (self.sock.exists() and unix_accepts(self.sock)):
            return False
        try:
            with httpx.Client(transport=httpx.HTTPTransport(uds=str(self.sock))) as c:
                health = c.get("http://edgeinfer/health").json()
        except (httpx.TransportError, ValueError):
            return False
        return all(health["models"].get(m, {}).get("status") == "ready" for m in self.models)

    def ask(self, model: str, prompt: str, tokens: int) -> float:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": tokens,
            "temperature": 0.0,
            "logit_bias": {"0": -100, "1": -100, "2": -100},  # every request its full length
            "edgeinfer": {"cache": "off"},
        }
        t0 = time.perf_counter()
        resp = self.client.post("/v1/chat/completions", json=body)
        resp.raise_for_status()
        return time.perf_counter() - t0

    def idle_cpu(self, seconds: float) -> float | None:
        """Share of one core the daemon and its runners use over ``seconds`` of idling."""
        pids = process_tree(self.proc.pid)
        before = sum(proc_cpu_s(p) for p in pids)
        time.sleep(seconds)
        used = sum(proc_cpu_s(p) for p in pids) - before
        return used / seconds

    def close(self) -> None:
        self.client.close()
        self.proc.stop()
        if self._home_verdicts.exists():
            shutil.copy(self._home_verdicts, self._verdicts)


def run(args: argparse.Namespace) -> dict[str, Any]:
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    prompts = PROMPTS[: args.requests]
    alone: dict[str, list[float]] = {m: [] for m in models}
    switching: dict[str, list[float]] = {m: [] for m in models}
    idle: list[float | None] = []
    watch, t0 = CpuWatch(), time.perf_counter()
    top = Path(tempfile.mkdtemp(prefix="eis-", dir="/tmp"))
    verdicts = top / "extra_buffers.json"
    for r in range(args.rounds):
        order = ["alone", "switching"] if r % 2 == 0 else ["switching", "alone"]
        for phase in order:
            root = top / f"{r}-{phase}"
            try:
                if phase == "alone":
                    for m in models:
                        note(f"round {r + 1}: {m} alone")
                        d = Daemon([m], root / m, verdicts)
                        try:
                            d.ask(m, "Hello", 4)
                            alone[m] += [d.ask(m, p, args.tokens) for p in prompts]
                        finally:
                            d.close()
                else:
                    note(f"round {r + 1}: switching between {', '.join(models)}")
                    d = Daemon(models, root / "all", verdicts)
                    try:
                        for m in models:
                            d.ask(m, "Hello", 4)
                        for p in prompts:
                            for m in models:
                                switching[m].append(d.ask(m, p, args.tokens))
                        idle.append(d.idle_cpu(args.idle))
                    finally:
                        d.close()
            finally:
                shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(top, ignore_errors=True)
    others = machine_share(watch.others_s(), time.perf_counter() - t0)
    return {"alone": alone, "switching": switching, "idle": idle, "others": others}


def report(results: dict[str, Any]) -> None:
    rows = []
    for m, times in results["alone"].items():
        a, s = statistics.median(times), statistics.median(results["switching"][m])
        verdict = "ok" if s / a <= 1.10 else "ABOVE 1.10x"
        rows.append([m, f"{a * 1000:.0f}", f"{s * 1000:.0f}", f"{s / a:.2f}x", verdict])
    headers = ["model", "alone ms (median)", "switching ms", "switching/alone", "target <= 1.10x"]
    print_table("Requests moving between models vs each model alone", headers, rows)
    idle = [f"{v:.1%}" for v in results["idle"] if v is not None]
    print(f"  idle daemon + runners, CPU share of one core: {', '.join(idle) or '-'} (target ~0%)")
    if results["others"] is not None:
        print(f"  other processes used {results['others']:.0%} of the machine during the run")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--models", default="tiny,small,large")
    p.add_argument("--requests", type=int, default=6, help="prompts per model per round")
    p.add_argument("--tokens", type=int, default=32, help="completion tokens per request")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--idle", type=float, default=10.0, help="seconds of idling measured")
    report(run(p.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
