"""llama.cpp's extra buffer types (AMX, repacked weights): probe once per machine, remember.

The decision logic runs over real child processes that crash, hang or answer as a llama.cpp
build would; the real-model tests then run the real probe on ``tiny`` and load with its verdict
in this process (a wrong "on" verdict on a CPU whose build crashes would kill this test run).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from edgeinfer.core.values import Sampling
from edgeinfer.engine.base import BatchItem, EngineParams
from edgeinfer.engine.extra_buffers import (
    CpuIdentity,
    ExtraBuffers,
    ProbeResult,
    VerdictStore,
    cpu_identity,
    quant_type,
    run_probe,
)
from tests.conftest import start_daemon

CPU = CpuIdentity(model="Test CPU (x86_64)", flags=("avx2", "amx_tile", "amx_int8"))
CRASH = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGILL)"]
WORKS = [sys.executable, "-c", "pass"]
FAILS = [sys.executable, "-c", "raise SystemExit(3)"]


class CountingProbe:
    """run_probe over real child processes, counting the calls."""

    def __init__(self, timeout: float = 60.0) -> None:
        self.calls = 0
        self.timeout = timeout

    def __call__(self, argv: Sequence[str]) -> ProbeResult:
        self.calls += 1
        return run_probe(argv, timeout=self.timeout)


def decider(store: VerdictStore, probe: CountingProbe, cpu: CpuIdentity = CPU) -> ExtraBuffers:
    return ExtraBuffers(store, library="0" * 64, probe=probe, cpu=cpu)


def test_a_probe_killed_by_sigill_turns_them_off_and_the_verdict_is_remembered(
    tiny_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "verdicts.json"
    probe = CountingProbe()
    with caplog.at_level(logging.WARNING, logger="edgeinfer.engine"):
        assert (
            decider(VerdictStore(path), probe).use("auto", tiny_path, CRASH, name="tiny") is False
        )
    assert probe.calls == 1
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "tiny" in lines[0] and "SIGILL" in lines[0], lines
    saved = json.loads(path.read_text())
    (verdict,) = saved.values()
    assert verdict["on"] is False and "SIGILL" in verdict["reason"] and verdict["quant"] == "Q4_1"
    assert path.stat().st_mode & 0o777 == 0o600

    # a later start (a fresh store over the same file) pays nothing, whatever the probe would say
    again = CountingProbe()
    assert decider(VerdictStore(path), again).use("auto", tiny_path, WORKS) is False
    assert again.calls == 0


def test_a_probe_that_decodes_turns_them_on(tiny_path: Path, tmp_path: Path) -> None:
    store, probe = VerdictStore(tmp_path / "v.json"), CountingProbe()
    assert decider(store, probe).use("auto", tiny_path, WORKS) is True
    assert decider(store, probe).use("auto", tiny_path, CRASH) is True
    assert probe.calls == 1


@pytest.mark.parametrize("argv", [FAILS, [sys.executable, "-c", "import time; time.sleep(30)"]])
def test_an_inconclusive_probe_loads_safely_and_asks_again_next_time(
    argv: list[str], tiny_path: Path, tmp_path: Path
) -> None:
    store, probe = VerdictStore(tmp_path / "v.json"), CountingProbe(timeout=2.0)
    assert decider(store, probe).use("auto", tiny_path, argv) is False
    assert store.all() == {}
    assert decider(store, probe).use("auto", tiny_path, WORKS) is True
    assert probe.calls == 2


def test_on_and_off_are_obeyed_without_a_probe(tiny_path: Path, tmp_path: Path) -> None:
    probe = CountingProbe()
    d = decider(VerdictStore(tmp_path / "v.json"), probe)
    assert d.use("on", tiny_path, CRASH) is True
    assert d.use("off", tiny_path, WORKS) is False
    assert probe.calls == 0


def test_verdicts_are_keyed_on_cpu_library_and_quant(
    tiny_path: Path, tmp_path: Path, model_store: object
) -> None:
    store, probe = VerdictStore(tmp_path / "v.json"), CountingProbe()
    assert decider(store, probe).use("auto", tiny_path, CRASH) is False
    other_cpu = CpuIdentity(model="Test CPU (x86_64)", flags=("avx2",))
    assert decider(store, probe, other_cpu).use("auto", tiny_path, WORKS) is True
    rebuilt = ExtraBuffers(store, library="1" * 64, probe=probe, cpu=CPU)
    assert rebuilt.use("auto", tiny_path, WORKS) is True
    q8 = model_store.ensure("tiny-q8")  # type: ignore[attr-defined]
    assert quant_type(q8) == "Q8_0"
    assert decider(store, probe).use("auto", q8, WORKS) is True
    assert probe.calls == 4 and len(store.all()) == 4


def test_a_damaged_verdict_file_costs_one_probe_not_a_start(
    tiny_path: Path, tmp_path: Path
) -> None:
    path = tmp_path / "v.json"
    path.write_text("{not json")
    probe = CountingProbe()
    assert decider(VerdictStore(path), probe).use("auto", tiny_path, WORKS) is True
    assert probe.calls == 1
    assert len(json.loads(path.read_text())) == 1


@pytest.mark.parametrize(
    ("cpuinfo", "model", "flag"),
    [
        (
            "processor\t: 0\nmodel name\t: Intel(R) Xeon(R)\nflags\t\t: fpu avx2 amx_tile\n",
            "Intel(R) Xeon(R)",
            "amx_tile",
        ),
        ("processor\t: 0\nFeatures\t: fp asimd asimddp i8mm\nCPU part\t: 0xd0c\n", "", "i8mm"),
    ],
)
def test_cpu_identity_reads_x86_and_arm_cpuinfo(
    cpuinfo: str, model: str, flag: str, tmp_path: Path
) -> None:
    f = tmp_path / "cpuinfo"
    f.write_text(cpuinfo)
    cpu = cpu_identity(f)
    assert cpu.model.startswith(model) and flag in cpu.flags and flag in cpu.notable


# --- the real probe, the real engine --------------------------------------------------------


@pytest.mark.real
def test_the_real_probe_on_tiny_agrees_with_a_direct_run_and_the_engine_loads_with_it(
    tiny_path: Path, tmp_path: Path
) -> None:
    from edgeinfer.engine.llama import Loader, probe_argv

    params = EngineParams(n_ctx=256, slots=1, name="tiny")
    loader = Loader(tmp_path / "v.json")
    engine = loader(tiny_path, params)
    try:
        (verdict,) = loader.decider().store.all().values()
        assert engine.info.extra_buffers is verdict.on
        tokens = engine.tokenize("Hello there", add_special=True)
        engine.decode([BatchItem(0, i, t, i == len(tokens) - 1) for i, t in enumerate(tokens)])
        sampler = engine.new_sampler(Sampling(temperature=0.0))
        assert 0 <= engine.sample(sampler, len(tokens) - 1) < engine.info.n_vocab
        engine.free_sampler(sampler)
    finally:
        engine.close()
    direct = subprocess.run(probe_argv(tiny_path, params), capture_output=True, timeout=300)
    assert (direct.returncode == 0) is verdict.on, direct.stderr[-2000:]
    if not verdict.on:
        assert direct.returncode < 0  # a crash, not a failure to load


@pytest.mark.real
def test_the_daemon_probes_once_and_a_restart_pays_nothing(tiny_path: Path) -> None:
    d = start_daemon("--models", "tiny")
    try:
        with d.client() as c:
            r = c.post("/v1/completions", json={"model": "tiny", "prompt": "Hi", "max_tokens": 4})
            assert r.status_code == 200, r.text
            used = c.get("/stats").json()["models"]["tiny"]["extra_buffers"]
    finally:
        d.stop()
    verdicts = d.home / "cache" / "extra_buffers.json"
    (saved,) = json.loads(verdicts.read_text()).values()
    assert saved["on"] is used and saved["quant"] == "Q4_1"
    stamp = verdicts.stat().st_mtime_ns

    doctor = subprocess.run(
        [sys.executable, "-m", "edgeinfer", "doctor"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "EDGEINFER_HOME": str(d.home)},
    )
    assert doctor.returncode == 0, doctor.stderr
    assert "this build and CPU" in doctor.stdout and "Q4_1" in doctor.stdout
    assert f"extra_buffers auto: {'on' if used else 'off'} (verdict)" in doctor.stdout

    time.sleep(0.05)
    again = start_daemon("--models", "tiny", home=d.home)
    try:
        with again.client() as c:
            r = c.post("/v1/completions", json={"model": "tiny", "prompt": "Hi", "max_tokens": 4})
            assert r.status_code == 200, r.text
            assert c.get("/stats").json()["models"]["tiny"]["extra_buffers"] is used
    finally:
        again.stop()
    assert verdicts.stat().st_mtime_ns == stamp
    assert "extra buffer types" not in again.output()


def test_a_bad_setting_is_a_config_error(tmp_path: Path) -> None:
    from edgeinfer.config.load import load_catalogue
    from edgeinfer.errors import ConfigError

    f = tmp_path / "models.toml"
    f.write_text('[models.x]\nextra_buffers = "maybe"\nsource = { type = "path", path = "/x" }\n')
    with pytest.raises(ConfigError, match="extra_buffers"):
        load_catalogue([f])
