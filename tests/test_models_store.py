"""The model store on real files: verification, stamps, names, remove, list, quantize, CLI."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edgeinfer.cli import models as cli_models
from edgeinfer.config.load import bundled_catalogue_path
from edgeinfer.config.schema import Catalogue
from edgeinfer.errors import EdgeInferError, IntegrityError, ModelNotFound, ModelStoreError
from edgeinfer.models import ModelStore, default_quant_name
from edgeinfer.paths import Paths, resolve

DATA = os.urandom(300_000)
DATA_SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EDGEINFER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("EDGEINFER_MODELS_DIR", raising=False)
    return tmp_path / "home"


@pytest.fixture
def src_file(tmp_path: Path) -> Path:
    path = tmp_path / "base.gguf"
    path.write_bytes(DATA)
    return path


def fake_quantizer(calls: list[str] | None = None, delay: float = 0.0) -> Callable[..., None]:
    """Stands in for llama.cpp's quantizer: writes a deterministic, different file."""

    def quantize(src: Path, dst: Path, ftype: str) -> None:
        if calls is not None:
            calls.append(ftype)
        time.sleep(delay)
        dst.write_bytes(ftype.encode() + hashlib.sha256(src.read_bytes()).digest() * 100)

    return quantize


def catalogue(src_file: Path, **extra: dict[str, Any]) -> Catalogue:
    models: dict[str, dict[str, Any]] = {
        "pinned": {
            "source": {"type": "path", "path": str(src_file)},
            "size": len(DATA),
            "sha256": DATA_SHA,
            "n_ctx": 2048,
        },
        "loose": {"source": {"type": "path", "path": str(src_file)}},
        "pinned-q8": {"source": {"type": "quantize", "from": "pinned"}, "serve": False},
        **extra,
    }
    data = {"models": {name: {**entry, "name": name} for name, entry in models.items()}}
    return Catalogue.model_validate(data)


@pytest.fixture
def store(tmp_path: Path, src_file: Path) -> ModelStore:
    return ModelStore(tmp_path / "models", catalogue(src_file), quantizer=fake_quantizer())


