"""Per-model default sampling: [models.NAME.sampling], the GGUF's general.sampling.*, and how
defaults meet the response cache (keys hold effective settings; only a default temperature of 0
makes a request without one deterministic)."""

from __future__ import annotations

import shutil
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgeinfer.cache.key import cache_mode
from edgeinfer.config.load import bundled_catalogue_path, check_catalogue
from edgeinfer.core.options import GenerateOptions
from edgeinfer.core.values import Sampling
from edgeinfer.server.schemas import ChatCompletionRequest
from edgeinfer.service.sampling import DEFAULTABLE, file_defaults, gguf_defaults, with_defaults
from tests.conftest import Daemon, short_socket_dir, start_daemon


def _catalogue(tmp_path: Path, text: str) -> tuple[Any, list[str]]:
    user = tmp_path / "models.toml"
    user.write_text(text)
    return check_catalogue([bundled_catalogue_path(), user])


def test_bundled_tiers_ship_tuned_defaults() -> None:
    catalogue, problems = check_catalogue([bundled_catalogue_path()])
    assert catalogue is not None, problems
    tiny = catalogue.models["tiny"].sampling.given()
    assert 0.0 < tiny["temperature"] < 1.0 and tiny["top_k"] == 40 and tiny["min_p"] == 0.05
    for qwen in ("small", "large"):
        given = catalogue.models[qwen].sampling.given()
        assert given == {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "repeat_penalty": 1.05}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[models.tiny.sampling]\ntemperatur = 0.1\n",
            "models.tiny.sampling.temperatur: unknown key",
        ),
        ("[models.tiny.sampling]\ntemperature = 3.0\n", "models.tiny.sampling.temperature"),
        ("[models.tiny.sampling]\ntop_p = 0\n", "models.tiny.sampling.top_p"),
        ("[models.tiny.sampling]\ntop_k = -1\n", "models.tiny.sampling.top_k"),
        ("[models.tiny.sampling]\nmin_p = 1.5\n", "models.tiny.sampling.min_p"),
        ("[models.tiny.sampling]\nrepeat_penalty = 0\n", "models.tiny.sampling.repeat_penalty"),
        ("[models.tiny.sampling]\npresence_penalty = 3\n", "sampling.presence_penalty"),
        ("[models.tiny.sampling]\nseed = 1\n", "models.tiny.sampling.seed"),
    ],
)
def test_sampling_table_is_strict(tmp_path: Path, text: str, expected: str) -> None:
    catalogue, problems = _catalogue(tmp_path, text)
    assert catalogue is None
    assert any(expected in p for p in problems), problems


def test_user_sampling_overrides_bundled_key_by_key(tmp_path: Path) -> None:
    catalogue, problems = _catalogue(tmp_path, "[models.tiny.sampling]\ntemperature = 0\n")
    assert catalogue is not None, problems
    given = catalogue.models["tiny"].sampling.given()
    assert given["temperature"] == 0 and given["top_k"] == 40 and given["top_p"] == 0.9


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        ({}, {}),
        (
            {"general.sampling.temp": 0.6, "general.sampling.top_k": 20},
            {"temperature": 0.6, "top_k": 20},
        ),
        (
            {"general.sampling.top_p": 0.95, "general.sampling.min_p": 0.0},
            {"top_p": 0.95, "min_p": 0.0},
        ),
        ({"general.sampling.penalty_repeat": 1.1}, {"repeat_penalty": 1.1}),
        ({"general.sampling.temp": "hot", "general.sampling.top_k": True}, {}),  # wrong types
        ({"general.sampling.temp": 9.0, "general.sampling.top_p": 0.0}, {}),  # out of range
        ({"general.sampling.temp": float("nan")}, {}),
    ],
)
def test_gguf_metadata_defaults(meta: dict[str, Any], expected: dict[str, Any]) -> None:
    assert gguf_defaults(meta) == expected


def _gguf(path: Path, kv: dict[str, float | int]) -> Path:
    """A header-only GGUF with float32 / uint32 metadata values."""
    out = b"GGUF" + struct.pack("<IQQ", 3, 0, len(kv))
    for key, value in kv.items():
        out += struct.pack("<Q", len(key)) + key.encode()
        out += (
            struct.pack("<If", 6, value)
            if isinstance(value, float)
            else struct.pack("<II", 4, value)
        )
    path.write_bytes(out)
    return path


def test_file_defaults_read_the_gguf_header(tmp_path: Path, tiny_path: Path) -> None:
    path = _gguf(tmp_path / "m.gguf", {"general.sampling.temp": 0.5, "general.sampling.top_k": 7})
    assert file_defaults(path) == {"temperature": 0.5, "top_k": 7}
    assert file_defaults(tmp_path / "missing.gguf") == {}
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf")
    assert file_defaults(tmp_path / "junk.gguf") == {}
    assert file_defaults(tiny_path) == {}  # SmolLM2's file carries none: models.toml does


