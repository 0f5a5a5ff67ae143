"""Soak the daemon for a bounded time: steady load, periodic config reloads, drift at the end.

Starts a real ``edgeinfer serve --models tiny`` in a throw-away ``EDGEINFER_HOME`` (or uses
``--socket`` of a running daemon), keeps ``--clients`` streaming chats going for ``--minutes``,
rewrites models.toml every ``--reload-every`` seconds (toggling tiny's ``n_ctx``, so the model
restarts on a new runner behind the streams), samples the daemon's RSS from ``/stats``, and
prints: requests, failures (must be 0), RSS and latency in the first and last fifth of the run,
and their drift.

    .venv/bin/python scripts/soak.py --minutes 10
    .venv/bin/python scripts/soak.py --minutes 1 --clients 2 --reload-every 15
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _benchutil import ServerProcess, unix_accepts  # noqa: E402

QUESTIONS = [
    "Name three rivers in Europe.",
    "What is the capital of Japan?",
    "Write one sentence about the sea.",
    "List four colours.",
    "Why is the sky blue? Answer briefly.",
    "Count from 1 to 10.",
]


@dataclass
class Record:
    samples: list[tuple[float, int]] = field(default_factory=list)  # (t, rss bytes)
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (t, seconds)
    failures: list[str] = field(default_factory=list)
    reloads: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def client(sock: Path, timeout: float = 300.0) -> httpx.Client:
    transport = httpx.HTTPTransport(uds=str(sock))
    return httpx.Client(transport=transport, base_url="http://edgeinfer", timeout=timeout)


def one_chat(c: httpx.Client, i: int, max_tokens: int) -> str | None:
    """One streamed chat; None when it ended with [DONE] and no error, else what went wrong."""
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)] + f" ({i})"}],
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "stream": True,
    }
    last = ""
    with c.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            return f"HTTP {r.status_code}: {r.read().decode(errors='replace')[:200]}"
        for line in r.iter_lines():
            if line.startswith("data: "):
                last = line.removeprefix("data: ")
                if '"error"' in last:
                    return last[:200]
    return None if last == "[DONE]" else f"stream ended without [DONE]: {last[:200]}"


def worker(sock: Path, rec: Record, end: float, seed: int, max_tokens: int) -> None:
    i = seed * 100_000
    with client(sock) as c:
        while time.monotonic() < end:
            t0 = time.monotonic()
            try:
                problem = one_chat(c, i, max_tokens)
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            with rec.lock:
                if problem:
                    rec.failures.append(problem)
                else:
                    rec.latencies.append((t0, time.monotonic() - t0))
            i += 1


def sampler(sock: Path, rec: Record, end: float, every: float) -> None:
    with client(sock, timeout=30) as c:
        while time.monotonic() < end:
            rss = c.get("/stats").json()["memory"]["rss_bytes"]
            rec.samples.append((time.monotonic(), int(rss)))
            time.sleep(every)


def reloader(home: Path, rec: Record, end: float, every: float) -> None:
    """Rewrite models.toml (atomically, as editors do) so tiny restarts on a new runner."""
    config = home / "config" / "models.toml"
    n = 0
    while time.monotonic() + every < end:
        time.sleep(every)
        n += 1
        text = f"[models.tiny]\nn_ctx = {2048 if n % 2 else 4096}\n"
        tmp = config.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(config)
        rec.reloads += 1


def fifth(values: list[tuple[float, Any]], start: float, span: float, last: bool) -> list[Any]:
    lo, hi = (start + span * 0.8, start + span) if last else (start, start + span * 0.2)
    return [v for t, v in values if lo <= t <= hi]


def report(rec: Record, start: float, span: float) -> dict[str, Any]:
    rss_first = fifth(rec.samples, start, span, last=False) or [rec.samples[0][1]]
    rss_last = fifth(rec.samples, start, span, last=True) or [rec.samples[-1][1]]
    lat_first = fifth(rec.latencies, start, span, last=False) or [0.0]
    lat_last = fifth(rec.latencies, start, span, last=True) or [0.0]
    mib = 1 << 20
    rss_a, rss_b = statistics.median(rss_first), statistics.median(rss_last)
    return {
        "minutes": round(span / 60, 2),
        "requests_ok": len(rec.latencies),
        "failures": len(rec.failures),
        "config_reloads": rec.reloads,
        "rss_mib_first_fifth": round(rss_a / mib, 1),
        "rss_mib_last_fifth": round(rss_b / mib, 1),
        "rss_drift_mib": round((rss_b - rss_a) / mib, 1),
        "rss_mib_max": round(max(v for _, v in rec.samples) / mib, 1),
        "latency_p50_s_first_fifth": round(statistics.median(lat_first), 3),
        "latency_p50_s_last_fifth": round(statistics.median(lat_last), 3),
        "latency_p50_drift_s": round(statistics.median(lat_last) - statistics.median(lat_first), 3),
        "first_failures": rec.failures[:5],
    }


def start_daemon(home: Path, sock: Path) -> ServerProcess:
    env = {**os.environ, "EDGEINFER_HOME": str(home)}
    config = home / "config" / "models.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("")
    argv = [sys.executable, "-m", "edgeinfer", "serve", "--socket", str(sock)]
    argv += ["--models", "tiny", "--no-cache"]
    server = ServerProcess(argv, env, home / "daemon.log", lambda: unix_accepts(sock))
    server.start()
    return server


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--clients", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--reload-every", type=float, default=30.0, help="seconds; 0 = never")
    p.add_argument("--sample-every", type=float, default=2.0, help="RSS sample period, seconds")
    p.add_argument("--socket", help="soak a running daemon instead (no config edits)")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ei-soak-", dir="/tmp"))
    home, server = tmp / "home", None
    sock = Path(args.socket) if args.socket else tmp / "ei.sock"
    if not args.socket:
        server = start_daemon(home, sock)
    rec = Record()
    start = time.monotonic()
    end = start + args.minutes * 60
    threads = [
        threading.Thread(target=worker, args=(sock, rec, end, i, args.max_tokens))
        for i in range(args.clients)
    ]
    threads.append(threading.Thread(target=sampler, args=(sock, rec, end, args.sample_every)))
    if args.reload_every > 0 and not args.socket:
        threads.append(threading.Thread(target=reloader, args=(home, rec, end, args.reload_every)))
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        if server is not None:
            server.stop()
    result = report(rec, start, time.monotonic() - start)
    print(json.dumps(result, indent=2))
    if server is not None and rec.failures:
        print(server.tail(40), file=sys.stderr)
    return 1 if rec.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
