"""The ``edgeinfer`` command line.

Library code raises; this module alone prints and picks exit codes: an ``EdgeInferError`` is one
readable line on stderr (``edgeinfer: error: ...``) and exit status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from edgeinfer import __version__
from edgeinfer.cli import models as cli_models
from edgeinfer.cli import router as cli_router
from edgeinfer.cli.args import number
from edgeinfer.errors import EdgeInferError
from edgeinfer.paths import (
    Paths,
    ensure_private_dir,
    ensure_private_file,
    resolve,
    socket_path,
)


def cmd_serve(args: argparse.Namespace) -> int:
    from edgeinfer import logs
    from edgeinfer.bootstrap import DaemonSettings, build_app, load
    from edgeinfer.server.daemon import refuse_if_live, run, serve_options, systemd_sockets

    paths = resolve()
    # Everything the daemon writes (logs, the cache database and its WAL, saved KV states,
    # verdicts, outcomes) holds prompts or answers: owner-only, whatever the login's umask.
    os.umask(0o077)
    for state in (paths.config_dir, paths.data_dir, paths.cache_dir, paths.log_dir):
        ensure_private_dir(state)
    logs.setup(paths.log_dir, verbose=args.verbose)
    path = socket_path(paths, args.socket)
    if path == paths.default_socket:  # edgeinfer's own folder; a chosen one is left as it is
        ensure_private_dir(path.parent)
    activated = systemd_sockets()
    # Fail fast on a live daemon or a token-less TCP listener before loading gigabytes.
    if not activated:  # systemd itself answers on an activated socket
        refuse_if_live(path)
    options = serve_options(
        load(paths).server, tcp=args.tcp, token_file=args.token_file, activated=activated
    )
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    settings = DaemonSettings(paths=paths, socket=path, models=models, cache=not args.no_cache)
    from rich.console import Console

    progress = cli_models.progress_bars(Console(stderr=True))
    with progress:
        app = build_app(settings, progress=progress)
    run(app, path, options, activated=activated)
    return 0


def cmd_ask(args: argparse.Namespace) -> int:
    from edgeinfer.client import Client

    paths = resolve()
    params: dict[str, object] = {"model": args.model}
    if args.max_tokens is not None:
        params["max_tokens"] = args.max_tokens
    if args.temperature is not None:
        params["temperature"] = args.temperature
    messages = [{"role": "user", "content": args.question}]
    if args.system:
        messages.insert(0, {"role": "system", "content": args.system})
    with Client(socket_path(paths, args.socket)) as client:
        for chunk in client.chat_stream(messages, **params):
            for choice in chunk.get("choices", []):
                sys.stdout.write(choice.get("delta", {}).get("content") or "")
                sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """One screen: the daemon, each model's slots, queue, speed and reuse, the cache's hits."""
    from rich.console import Console
    from rich.table import Table

    from edgeinfer.client import Client

    with Client(socket_path(resolve(), args.socket), timeout=10) as client:
        health, stats = client.health(), client.stats()
    console = Console()
    console.print(f"edgeinfer {health['version']}: {health['status']}, up {health['uptime_s']} s")
    table = Table("model", "status", "slots", "queue", "requests", "gen tok/s", "TTFT ms", "reused")
    for name, m in stats["models"].items():
        ttft = m.get("ttft_avg_s")
        status = m["status"] if not m.get("reason") else f"{m['status']}: {m['reason']}"
        if m.get("restarts"):  # its runner process crashed and came back
            status += f" (restarts: {m['restarts']})"
        table.add_row(
            name,
            status,
            f"{m.get('slots_busy', 0)}/{m.get('slots', 0)}",
            str(m.get("queue_depth", 0)),
            str(m.get("requests", 0)),
            f"{m['generation_tokens_per_s']:.1f}" if m.get("generation_tokens_per_s") else "-",
            f"{ttft * 1000:.0f}" if ttft else "-",
            f"{m.get('cached_token_ratio', 0.0):.0%}",
        )
    console.print(table)
    cache = stats.get("cache")
    if cache:
        for layer, row in cache["layers"].items():
            console.print(
                f"cache {layer}: {row['hits']} hits, {row['misses']} misses,"
                f" {row['measured']['time_saved_s']:.1f} s saved"
                f" (est. ${row['estimated']['api_cost_saved_usd']:.4f})"
            )
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    import json

    from edgeinfer.client import Client

    with Client(socket_path(resolve(), args.socket)) as client:
        print(json.dumps(client.health(), indent=2))
    return 0


def cmd_paths(args: argparse.Namespace) -> int:
    """Where edgeinfer keeps things (for curl's --unix-socket, backups, clean-ups)."""
    paths = resolve()
    rows = {
        "socket": socket_path(paths, args.socket),
        "config": paths.user_models_toml,
        "models": paths.models_dir,
        "cache": paths.cache_dir,
        "logs": paths.log_dir,
    }
    for name, value in rows.items():
        print(f"{name:<7} {value}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """What llama.cpp sees on this machine and what edgeinfer decided about it."""
    import platform
    import time
    from importlib.metadata import version

    from edgeinfer import bootstrap
    from edgeinfer.engine import llama
    from edgeinfer.engine.extra_buffers import VerdictStore, cpu_identity, verdict_key

    paths = resolve()
    cpu = cpu_identity()
    decider = llama.Loader(bootstrap.extra_buffer_verdicts(paths)).decider()
    print(f"edgeinfer  {__version__}, Python {platform.python_version()}, {platform.system()}")
    print(f"cpu        {cpu.model}")
    print(f"features   {' '.join(cpu.notable) or '(none reported)'}")
    build = f"llama-cpp-python {version('llama-cpp-python')}, libraries {decider.library[:16]}"
    print(f"llama.cpp  {build}")
    print(f"system     {llama.system_info()}")
    store: VerdictStore = decider.store
    verdicts = store.all()
    print(f"verdicts   {store.path} ({len(verdicts)} in all)")
    for v in sorted(verdicts.values(), key=lambda v: v.at):
        mine = v.key == verdict_key(decider.library, decider.cpu_flags_digest, v.quant)
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(v.at))
        where = "this build and CPU" if mine else f"another build or CPU: {v.cpu}"
        state = "on " if v.on else "off"
        print(f"  {v.quant:<8} extra buffers {state}  {v.reason} ({when}; {where})")
    print("models")
    for name, spec in bootstrap.load(paths).models.items():
        known = verdicts.get(verdict_key(decider.library, decider.cpu_flags_digest, spec.quant))
        if spec.extra_buffers != "auto":
            decided = f"{spec.extra_buffers} (set in models.toml)"
        elif known is not None:
            decided = f"{'on' if known.on else 'off'} (verdict)"
        else:
            decided = "probed at its first load"
        print(f"  {name:<12} {spec.quant or '?':<8} extra_buffers {spec.extra_buffers}: {decided}")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    """``edgeinfer cache stats|clear|export|import``: the database directly (SQLite locking
    makes that safe beside a running daemon); stats add the daemon's live savings if it runs."""
    import json

    from edgeinfer.bootstrap import load, open_cache_store
    from edgeinfer.client import Client
    from edgeinfer.errors import DaemonError

    paths = resolve()
    store = open_cache_store(paths, load(paths).cache)
    try:
        if args.cache_command == "stats":
            report: dict[str, object] = {"store": store.stats()}
            try:
                with Client(socket_path(paths, args.socket), timeout=10) as client:
                    report["layers"] = (client.stats().get("cache") or {}).get("layers")
            except DaemonError:
                report["layers"] = "no daemon running: hit and savings counters live in it"
            print(json.dumps(report, indent=2))
        elif args.cache_command == "clear":
            print(f"removed {store.clear()} entries")
        elif args.cache_command == "export":
            print(f"exported {store.export(Path(args.file))} entries to {args.file}")
        else:
            print(f"{store.import_report(Path(args.file)).summary()} from {args.file}")
    finally:
        store.close()
    return 0


def start_background_daemon(paths: Paths, path: Path, models: str | None) -> int:
    """``edgeinfer serve`` detached from this terminal (its output in the log dir); the TUI
    shows "connecting" until it answers. Returns its pid."""
    import subprocess

    cmd = [sys.executable, "-m", "edgeinfer", "serve", "--socket", str(path)]
    if models:
        cmd += ["--models", models]
    with ensure_private_file(paths.log_dir / "serve.out").open("ab") as out:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    return proc.pid


def _offer_daemon(paths: Paths, path: Path, args: argparse.Namespace) -> None:
    """No daemon on ``path``: start one if ``--start``, ask when interactive, else go on
    (the TUI keeps retrying, so a daemon started elsewhere is picked up)."""
    from edgeinfer.server.daemon import accepts

    if path.exists() and accepts(path):
        return
    start = args.start
    if start is None and sys.stdin.isatty():
        reply = input(f"No edgeinfer daemon answers on {path}. Start one now? [Y/n] ")
        start = reply.strip().lower() in ("", "y", "yes")
    if start:
        pid = start_background_daemon(paths, path, args.models)
        print(f"started `edgeinfer serve` (pid {pid}); its output: {paths.log_dir / 'serve.out'}")


def cmd_tui(args: argparse.Namespace) -> int:
    """``edgeinfer chat`` and ``edgeinfer top``: the Textual UI (imported here only, so the
    daemon side never loads textual)."""
    from edgeinfer.client import AsyncClient
    from edgeinfer.tui.app import EdgeinferApp
    from edgeinfer.tui.store import ConversationStore, default_path

    paths = resolve()
    path = socket_path(paths, args.socket)
    client = AsyncClient(path)
    if args.command == "top":
        EdgeinferApp(client, mode="top", interval=args.interval, light=args.light).run()
        return 0
    _offer_daemon(paths, path, args)
    params: dict[str, object] = {}
    if args.max_tokens is not None:
        params["max_tokens"] = args.max_tokens
    if args.temperature is not None:
        params["temperature"] = args.temperature
    store = ConversationStore(default_path(paths))
    try:
        app = EdgeinferApp(client, store=store, params=params, model=args.model, light=args.light)
        app.run()
    finally:
        store.close()
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from edgeinfer.bootstrap import catalogue_paths, real_quantizer

    paths = resolve()
    return cli_models.run(
        args, paths=paths, catalogue_paths=catalogue_paths(paths), quantizer=real_quantizer()
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgeinfer", description="Local inference daemon.")
    p.add_argument("--version", action="version", version=f"edgeinfer {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the daemon on a Unix socket")
    serve.add_argument("--models", help="comma-separated models to serve (default: catalogue)")
    serve.add_argument("--socket", help="socket path (default: the user runtime dir)")
    serve.add_argument("--no-cache", action="store_true", help="run without the response cache")
    serve.add_argument(
        "--tcp",
        metavar="HOST:PORT",
        help="also listen on TCP (needs a token: $EDGEINFER_TOKEN or --token-file)",
    )
    serve.add_argument("--token-file", help="owner-only file holding the TCP bearer token")
    serve.add_argument("-v", "--verbose", action="store_true")
    serve.set_defaults(func=cmd_serve)

    ask = sub.add_parser("ask", help="ask one question and stream the answer")
    ask.add_argument("question")
    ask.add_argument("--model", default="auto")
    ask.add_argument("--system", help="system prompt")
    ask.add_argument("--max-tokens", type=int)
    ask.add_argument("--temperature", type=number())
    ask.add_argument("--socket")
    ask.set_defaults(func=cmd_ask)

    status = sub.add_parser(
        "status", help="the daemon's models, slots, speed and cache at a glance"
    )
    status.add_argument("--socket")
    status.set_defaults(func=cmd_status)

    health = sub.add_parser("health", help="print the daemon's health")
    health.add_argument("--socket")
    health.set_defaults(func=cmd_health)

    cache = sub.add_parser("cache", help="response cache: stats, clear, export, import")
    cache_cmds = cache.add_subparsers(dest="cache_command", required=True)
    stats = cache_cmds.add_parser("stats", help="entries, sizes, hits and savings per layer")
    stats.add_argument("--socket", help="the daemon to ask for its live counters")
    cache_cmds.add_parser("clear", help="remove every entry")
    for name in ("export", "import"):
        cmd = cache_cmds.add_parser(name, help=f"{name} entries as JSONL")
        cmd.add_argument("file")
    cache.set_defaults(func=cmd_cache)

    chat = sub.add_parser("chat", help="chat in the terminal (with a live stats tab)")
    chat.add_argument("--model", default="auto", help="model to start with (auto or a tier)")
    chat.add_argument("--max-tokens", type=int, help="cap on each answer's tokens")
    chat.add_argument("--temperature", type=number())
    chat.add_argument(
        "--start",
        action=argparse.BooleanOptionalAction,
        help="start `edgeinfer serve` in the background if no daemon answers (default: ask)",
    )
    chat.add_argument("--models", help="with --start: the models the daemon serves")
    chat.add_argument("--light", action="store_true", help="light colours (F5 switches)")
    chat.add_argument("--socket")
    chat.set_defaults(func=cmd_tui)

    top = sub.add_parser("top", help="live stats: speed, slots, cache hits, savings")
    top.add_argument(
        "--interval", type=number(0.1, 60.0), default=1.0, help="seconds between updates"
    )
    top.add_argument("--light", action="store_true", help="light colours (F5 switches)")
    top.add_argument("--socket")
    top.set_defaults(func=cmd_tui)

    doctor = sub.add_parser(
        "doctor", help="CPU features, llama.cpp's build, and the extra-buffer verdicts"
    )
    doctor.set_defaults(func=cmd_doctor)

    where = sub.add_parser("paths", help="print the socket, config, model and cache paths")
    where.add_argument("--socket")
    where.set_defaults(func=cmd_paths)

    cli_models.register(sub)
    cli_router.register(sub)
    for name, action in sub.choices.items():
        if name == "models":
            action.set_defaults(func=cmd_models)
        elif name == "router":
            action.set_defaults(func=lambda a: cli_router.cmd_train(a, resolve()))
        elif name == "distill":
            action.set_defaults(func=lambda a: cli_router.cmd_distill(a, resolve()))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except EdgeInferError as exc:
        print(f"edgeinfer: error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except OSError as exc:  # a path that is a folder, a folder that is missing, no permission
        where = f": {exc.filename}" if exc.filename else ""
        print(f"edgeinfer: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except UnicodeError as exc:  # bytes on the command line or in a file that are not UTF-8
        print(f"edgeinfer: error: text that is not valid UTF-8 ({exc})", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