def _options(**fields: Any) -> GenerateOptions:
    body = {"messages": [{"role": "user", "content": "hi"}], **fields}
    return ChatCompletionRequest.model_validate(body).options()


def test_request_fields_win_and_the_rest_default() -> None:
    opts = _options(temperature=0.9, top_k=5)
    assert opts.default_sampling == set(DEFAULTABLE) - {"temperature", "top_k"}
    done = with_defaults(opts, {"temperature": 0.1, "top_k": 40, "top_p": 0.8, "min_p": 0.05})
    s = done.sampling
    assert (s.temperature, s.top_k, s.top_p, s.min_p) == (0.9, 5, 0.8, 0.05)
    assert s.repeat_penalty == Sampling().repeat_penalty  # no default anywhere: neutral
    assert done.default_sampling == frozenset()


@pytest.mark.parametrize(
    ("request_fields", "defaults", "mode"),
    [
        ({}, {"temperature": 0.2}, "off"),  # sampled by default: not cached
        ({}, {"temperature": 0.0}, "semantic"),  # the model's default is greedy
        ({}, {}, "off"),  # neutral default, temperature 1
        ({"temperature": 0}, {"temperature": 0.7}, "semantic"),  # the request's own wins
        ({"seed": 3}, {"temperature": 0.7}, "semantic"),
    ],
)
def test_cache_mode_sees_the_effective_temperature(
    request_fields: dict[str, Any], defaults: dict[str, float], mode: str
) -> None:
    opts = with_defaults(_options(**request_fields), defaults)
    assert cache_mode(None, opts.sampling.temperature, opts.sampling.seed) == mode


def test_cache_keys_hold_effective_sampling() -> None:
    defaults = {"temperature": 0.2, "top_k": 40}
    implicit = with_defaults(_options(), defaults).key_fields()
    explicit = with_defaults(_options(temperature=0.2, top_k=40), defaults).key_fields()
    other = with_defaults(_options(), {"temperature": 0.3, "top_k": 40}).key_fields()
    assert implicit == explicit  # the same effective settings: the same key
    assert implicit != other
    # not resolved yet (model "auto"): "left out" is keyed apart from "set to 1.0"
    assert _options().key_fields() != _options(**dict.fromkeys(["temperature"], 1.0)).key_fields()


@pytest.fixture(scope="module")
def greedy_daemon(tiny_path: Path) -> Iterator[Daemon]:
    """tiny with a default temperature of 0, from the user's models.toml."""
    home = short_socket_dir() / "home"
    config = home / "config" / "models.toml"
    config.parent.mkdir(parents=True)
    config.write_text("[models.tiny.sampling]\ntemperature = 0\n")
    d = start_daemon("--models", "tiny", home=home)
    yield d
    d.stop()
    shutil.rmtree(d.socket.parent, ignore_errors=True)


QUESTION = {"model": "tiny", "max_tokens": 24, "messages": [{"role": "user", "content": "Hi!"}]}


@pytest.mark.real
def test_configured_greedy_default_is_deterministic_and_cached(greedy_daemon: Daemon) -> None:
    with greedy_daemon.client() as c:
        first = c.post("/v1/chat/completions", json=QUESTION).json()
        second = c.post("/v1/chat/completions", json=QUESTION).json()
        sampled = c.post("/v1/chat/completions", json={**QUESTION, "temperature": 0.8}).json()
    assert first["edgeinfer"]["cache"]["layer"] is None
    assert second["edgeinfer"]["cache"]["layer"] == "exact"
    assert second["choices"][0]["message"] == first["choices"][0]["message"]
    assert sampled["edgeinfer"]["cache"]["layer"] is None  # the request's temperature wins


@pytest.mark.real
def test_bundled_default_is_sampled_so_not_cached(daemon: Daemon) -> None:
    """tiny's bundled default temperature is 0.2: a request without one is not deterministic,
    and with a seed it gives exactly what the same settings sent explicitly give."""
    off = {"edgeinfer": {"cache": "off"}, "seed": 11}
    explicit = {"temperature": 0.2, "top_k": 40, "top_p": 0.9, "min_p": 0.05}
    with daemon.client() as c:
        plain = [c.post("/v1/chat/completions", json=QUESTION).json() for _ in range(2)]
        implicit = c.post("/v1/chat/completions", json={**QUESTION, **off}).json()
        spelled = c.post(
            "/v1/chat/completions", json={**QUESTION, **off, **explicit, "repeat_penalty": 1.1}
        ).json()
    assert [p["edgeinfer"]["cache"]["layer"] for p in plain] == [None, None]
    assert implicit["choices"][0]["message"] == spelled["choices"][0]["message"]
