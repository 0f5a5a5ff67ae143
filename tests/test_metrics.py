"""GET /metrics (Prometheus text) and `edgeinfer status`, against the real daemon."""

from __future__ import annotations

import subprocess
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Daemon

pytestmark = pytest.mark.real


def scrape(daemon: Daemon) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    with daemon.client() as c:
        r = c.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_metrics_count_what_the_daemon_did(daemon: Daemon) -> None:
    before = scrape(daemon)
    with daemon.client() as c:
        body = {
            "model": "tiny",
            "max_tokens": 8,
            "edgeinfer": {"cache": "off"},
            "messages": [{"role": "user", "content": "Count to three."}],
        }
        assert c.post("/v1/chat/completions", json=body).status_code == 200
        stats = c.get("/stats").json()["models"]["tiny"]
    after = scrape(daemon)
    tiny = (("model", "tiny"),)
    assert after["edgeinfer_requests_total"][tiny] == before["edgeinfer_requests_total"][tiny] + 1
    assert after["edgeinfer_generated_tokens_total"][tiny] == stats["generated_tokens"]
    ttft_count = after["edgeinfer_time_to_first_token_seconds_count"][tiny]
    assert (
        ttft_count
        == before.get("edgeinfer_time_to_first_token_seconds_count", {}).get(tiny, 0.0) + 1
    )
    assert after["edgeinfer_inter_token_seconds_count"][tiny] >= 1
    assert after["edgeinfer_model_ready"][tiny] == 1.0
    assert after["edgeinfer_slots"][tiny] == stats["slots"]
    assert after["edgeinfer_slots_busy"][tiny] == 0.0
    assert after["edgeinfer_process_resident_memory_bytes"][()] > 50e6
    assert any(("layer", "exact") in k for k in after["edgeinfer_cache_misses_total"])


def test_status_command(daemon: Daemon) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "edgeinfer", "status", "--socket", str(daemon.socket)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "tiny" in out.stdout and "ready" in out.stdout
    assert "cache exact:" in out.stdout
