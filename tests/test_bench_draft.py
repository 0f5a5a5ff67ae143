"""scripts/bench_draft.py: the accepted-run arithmetic, and the whole measurement on real
models (a model drafting for itself agrees on nearly every token; models with other
vocabularies are refused)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edgeinfer.models.store import ModelStore

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import bench_draft  # noqa: E402


@pytest.mark.parametrize(
    ("runs", "k", "expected"),
    [
        ([[True] * 6], 2, 3.0),  # every step: k accepted + the target's own token
        ([[False] * 5], 4, 1.0),  # nothing accepted: the target's token only
        ([[True, True, False, True]], 2, 2.0),  # 2 + 1, then 1 accepted as the answer ends
        ([[True, False], [True, True, True]], 3, 5 / 2),  # answers never share a step
    ],
)
def test_tokens_per_verify_step(runs: list[list[bool]], k: int, expected: float) -> None:
    assert bench_draft.per_step(runs, k) == pytest.approx(expected)


def _run(model_store: ModelStore, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, str(ROOT / "scripts" / "bench_draft.py"), *args,
            "--models-dir", str(model_store.models_dir)]  # fmt: skip
    env = {**os.environ, "EDGEINFER_MODELS_DIR": str(model_store.models_dir)}
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False, env=env)


def test_a_model_drafting_for_itself_agrees_on_nearly_every_token(model_store: ModelStore) -> None:
    model_store.ensure("tiny")
    out = _run(model_store, "--target", "tiny", "--draft", "tiny", "--prompts", "3",
               "--max-tokens", "16")  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    # A batched pass and one-token steps round differently, so a near-tie may go either way;
    # a draft read one position off would agree on a few tokens in ten.
    agreed = re.search(r"the draft agreed on ([\d.]+)%", out.stdout)
    assert agreed is not None and float(agreed.group(1)) >= 90.0, out.stdout
    per_step = dict(re.findall(r"k = (\d)\s+([\d.]+)", out.stdout))
    assert set(per_step) == {"2", "3", "4", "6"}
    # all accepted: k + 1 tokens a step, less only where an answer ends inside a step
    assert all(1.0 < float(v) <= int(k) + 1 for k, v in per_step.items()), per_step


def test_a_draft_with_another_vocabulary_is_refused(model_store: ModelStore) -> None:
    model_store.ensure("tiny")
    model_store.ensure("small")
    out = _run(model_store, "--target", "small", "--draft", "tiny", "--prompts", "1")
    assert out.returncode == 1
    assert "do not share a vocabulary" in out.stderr
