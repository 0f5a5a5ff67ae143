"""scripts/eval_router.py end to end on the small real models: the measuring tool of the router
target must itself run, on every phase, interleaved or not."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgeinfer.models.store import ModelStore

pytestmark = pytest.mark.real

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("interleave", ["2", "0"])
def test_eval_router_reports_every_phase(
    model_store: ModelStore, tmp_path: Path, interleave: str
) -> None:
    model_store.ensure("tiny")
    model_store.ensure("tiny-q8")
    outcomes = tmp_path / "outcomes.jsonl"
    argv = [
        sys.executable,
        str(ROOT / "scripts" / "eval_router.py"),
        "--tiers", "tiny,tiny-q8",
        "--phases", "tiers,cascade",
        "--limit", "3",
        "--max-tokens", "8",
        "--interleave", interleave,
        "--models-dir", str(model_store.models_dir),
        "--outcomes", str(outcomes),
    ]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    table = {line.split()[0]: line.split() for line in out.stdout.splitlines() if line.strip()}
    for phase in ("tiny", "tiny-q8", "cascade"):
        assert phase in table, out.stdout
    assert table["tiny-q8"][4] == "100.0%"  # the reference: its own time
    rows = [json.loads(line) for line in outcomes.read_text().splitlines()]
    by_phase: dict[str, list[str]] = {}
    for row in rows:
        by_phase.setdefault(row["phase"], []).append(row["id"])
    # every phase answered the same three prompts, in the set's order
    assert len({tuple(ids) for ids in by_phase.values()}) == 1
    assert sorted(by_phase) == ["cascade", "tiny", "tiny-q8"] and len(by_phase["tiny"]) == 3
    assert all(row["route"]["route"] == "cascade" for row in rows if row["phase"] == "cascade")