def flip_byte(path: Path, offset: int = 1234) -> None:
    with path.open("r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))


def manifest_of(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((path.parent / "manifest.json").read_text())
    return data


# -- pull, verify, stamps -------------------------------------------------------------------


def test_pull_stores_file_and_manifest(store: ModelStore, tmp_path: Path) -> None:
    path = store.pull("pinned")
    assert path == (tmp_path / "models").resolve() / "pinned" / "model.gguf"
    assert path.read_bytes() == DATA
    manifest = manifest_of(path)
    assert manifest["name"] == "pinned"
    assert manifest["file"] == "model.gguf"
    assert (manifest["size"], manifest["sha256"]) == (len(DATA), DATA_SHA)
    assert manifest["source"] == {"type": "path", "path": str(tmp_path / "base.gguf")}
    assert set(manifest["verified"]) == {"size", "mtime_ns", "inode", "checked_ns"}
    assert manifest["created"]
    assert store.digest("pinned") == DATA_SHA


def test_verify_trusts_a_fresh_stamp_without_rehashing(store: ModelStore) -> None:
    path = store.pull("pinned")
    before = (path.parent / "manifest.json").read_bytes()
    assert store.verify("pinned") == path
    assert (path.parent / "manifest.json").read_bytes() == before  # no rehash, no new stamp


def test_corrupt_file_same_size_is_refused(store: ModelStore) -> None:
    path = store.pull("pinned")
    flip_byte(path)
    for call in (store.verify, store.ensure, store.digest):
        with pytest.raises(IntegrityError) as info:
            call("pinned")
        message = info.value.message
        assert str(path) in message
        assert f"expected {DATA_SHA}" in message
        assert "run `edgeinfer models pull pinned --force`" in message


def test_a_changed_pin_is_not_called_a_corrupt_file(tmp_path: Path, src_file: Path) -> None:
    """Found by an audit: a mistyped sha256 in models.toml was reported as a corrupt file,
    with the advice to download it again."""
    ModelStore(tmp_path / "models", catalogue(src_file)).pull("pinned")
    typo = catalogue(src_file, pinned={"source": {"type": "path", "path": str(src_file)},
                                       "sha256": "0" * 64})  # fmt: skip
    with pytest.raises(IntegrityError, match="as it was pulled, but the catalogue pins 0000"):
        ModelStore(tmp_path / "models", typo).verify("pinned")


def test_truncated_file_is_refused(store: ModelStore) -> None:
    path = store.pull("pinned")
    with path.open("r+b") as fh:
        fh.truncate(1000)
    with pytest.raises(IntegrityError, match=rf"{path}: size is 1,000 bytes, expected 300,000"):
        store.ensure("pinned")


def test_stamp_shortcut_catches_a_rewrite(store: ModelStore) -> None:
    path = store.pull("loose")  # no digest in the catalogue: the manifest is the reference
    store.verify("loose")
    flip_byte(path)  # same size, same inode, new mtime
    with pytest.raises(IntegrityError, match="sha256 is .* expected"):
        store.verify("loose")
    flip_byte(path)  # back to the original bytes: verifies again, after a rehash
    assert store.verify("loose") == path


def test_stamp_does_not_vouch_for_a_racy_file(store: ModelStore) -> None:
    """A rewrite inside the clock tick of the last check must not hide behind the stamp."""
    path = store.pull("pinned")
    stamp = path.stat().st_mtime_ns
    flip_byte(path)
    os.utime(path, ns=(stamp, stamp))  # as if the rewrite kept the mtime (coarse clock)
    manifest = manifest_of(path)
    manifest["verified"]["checked_ns"] = stamp + 1  # ... and happened right after the check
    (path.parent / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IntegrityError):
        store.verify("pinned")


def test_lost_manifest(store: ModelStore) -> None:
    pinned, loose = store.pull("pinned"), store.pull("loose")
    (pinned.parent / "manifest.json").unlink()
    (loose.parent / "manifest.json").write_text("{not json")
    assert store.verify("pinned") == pinned  # the catalogue pins it: rehash, new manifest
    assert manifest_of(pinned)["sha256"] == DATA_SHA
    with pytest.raises(ModelStoreError, match="damaged manifest"):
        store.verify("loose")


def test_verify_before_pull(store: ModelStore) -> None:
    with pytest.raises(ModelStoreError, match="not pulled.*edgeinfer models pull pinned"):
        store.verify("pinned")


def test_pull_repairs_a_corrupt_file(store: ModelStore) -> None:
    path = store.pull("pinned")
    flip_byte(path)
    assert store.pull("pinned").read_bytes() == DATA
    flip_byte(path)
    assert store.pull("pinned", force=True).read_bytes() == DATA


def test_pull_keeps_a_verified_file_unless_forced(store: ModelStore, src_file: Path) -> None:
    path = store.pull("loose")
    inode = path.stat().st_ino
    assert store.pull("loose").stat().st_ino == inode
    src_file.write_bytes(b"a new version")
    assert store.pull("loose", force=True).read_bytes() == b"a new version"
    assert manifest_of(path)["size"] == len(b"a new version")


def test_ensure_pulls_when_missing(store: ModelStore) -> None:
    assert store.ensure("pinned").read_bytes() == DATA


def test_unknown_model(store: ModelStore) -> None:
    with pytest.raises(ModelNotFound, match="unknown model 'nope'.*pinned, loose"):
        store.ensure("nope")


@pytest.mark.parametrize(
    "name", ["../escape", "a/b", "..", ".", "", "/etc/passwd", "a..b", "Upper", "x\\y", "-x"]
)
def test_names_that_could_leave_the_store_are_refused(store: ModelStore, name: str) -> None:
    for call in (store.path_for, store.ensure, store.pull, store.verify, store.remove):
        with pytest.raises(ModelNotFound, match="invalid model name"):
            call(name)


def test_a_symlinked_model_dir_pointing_outside_is_refused(
    store: ModelStore, tmp_path: Path
) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "models" / "pinned").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ModelNotFound, match="leaves the model store"):
        store.pull("pinned")
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_remove(store: ModelStore) -> None:
    path = store.pull("pinned")
    (path.parent / "model.gguf.part").write_bytes(b"leftover")
    assert store.remove("pinned") is True
    assert sorted(p.name for p in path.parent.iterdir()) == [".lock"]
    assert store.remove("pinned") is False
    assert store.remove("loose") is False
    with pytest.raises(ModelNotFound):
        store.remove("nope")


