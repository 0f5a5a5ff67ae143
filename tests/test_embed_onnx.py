"""The real MiniLM embedder (int8 ONNX via onnxruntime), its asset files, and the fake."""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeinfer.embed import onnx as onnx_module
from edgeinfer.embed.fake import FakeEmbedder
from edgeinfer.embed.onnx import OnnxEmbedder
from edgeinfer.errors import ModelStoreError, ModelUnavailable
from edgeinfer.models.assets import ASSETS, asset_path, ensure_asset
from tests.cache_fixtures import minilm_fixture  # noqa: F401
from tests.conftest import MODELS_DIR

pytestmark = pytest.mark.real


def test_dimensions_and_unit_rows(minilm: OnnxEmbedder) -> None:
    vectors = minilm.embed(["hello", "a much longer sentence about sqlite and vectors", ""])
    assert minilm.dim == 384 and vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert minilm.embed([]).shape == (0, 384)


def test_similarities_match_the_reference_figures(minilm: OnnxEmbedder) -> None:
    """The reference figures: cos(reset, forgot) = 0.89; either against France about 0.05-0.07."""
    reset, forgot, france = minilm.embed([
        "How do I reset my password?",
        "I forgot my password, how can I change it?",
        "What is the capital of France?",
    ])  # fmt: skip
    assert float(reset @ forgot) == pytest.approx(0.89, abs=0.01)
    assert 0.0 < float(reset @ france) < 0.12 and 0.0 < float(forgot @ france) < 0.12


def test_a_text_embeds_the_same_alone_or_with_others(minilm: OnnxEmbedder) -> None:
    """Int8 activations are scaled per run, so each text runs alone: its vector never depends
    on what it was embedded with."""
    texts = ["Hi", "How do I merge two dictionaries in Python without losing keys?", "ok then"]
    together = minilm.embed(texts)
    alone = np.vstack([minilm.embed([t]) for t in texts])
    assert np.array_equal(together, alone)
    assert np.array_equal(minilm.embed([texts[1], *texts])[1:], together)


def test_long_texts_are_truncated_not_refused(minilm: OnnxEmbedder) -> None:
    long = "word " * 2000
    assert minilm.embed([long]).shape == (1, 384)


