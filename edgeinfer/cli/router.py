"""``edgeinfer router train`` and ``edgeinfer distill export``.

``router train`` fits the router's per-tier classifier on labelled outcomes: files given on the
command line (JSONL with ``prompt``, ``tier`` and ``correct``, as ``scripts/eval_router.py
--outcomes`` writes) plus the cascade verdicts the daemon logged. The weights go to the data dir,
where the daemon finds them at its next start; the bundled weights stay untouched.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path

from edgeinfer.cli import args as cli_args
from edgeinfer.core.embedding import MINILM_VECTORS
from edgeinfer.errors import ConfigError
from edgeinfer.paths import Paths, make_private_dirs
from edgeinfer.routing.classifier import Outcome, train
from edgeinfer.routing.router import OUTCOMES_KEEP


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    router = sub.add_parser("router", help="train the router's classifier")
    cmds = router.add_subparsers(dest="router_command", metavar="COMMAND", required=True)
    fit = cmds.add_parser("train", help="fit the per-tier classifier from labelled outcomes")
    fit.add_argument("outcomes", nargs="*", type=Path, help="JSONL files: prompt, tier, correct")
    fit.add_argument("--no-log", action="store_true", help="ignore the daemon's cascade log")
    fit.add_argument("--out", type=Path, help="where to write the weights (default: data dir)")
    fit.add_argument(
        "--l2", type=cli_args.number(0.0, above=True), default=2.0, help="regularisation strength"
    )
    distill = sub.add_parser("distill", help="export captured large-tier answers")
    dcmds = distill.add_subparsers(dest="distill_command", metavar="COMMAND", required=True)
    export = dcmds.add_parser("export", help="write chat-format JSONL for fine-tuning")
    export.add_argument("--out", type=Path, help="file to write (default: stdout)")
    export.add_argument("--tier", help="only answers of this tier")


def read_outcomes(paths: Iterable[Path]) -> list[Outcome]:
    """Outcomes from JSONL files; a line without the three fields is an error naming it."""
    found: list[Outcome] = []
    for path in paths:
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                found.append(Outcome(str(row["prompt"]), str(row["tier"]), bool(row["correct"])))
            except (ValueError, KeyError, TypeError) as exc:
                raise ConfigError(
                    f"{path}:{number}: expected JSON with prompt, tier and correct ({exc})"
                ) from exc
    return found


def cmd_train(args: argparse.Namespace, paths: Paths) -> int:
    from edgeinfer.embed.onnx import open_minilm  # onnxruntime only when training

    sources = list(args.outcomes)
    if not args.no_log:  # the daemon's log and its rotated files, oldest first
        log = paths.router_outcomes
        rotated = [log.with_name(f"{log.name}.{n}") for n in range(OUTCOMES_KEEP, 0, -1)]
        sources += [p for p in [*rotated, log] if p.exists()]
    outcomes = read_outcomes(sources)
    if not outcomes:
        raise ConfigError("no outcomes to train on: give JSONL files or let the daemon log some")
    embedder = open_minilm(paths.models_dir)
    classifier = train(
        outcomes,
        embedder.embed,
        l2=args.l2,
        meta={"sources": [str(p) for p in sources], "l2": args.l2, "embedder": MINILM_VECTORS},
    )
    out = args.out or paths.router_weights
    make_private_dirs(out.parent)
    classifier.save(out)
    tiers = ", ".join(classifier.tiers)
    print(f"trained on {len(outcomes)} outcomes ({tiers}); weights written to {out}")
    print("restart the daemon to use them")
    return 0


def cmd_distill(args: argparse.Namespace, paths: Paths) -> int:
    from edgeinfer.routing.distill import DistillLog

    if not paths.distill_db.exists():
        raise ConfigError(
            f"nothing captured yet ({paths.distill_db} does not exist);"
            " set `distill = true` under [router] in models.toml"
        )
    log = DistillLog(paths.distill_db)
    try:
        if args.out is None:
            n = log.export(sys.stdout, tier=args.tier)
        else:
            with args.out.open("w") as fh:
                n = log.export(fh, tier=args.tier)
    finally:
        log.close()
    print(f"exported {n} examples", file=sys.stderr)
    return 0