def test_list_reports_each_state(store: ModelStore) -> None:
    store.pull("pinned")
    flip_byte(store.pull("loose"))
    truncated = store.pull("pinned-q8")
    with truncated.open("r+b") as fh:
        fh.truncate(10)
    rows = {info.name: info for info in store.list()}
    assert list(rows) == ["pinned", "loose", "pinned-q8"]
    assert rows["pinned"].status == "verified"
    assert rows["pinned"].sha256 == DATA_SHA
    assert rows["loose"].status == "pulled"  # changed since the stamp; list never hashes
    assert rows["pinned-q8"].status == "corrupt"
    assert "size is 10 bytes" in (rows["pinned-q8"].error or "")
    checked = {info.name: info.status for info in store.list(verify=True)}
    assert checked == {"pinned": "verified", "loose": "corrupt", "pinned-q8": "corrupt"}
    store.remove("pinned")
    missing = store.list()[0]
    assert (missing.status, missing.path, missing.pulled) == ("missing", None, False)


# -- quantize -------------------------------------------------------------------------------


def test_quantize_source_pulls_its_parent_then_quantizes(tmp_path: Path, src_file: Path) -> None:
    calls: list[str] = []
    store = ModelStore(tmp_path / "models", catalogue(src_file), quantizer=fake_quantizer(calls))
    path = store.ensure("pinned-q8")
    assert calls == ["Q8_0"]
    assert store.path_for("pinned").read_bytes() == DATA
    assert path.read_bytes().startswith(b"Q8_0")
    assert manifest_of(path)["source"] == {"type": "quantize", "from": "pinned", "ftype": "Q8_0"}
    assert store.ensure("pinned-q8") == path
    assert calls == ["Q8_0"]


def test_quantize_without_an_engine(tmp_path: Path, src_file: Path) -> None:
    store = ModelStore(tmp_path / "models", catalogue(src_file))
    with pytest.raises(ModelStoreError, match="needs the inference engine"):
        store.pull("pinned-q8")
    assert not store.path_for("pinned").exists()  # refused before pulling the parent


def test_failing_quantizer_leaves_nothing(tmp_path: Path, src_file: Path) -> None:
    def broken(src: Path, dst: Path, ftype: str) -> None:
        dst.write_bytes(b"half")
        raise RuntimeError("llama.cpp said no")

    store = ModelStore(tmp_path / "models", catalogue(src_file), quantizer=broken)
    with pytest.raises(ModelStoreError, match="quantizing pinned-q8 failed: llama.cpp said no"):
        store.pull("pinned-q8")
    folder = store.path_for("pinned-q8").parent
    assert sorted(p.name for p in folder.iterdir()) == [".lock"]


def test_store_made_quantized_model(tmp_path: Path, src_file: Path) -> None:
    store = ModelStore(tmp_path / "models", catalogue(src_file), quantizer=fake_quantizer())
    assert default_quant_name("loose", "Q8_0") == "loose-q8"
    path = store.quantize("loose", "Q8_0")
    assert path == store.path_for("loose-q8")
    # A fresh store (another process) finds it through its manifest.
    again = ModelStore(tmp_path / "models", catalogue(src_file))
    spec = again.spec("loose-q8")
    assert (spec.quant, spec.serve) == ("Q8_0", False)
    assert "no more accurate than its source" in spec.description
    assert again.verify("loose-q8") == path
    assert [i.name for i in again.list()][-1] == "loose-q8"
    named = store.quantize("pinned", "Q4_K_M", name="small-one")
    assert store.spec("small-one").n_ctx == 2048  # engine knobs come from the parent
    assert named.read_bytes().startswith(b"Q4_K_M")
    with pytest.raises(ModelStoreError, match="already exists in the store"):
        store.quantize("pinned", "Q8_0", name="small-one")
    with pytest.raises(ModelStoreError, match="catalogue model with another source"):
        store.quantize("pinned", "Q8_0", name="loose")
    with pytest.raises(ModelStoreError, match="cannot quantize to 'Q9'"):
        store.quantize("pinned", "Q9")
    assert store.remove("small-one") is True
    with pytest.raises(ModelNotFound):
        store.spec("small-one")