def test_a_huge_text_is_cut_before_the_tokenizer_reads_it(
    minilm: OnnxEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tokenizer reads a text whole even when it keeps 256 tokens: a 5 MB input to
    /v1/embeddings took 13 s and left the daemon 1.7 GB bigger. Only the first CLIP_CHARS
    characters reach it, which for real text holds far more than 256 tokens: the vector, the
    token count and the verdict on fitting are what the whole text gives."""
    prose = " ".join(
        f"Paragraph {i} says the shipment left port {i % 7} days late." for i in range(60)
    )
    huge = prose + " filler" * 150_000
    seen: list[int] = []
    encode = minilm._tokenizer.encode_batch
    monkeypatch.setattr(
        minilm._tokenizer,
        "encode_batch",
        lambda texts: seen.extend(map(len, texts)) or encode(texts),
    )
    assert len(huge) > 1_000_000 and len(prose) < onnx_module.CLIP_CHARS
    vector = minilm.embed([huge])
    assert max(seen) <= onnx_module.CLIP_CHARS
    monkeypatch.undo()
    whole = minilm._embed_one(minilm._tokenizer.encode_batch([huge])[0].ids)
    assert np.allclose(vector[0], whole / np.linalg.norm(whole), atol=1e-6)
    assert minilm.token_counts([huge]) == [onnx_module.MAX_TOKENS]
    assert minilm.fits([huge, prose[:500]]) == [False, True]
    assert minilm.fits([" " * (onnx_module.CLIP_CHARS + 1) + "hi"]) == [
        False
    ]  # cut: not read whole


def test_the_int8_network_is_kept_and_stays_close_to_the_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file's matrices run as dynamic int8: built once into the cache folder, loaded from it
    after (the same vectors), and within cosine 0.97 of the file's float network."""
    files = asset_path(MODELS_DIR, "minilm-onnx"), asset_path(MODELS_DIR, "minilm-tokenizer")
    texts = ["How do I reset my password?", "Wie viel kostet ein Zugticket nach Berlin?", "ok"]
    first = OnnxEmbedder(*files, cache=tmp_path).embed(texts)
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert [Path(k).suffix for k in kept] == [".onnx", ".sha256"]
    assert kept[0].startswith("minilm-int8-")

    def no_build(graph: object) -> bytes:
        raise AssertionError("built again")

    with monkeypatch.context() as m:
        m.setattr(onnx_module, "_dynamic_int8", no_build)
        assert np.array_equal(OnnxEmbedder(*files, cache=tmp_path).embed(texts), first)
    reference = OnnxEmbedder(*files)
    reference._session = onnx_module._session(str(files[0]), 1)  # the file's own float matmuls
    cosines = (reference.embed(texts) * first).sum(axis=1)
    assert cosines.min() > 0.97 and not np.allclose(cosines, 1.0, atol=1e-4)


def test_a_broken_model_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(ModelUnavailable, match="cannot load the embedding model"):
        OnnxEmbedder(bad, asset_path(MODELS_DIR, "minilm-tokenizer"))


def test_assets_are_verified_and_refetched_when_damaged(tmp_path: Path) -> None:
    path = ensure_asset(tmp_path, "minilm-tokenizer")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == ASSETS["minilm-tokenizer"].sha256
    path.write_bytes(b"{}")
    assert (
        ensure_asset(tmp_path, "minilm-tokenizer").stat().st_size == ASSETS["minilm-tokenizer"].size
    )
    with pytest.raises(ModelStoreError, match="unknown asset"):
        ensure_asset(tmp_path, "nope")


def test_only_the_onnx_module_imports_onnxruntime() -> None:
    code = (
        "import sys, edgeinfer.cache, edgeinfer.cache.store, edgeinfer.embed, edgeinfer.models;"
        "print('onnxruntime' in sys.modules, 'tokenizers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_fake_embedder_is_deterministic_and_word_based() -> None:
    fake = FakeEmbedder(32)
    a, b, c = fake.embed(["Reset my password", "reset MY password", "capital of France"])
    assert float(a @ b) == pytest.approx(1.0) and float(a @ c) < 0.8
    assert fake.calls == [["Reset my password", "reset MY password", "capital of France"]]
    with pytest.raises(ValueError):
        FakeEmbedder(30)


def test_an_int8_build_that_fails_falls_back_to_the_files_float_network(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """onnxruntime's quantiser failing (another onnxruntime, a changed graph) must not take the
    embedder, and with it the semantic cache and the router's classifier, away: the file's own
    float network serves, the log says why in one line, and nothing is kept, so the next start
    builds again."""
    files = asset_path(MODELS_DIR, "minilm-onnx"), asset_path(MODELS_DIR, "minilm-tokenizer")
    texts = ["How do I reset my password?", "Wie viel kostet ein Zugticket nach Berlin?"]
    int8 = OnnxEmbedder(*files).embed(texts)

    def broken(graph: object) -> bytes:
        raise RuntimeError("quantize_dynamic: unsupported opset")

    with monkeypatch.context() as m, caplog.at_level(logging.WARNING, "edgeinfer.embed.onnx"):
        m.setattr(onnx_module, "_dynamic_int8", broken)
        fallback = OnnxEmbedder(*files, cache=tmp_path / "kept").embed(texts)
    assert "cannot build the int8 minilm-int8 network (RuntimeError" in caplog.text
    assert not (tmp_path / "kept").exists()
    float_files = OnnxEmbedder(*files)
    float_files._session = onnx_module._session(str(files[0]), 1)
    assert np.allclose(fallback, float_files.embed(texts), atol=1e-6)
    assert (fallback * int8).sum(axis=1).min() > 0.97
