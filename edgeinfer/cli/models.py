"""``edgeinfer models ...``: list, check, pull, rm and quantize models in the store.

The top-level CLI (``edgeinfer/cli.py``) calls :func:`register` to add the ``models`` command and
:func:`run` to execute it, passing resolved paths and the engine's quantizer. This module owns
the terminal for these commands: tables go to stdout, progress bars and errors to stderr, and
every :class:`EdgeInferError` becomes one ``edgeinfer: error: ...`` message and exit code 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

from rich.console import Console
from rich.filesize import decimal
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from edgeinfer.config.load import check_catalogue, load_catalogue
from edgeinfer.config.schema import QuantizeSource
from edgeinfer.errors import EdgeInferError
from edgeinfer.models import ModelStore, Quantizer, default_quant_name
from edgeinfer.paths import Paths

FTYPES: tuple[str, ...] = get_args(QuantizeSource.model_fields["ftype"].annotation)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``models`` and its subcommands to the top-level parser's subparsers."""
    models = sub.add_parser("models", help="list, check, pull, remove and quantize models")
    cmds = models.add_subparsers(dest="models_command", metavar="COMMAND", required=True)
    cmds.add_parser("list", help="show catalogue models and what is in the store")
    cmds.add_parser("check", help="validate the catalogue files and verify every pulled model")
    pull = cmds.add_parser("pull", help="fetch a model into the store and verify it")
    pull.add_argument("name")
    pull.add_argument("--force", action="store_true", help="fetch again even if verified")
    rm = cmds.add_parser("rm", help="delete a model from the store")
    rm.add_argument("name")
    quant = cmds.add_parser("quantize", help="make a new model by quantizing a pullable one")
    quant.add_argument("src", help="the model to quantize (pulled first if needed)")
    quant.add_argument("--type", dest="ftype", default="Q8_0", choices=FTYPES)
    quant.add_argument("--name", default=None, help="name of the new model (default SRC-q8)")
    quant.add_argument("--force", action="store_true", help="quantize again even if present")


@dataclass(frozen=True)
class _Env:
    """What every subcommand needs; built once per run."""

    paths: Paths
    catalogue_paths: list[Path]
    quantizer: Quantizer | None
    out: Console
    err: Console

    def store(self, progress: Progress | None = None) -> ModelStore:
        catalogue = load_catalogue(self.catalogue_paths)
        return ModelStore(
            self.paths.models_dir, catalogue, quantizer=self.quantizer, progress=progress
        )

    def progress(self) -> Progress:
        return progress_bars(self.err)


def progress_bars(console: Console) -> Progress:
    """Download-style bars on ``console`` (stderr), shown only when it is a terminal."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,  # bars are for people; logs get the result line
    )


def run(
    args: argparse.Namespace,
    *,
    paths: Paths,
    catalogue_paths: list[Path],
    quantizer: Quantizer | None,
) -> int:
    """Execute ``edgeinfer models <command>``; returns the process exit code."""
    env = _Env(paths, list(catalogue_paths), quantizer, Console(), Console(stderr=True))
    try:
        return _COMMANDS[args.models_command](args, env)
    except EdgeInferError as exc:
        print(f"edgeinfer: error: {exc.message}", file=sys.stderr)
        return 1


def _list(args: argparse.Namespace, env: _Env) -> int:
    store = env.store()
    table = Table("name", "quant", "size", "status", "serve", "description")
    errors = []
    for info in store.list():
        size = info.size or info.spec.size
        table.add_row(
            Text(info.name),
            Text(info.spec.quant),
            Text(decimal(size) if size else "?"),
            Text(info.status, style=_STATUS_STYLE.get(info.status, "")),
            Text("yes" if info.spec.serve else "no"),
            Text(info.spec.description),
        )
        if info.error:
            errors.append(f"{info.name}: {info.error}")
    env.out.print(table)
    for line in errors:
        print(line)
    return 0


_STATUS_STYLE = {"verified": "green", "corrupt": "bold red", "missing": "dim"}


def _check(args: argparse.Namespace, env: _Env) -> int:
    files = [p for i, p in enumerate(env.catalogue_paths) if i == 0 or p.exists()]
    catalogue, problems = check_catalogue(files)
    for problem in problems:
        print(problem)
    pulled = 0
    if catalogue is not None:
        with env.progress() as progress:
            store = ModelStore(env.paths.models_dir, catalogue, progress=progress)
            infos = store.list(verify=True)
        for info in infos:
            if info.error:
                problems.append(info.error)
                print(f"{info.name}: {info.error}")
            elif info.pulled:
                pulled += 1
    if problems:
        print(f"{len(problems)} problem(s) found", file=sys.stderr)
        return 1
    assert catalogue is not None
    print(f"ok: {len(catalogue.models)} catalogue models, {pulled} pulled and verified")
    return 0


def _pull(args: argparse.Namespace, env: _Env) -> int:
    with env.progress() as progress:
        store = env.store(progress)
        path = store.pull(args.name, force=args.force)
        digest = store.digest(args.name)
    print(f"{args.name}: {path} (sha256 {digest})")
    return 0


def _rm(args: argparse.Namespace, env: _Env) -> int:
    removed = env.store().remove(args.name)
    print(f"removed {args.name}" if removed else f"{args.name} was not in the store")
    return 0


def _quantize(args: argparse.Namespace, env: _Env) -> int:
    name = args.name or default_quant_name(args.src, args.ftype)
    with env.progress() as progress:
        store = env.store(progress)
        path = store.quantize(args.src, args.ftype, name=name, force=args.force)
    print(
        f"{name}: {path} ({args.ftype} from {args.src}; a derived model is only as accurate as "
        "its source file)"
    )
    return 0


_COMMANDS: dict[str, Callable[[argparse.Namespace, _Env], int]] = {
    "list": _list,
    "check": _check,
    "pull": _pull,
    "rm": _rm,
    "quantize": _quantize,
}