def test_concurrent_pulls_of_one_model_fetch_once(tmp_path: Path, src_file: Path) -> None:
    calls: list[str] = []
    quantizer = fake_quantizer(calls, delay=0.3)
    stores = [
        ModelStore(tmp_path / "models", catalogue(src_file), quantizer=quantizer) for _ in range(2)
    ]
    errors: list[BaseException] = []

    def pull(store: ModelStore) -> None:
        try:
            store.pull("pinned-q8")
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=pull, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert errors == []
    assert calls == ["Q8_0"]


# -- CLI ------------------------------------------------------------------------------------


def run_cli(argv: list[str], paths: Paths, user_toml: Path) -> int:
    parser = argparse.ArgumentParser(prog="edgeinfer")
    cli_models.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return cli_models.run(
        args,
        paths=paths,
        catalogue_paths=[bundled_catalogue_path(), user_toml],
        quantizer=fake_quantizer(),
    )


@pytest.fixture
def paths() -> Paths:
    return resolve()


def test_cli_check_prints_every_problem(
    paths: Paths, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    user = paths.user_models_toml
    user.parent.mkdir(parents=True)
    user.write_text(
        "[models.tiny]\nslots = 0\ndescripton = 'x'\n"
        "[models.mine]\nsource = { type = 'url', url = 'ftp://nope' }\n"
        "[models.derived]\nsource = { type = 'quantize', from = 'ghost' }\n"
    )
    assert run_cli(["models", "check"], paths, user) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"{user}: models.tiny.slots: Input should be greater than or equal to 1",
        f"{user}: models.tiny.descripton: unknown key (did you mean 'description'?)",
        f"{user}: models.mine.source.url: must be an http:// or https:// URL, got 'ftp://nope'",
        f"{user}: models.derived.source.from: unknown model 'ghost'",
    ]


def test_cli_check_ok_and_finds_corrupt_files(
    paths: Paths, src_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    user = paths.user_models_toml
    user.parent.mkdir(parents=True)
    user.write_text(f"[models.mine]\nsource = {{ type = 'path', path = '{src_file}' }}\n")
    assert run_cli(["models", "pull", "mine"], paths, user) == 0
    assert f"(sha256 {DATA_SHA})" in capsys.readouterr().out
    assert run_cli(["models", "check"], paths, user) == 0
    assert "ok: 5 catalogue models, 1 pulled and verified" in capsys.readouterr().out
    flip_byte(paths.models_dir / "mine" / "model.gguf")
    assert run_cli(["models", "check"], paths, user) == 1
    assert "mine: " in capsys.readouterr().out


def test_cli_list_pull_quantize_rm(
    paths: Paths, src_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    user = paths.user_models_toml
    user.parent.mkdir(parents=True)
    user.write_text(f"[models.mine]\nsource = {{ type = 'path', path = '{src_file}' }}\n")
    assert run_cli(["models", "quantize", "mine", "--type", "Q8_0"], paths, user) == 0
    assert "mine-q8:" in capsys.readouterr().out
    assert run_cli(["models", "list"], paths, user) == 0
    rows = {
        line.split("│")[1].strip(): line
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("│") and line.split("│")[1].strip()
    }
    assert "missing" in rows["tiny"]
    assert "verified" in rows["mine"]
    assert "verified" in rows["mine-q8"]
    assert run_cli(["models", "rm", "mine-q8"], paths, user) == 0
    assert capsys.readouterr().out == "removed mine-q8\n"


def test_cli_errors_are_one_line(paths: Paths, capsys: pytest.CaptureFixture[str]) -> None:
    user = paths.user_models_toml
    assert run_cli(["models", "pull", "../x"], paths, user) == 1
    assert capsys.readouterr().err == "edgeinfer: error: invalid model name '../x'\n"
    assert run_cli(["models", "rm", "ghost"], paths, user) == 1
    err = capsys.readouterr().err
    assert err.startswith("edgeinfer: error: unknown model 'ghost'") and err.count("\n") == 1


def test_errors_are_edgeinfer_errors() -> None:
    assert issubclass(IntegrityError, ModelStoreError)
    assert issubclass(ModelNotFound, EdgeInferError)
