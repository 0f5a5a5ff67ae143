"""scripts/bench_workload.py: the trace it builds keeps its promises (mix, order, labels), and
the whole benchmark runs end to end on the real tiny model, both sides, and reports."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from edgeinfer.models.store import ModelStore

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import bench_workload  # noqa: E402

ITEMS = [
    {"prompt": f"What is {n} plus {n}? Answer with the number.", "answer": rf"\b{2 * n}\b"}
    for n in range(1, 120)
]
DOCS = [{"document": f"Note {n}. The key is kept in drawer {n}.", "question": "Which drawer?",
         "answer": str(n)} for n in range(5)]  # fmt: skip


def test_trace_mixes_kinds_and_asks_again_only_after_the_original() -> None:
    trace = bench_workload.build_trace(ITEMS, DOCS, sessions=105, seed=3, gap=8)
    kinds = Counter(s.kind for s in trace)
    assert sum(kinds.values()) == 105
    assert kinds["faq"] == 45 and kinds["conversation"] == 15 and kinds["document"] == 15
    assert (
        kinds["repeat"] + kinds["reworded"] == 30 and abs(kinds["repeat"] - kinds["reworded"]) <= 1
    )
    faqs = [s for s in trace if s.kind == "faq"]
    assert sum(s.system is not None for s in faqs) == 15  # a third under the shared prompt
    for i, session in enumerate(trace):
        if session.kind == "repeat":
            original = next(f for f in faqs if f.turns[0] == session.turns[0])
            assert i - trace.index(original) >= 8
        if session.kind == "reworded":
            original = next(f for f in faqs if f.turns[0].answer == session.turns[0].answer)
            assert session.turns[0].content != original.turns[0].content
            assert original.turns[0].content[1:] in session.turns[0].content
            assert i - trace.index(original) >= 8
    for session in trace:
        for turn in session.turns:  # every turn of the built trace is labelled
            assert turn.answer is not None
        if session.kind == "conversation":
            assert len(session.turns) == 3
            for turn in session.turns:
                item = next(it for it in ITEMS if turn.content.endswith(it["prompt"]))
                assert turn.answer == item["answer"]
    same = bench_workload.build_trace(ITEMS, DOCS, sessions=105, seed=3, gap=8)
    assert [s.as_json() for s in same] == [s.as_json() for s in trace]


def test_scoring_uses_the_regex_or_agreement_with_the_baseline() -> None:
    labelled = bench_workload.Turn("q", r"\b4\b")
    assert bench_workload.correct(labelled, "It is 4.", "whatever")
    assert not bench_workload.correct(labelled, "It is 44.", "It is 4.")
    free = bench_workload.Turn("q", None)
    assert bench_workload.correct(free, "Paris!", "paris")
    assert not bench_workload.correct(free, "Lyon", "Paris")


@pytest.mark.real
def test_the_benchmark_runs_both_sides_and_reports(model_store: ModelStore, tmp_path: Path) -> None:
    model_store.ensure("tiny")
    data = tmp_path / "items.jsonl"
    data.write_text("".join(json.dumps(item) + "\n" for item in ITEMS[:30]))
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps(doc) + "\n" for doc in DOCS))
    trace = tmp_path / "trace.jsonl"
    argv = [
        sys.executable, str(ROOT / "scripts" / "bench_workload.py"),
        "--data", str(data), "--docs", str(docs), "--sessions", "8", "--gap", "2",
        "--clients", "2", "--max-tokens", "8", "--large", "tiny", "--models", "tiny",
        "--models-dir", str(model_store.models_dir), "--write-trace", str(trace),
    ]  # fmt: skip
    env = {**os.environ, "EDGEINFER_MODELS_DIR": str(model_store.models_dir)}
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    requests = sum(len(json.loads(line)["turns"]) for line in trace.read_text().splitlines())
    baseline = re.search(r"baseline: tiny via Llama, 1 at a time\s+(\d+)/(\d+)", out.stdout)
    edge = re.search(r"edgeinfer: auto, 2 clients\s+(\d+)/(\d+)", out.stdout)
    assert baseline and edge, out.stdout
    assert int(baseline[2]) == int(edge[2]) == requests
    assert "Where the saving came from" in out.stdout and "answered by:" in out.stdout
    # every request was answered by a model or the cache, and the counts add up
    served = re.search(r"answered by: (.*)", out.stdout)
    assert served is not None
    assert sum(int(part.split()[-1]) for part in served[1].split(", ")) == requests
