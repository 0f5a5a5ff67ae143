"""INT8: `tiny-q8` derived from `tiny` by llama.cpp's real quantizer, then served for real."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import MODELS_DIR, start_daemon

pytestmark = pytest.mark.real


def test_pull_quantizes_tiny_to_q8_and_it_serves(tiny_path: Path) -> None:
    env = {**os.environ, "EDGEINFER_MODELS_DIR": str(MODELS_DIR)}
    out = subprocess.run(
        [sys.executable, "-m", "edgeinfer", "models", "pull", "tiny-q8"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    gguf = MODELS_DIR / "tiny-q8" / "model.gguf"
    assert gguf.read_bytes()[:4] == b"GGUF"
    # Q8_0 of SmolLM2-135M, as measured when the catalogue entry was made
    assert gguf.stat().st_size == 144_811_072
    d = start_daemon("--models", "tiny-q8")
    try:
        with d.client() as c:
            r = c.post(
                "/v1/chat/completions",
                json={
                    "model": "tiny-q8",
                    "max_tokens": 16,
                    "temperature": 0,
                    "messages": [{"role": "user", "content": "What is the capital of France?"}],
                },
            )
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["message"]["content"]
            assert r.json()["edgeinfer"]["model"] == "tiny-q8"
    finally:
        d.stop()
