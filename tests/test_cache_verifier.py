"""The semantic cache's verifier: the labelled pairs, the shipped cross-encoder over the real
MiniLM files, the store asking it, and questions longer than the embedder reads.

The figures the shipped model reaches are measured by scripts/bench_cache.py on the test split;
these tests check the machinery and the decisions that must never go wrong.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from edgeinfer import bootstrap
from edgeinfer.cache.store import CacheStore
from edgeinfer.cache.verifier import MODEL_PATH, WEIGHTS_PATH, Calibration, Verifier
from edgeinfer.config.schema import CacheSettings
from edgeinfer.embed import onnx as onnx_module
from edgeinfer.embed.onnx import OnnxEmbedder, OnnxPairScorer, minilm_files, open_pair_scorer
from edgeinfer.errors import ModelUnavailable
from edgeinfer.paths import resolve
from tests.cache_fixtures import (  # noqa: F401
    chat,
    entry_for,
    make_store_fixture,
    minilm_fixture,
    pair_scorer_fixture,
    shipped_verifier_fixture,
)
from tests.conftest import MODELS_DIR

PAIRS = Path(__file__).parent / "data" / "cache_pairs"
NEAR_MISS_KINDS = {
    "number", "unit", "negation", "antonym", "direction", "comparison", "role", "entity", "time",
    "scope", "language", "constraint", "attribute", "modality",
}  # fmt: skip


def _split(name: str) -> list[dict[str, str]]:
    lines = (PAIRS / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_the_labelled_pairs_are_split_once_by_question() -> None:
    splits = {name: _split(name) for name in ("train", "dev", "test")}
    assert sum(len(rows) for rows in splits.values()) >= 2000
    groups = {name: {r["group"] for r in rows} for name, rows in splits.items()}
    # a question's paraphrases and near-misses never straddle two splits
    assert not groups["train"] & groups["dev"]
    assert not groups["train"] & groups["test"]
    assert not groups["dev"] & groups["test"]
    for rows in splits.values():
        assert {r["label"] for r in rows} == {"same", "different"}
        assert all((r["label"] == "same") == (r["kind"] == "paraphrase") for r in rows)
    kinds = Counter(r["kind"] for rows in splits.values() for r in rows if r["label"] != "same")
    assert len([k for k in NEAR_MISS_KINDS if kinds[k] >= 15]) >= 12, kinds
    langs = {r["lang"] for rows in splits.values() for r in rows}
    assert len(langs) >= 6, langs


def test_the_fresh_set_shares_no_question_with_the_splits() -> None:
    """fresh.jsonl was written after the shipped network was trained and chosen: a held-out
    check only while no text or group of it is in train, dev or test."""
    fresh = _split("fresh")
    splits = [r for name in ("train", "dev", "test") for r in _split(name)]
    assert len(fresh) >= 2000
    assert not {r["group"] for r in fresh} & {r["group"] for r in splits}

    def plain(text: str) -> str:  # case, punctuation and spacing do not make another question
        return " ".join(re.sub(r"[^\w\s]", " ", text.casefold()).split())

    texts = {plain(t) for r in splits for t in (r["a"], r["b"])}
    assert not {plain(t) for r in fresh for t in (r["a"], r["b"])} & texts
    owners: dict[str, set[str]] = {}
    for r in fresh:
        for t in (r["a"], r["b"]):
            owners.setdefault(plain(t), set()).add(r["group"])
    assert all(len(groups) == 1 for groups in owners.values())  # moved into raw/, one split each
    assert {r["label"] for r in fresh} == {"same", "different"}
    assert all((r["label"] == "same") == (r["kind"] == "paraphrase") for r in fresh)
    assert {r["kind"] for r in fresh if r["label"] != "same"} <= NEAR_MISS_KINDS | {"unrelated"}


def test_the_shipped_calibration_names_its_weights_and_splits() -> None:
    cal = Calibration.load()
    assert 0.5 <= cal.cosine <= 1.0 and 0.0 < cal.cutoff < 1.0
    data = json.loads(MODEL_PATH.read_text(encoding="utf-8"))
    assert data["pairs"]["test"] > 0  # trained with a test split held back
    assert data["weights_sha256"] == hashlib.sha256(WEIGHTS_PATH.read_bytes()).hexdigest()


def test_a_calibration_out_of_range_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "model.json"
    bad.write_text(json.dumps({"cutoff": 1.5, "cosine": 0.8, "rules": False}))
    with pytest.raises(ValueError, match="out of range"):
        Calibration.load(bad)


@pytest.mark.real
def test_weights_made_for_another_model_file_are_refused(tmp_path: Path) -> None:
    with np.load(WEIGHTS_PATH) as shipped:
        arrays = {name: shipped[name] for name in shipped.files}
    name = next(k for k in arrays if k.endswith("_q"))
    for label, broken in (
        ("shape", {**arrays, name: arrays[name][:-1]}),
        ("name", {**arrays, "init/no_such_tensor": arrays[name]}),
    ):
        path = tmp_path / f"{label}.npz"
        np.savez(path, **broken)  # type: ignore[arg-type]
        with pytest.raises(ModelUnavailable, match="another model file"):
            open_pair_scorer(MODELS_DIR, path)
    with pytest.raises(ModelUnavailable, match="pair model"):
        open_pair_scorer(MODELS_DIR, tmp_path / "missing.npz")


@pytest.mark.real
def test_the_built_network_is_kept_and_a_damaged_copy_is_built_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The int8 network is built once per weights file and loaded from the folder after that,
    scoring exactly as a fresh build does; a copy cut short, or one onnxruntime will not load,
    is built again. When a new one is kept, of the copies built from other weights or versions
    only the newest stays (another install sharing the folder keeps its own), and files a dead
    write left behind go, while one being written now stays."""
    model, tokenizer = minilm_files(MODELS_DIR)
    cache = tmp_path / "built"
    cache.mkdir()
    hour_ago = time.time() - 3700
    for name, age in (("pair-int8-older", hour_ago - 60), ("pair-int8-newer", hour_ago)):
        for suffix in (".onnx", ".sha256"):
            (cache / f"{name}{suffix}").write_bytes(b"from other weights")
            os.utime(cache / f"{name}{suffix}", (age, age))
    (cache / ".part-dead").write_bytes(b"half a network")
    os.utime(cache / ".part-dead", (hour_ago, hour_ago))
    (cache / ".part-live").write_bytes(b"being written")
    pairs = [("How do I reset my password?", "I forgot my password, how can I change it?")]
    first = OnnxPairScorer(model, tokenizer, WEIGHTS_PATH, cache=cache).same(pairs)
    others = {".part-live", "pair-int8-newer.onnx", "pair-int8-newer.sha256"}
    assert others <= {p.name for p in cache.iterdir()}
    kept = sorted(p.name for p in cache.iterdir() if p.name not in others)
    assert len(kept) == 2 and kept[0].endswith(".onnx") and kept[1].endswith(".sha256")

    def no_build(graph: object) -> bytes:
        raise AssertionError("built again")

    network, digest = cache / kept[0], cache / kept[1]
    os.utime(network, (hour_ago, hour_ago))
    with monkeypatch.context() as m:
        m.setattr(onnx_module, "_dynamic_int8", no_build)
        loaded = OnnxPairScorer(model, tokenizer, WEIGHTS_PATH, cache=cache).same(pairs)
    assert loaded.tolist() == first.tolist()
    assert network.stat().st_mtime > hour_ago + 3000  # loading marks it used (see _prune)
    good = network.read_bytes()
    network.write_bytes(good[:1000])  # a copy cut short
    rebuilt = OnnxPairScorer(model, tokenizer, WEIGHTS_PATH, cache=cache).same(pairs)
    assert rebuilt.tolist() == first.tolist() and network.read_bytes() == good
    network.write_bytes(b"not a network")  # intact as written, but onnxruntime will not load it
    digest.write_text(hashlib.sha256(b"not a network").hexdigest())
    rebuilt = OnnxPairScorer(model, tokenizer, WEIGHTS_PATH, cache=cache).same(pairs)
    assert rebuilt.tolist() == first.tolist() and network.read_bytes() == good


@pytest.mark.real
def test_a_cache_folder_that_cannot_be_written_only_costs_the_build(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model, tokenizer = minilm_files(MODELS_DIR)
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    with caplog.at_level(logging.WARNING):
        scorer = OnnxPairScorer(model, tokenizer, WEIGHTS_PATH, cache=blocked / "built")
    assert scorer.same([("How do I reset my password?", "How can I reset my password?")])[0] > 0.5
    assert "cannot keep the built pair-int8 network" in caplog.text


@pytest.mark.real
def test_the_daemon_falls_back_to_the_rules_without_the_pair_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    paths = resolve({"EDGEINFER_HOME": str(tmp_path), "EDGEINFER_MODELS_DIR": str(MODELS_DIR)})
    assert bootstrap.build_verifier(CacheSettings(), paths).scorer is not None
    monkeypatch.setattr(bootstrap, "WEIGHTS_PATH", tmp_path / "missing.npz")
    with caplog.at_level(logging.ERROR):
        verifier = bootstrap.build_verifier(CacheSettings(), paths)
    assert verifier.scorer is None and verifier.rules
    assert "rule guard alone" in caplog.text and "missing.npz" in caplog.text


@pytest.mark.real
def test_the_scorer_reads_a_pair_the_same_in_either_order_and_in_any_batch(
    pair_scorer: OnnxPairScorer,
) -> None:
    pairs = [
        ("Does a list use more memory than a tuple in Python?",
         "Does a tuple use more memory than a list in Python?"),
        ("How do I reset my password?", "I forgot my password, how can I change it?"),
        ("Convert 5 km to miles", "how many miles is 5 kilometres"),
    ]  # fmt: skip
    together = pair_scorer.same(pairs)
    assert together.shape == (3,) and ((together >= 0) & (together <= 1)).all()
    swapped = pair_scorer.same([(b, a) for a, b in pairs])
    alone = np.array([pair_scorer.same([pair])[0] for pair in pairs])
    assert np.allclose(together, swapped, atol=1e-5)
    assert np.allclose(together, alone, atol=1e-4)
    assert pair_scorer.same([]).shape == (0,)


@pytest.mark.real
def test_a_pair_longer_than_the_model_reads_is_never_served(pair_scorer: OnnxPairScorer) -> None:
    """Two questions of ~300 tokens each overflow MiniLM's 512 positions: p = 0, no forward
    pass that would read positions the model does not have."""
    long = " ".join(["word"] * 300)
    p = pair_scorer.same([
        (f"{long} reset my password?", f"{long} reset my password?"),
        ("How do I reset my password?", "How can I reset my password?"),
    ])  # fmt: skip
    assert p[0] == 0.0 and p[1] > 0.5


@pytest.mark.real
def test_verifier_serves_a_rewording_and_refuses_a_reversal(
    minilm: OnnxEmbedder, shipped_verifier: Verifier
) -> None:
    def decide(a: str, b: str) -> str | None:
        va, vb = minilm.embed([a, b])
        return shipped_verifier.check(a, b, float(va @ vb))

    rewordings = [
        ("How do I reset my password?", "How can I reset my password?"),
        ("Explain what a hash table is.", "Can you explain what a hash table is?"),
        ("What is the capital of France?", "What's the capital city of France?"),
        ("How do I reverse a list in Python?", "how to reverse a list in python"),
        ("What time zone is Tokyo in?", "Which time zone is Tokyo in?"),
    ]
    served = [pair for pair in rewordings if decide(*pair) is None]
    assert len(served) >= 3, served
    for a, b in [
        ("Does a list use more memory than a tuple in Python?",
         "Does a tuple use more memory than a list in Python?"),
        ("How do I reset my password?", "How do I delete my account?"),
        ("Convert 100°C to Fahrenheit", "Convert 100°F to Celsius"),
    ]:  # fmt: skip
        reason = decide(a, b)
        assert reason is not None and reason.startswith("verifier: p(same)"), (a, b)


def test_rules_alone_when_asked() -> None:
    rules = Verifier()
    assert rules.scorer is None and rules.calibration is None and rules.rules
    assert rules.check("convert 5 km to miles", "convert 10 km to miles", 0.99) is not None
    assert rules.check("how do I reset my password", "how can I reset my password", 0.99) is None


def test_the_cutoff_and_rules_follow_the_calibration_unless_set() -> None:
    calls: list[list[tuple[str, str]]] = []

    def scorer(pairs: list[tuple[str, str]]) -> np.ndarray:
        calls.append(pairs)
        return np.full(len(pairs), 0.5, dtype=np.float32)

    cal = Calibration(cutoff=0.6, cosine=0.7, rules=False)
    verifier = Verifier(scorer, cal)
    assert verifier.cutoff == 0.6 and not verifier.rules
    reason = verifier.check("how do I reset my password", "how do I delete my account", 0.9)
    assert reason == "verifier: p(same) 0.50 < 0.60"
    assert calls == [[("how do I reset my password", "how do I delete my account")]]
    assert Verifier(scorer, cal, cutoff=0.4).check("a b c", "a b d", 0.9) is None
    # the rules, when asked for, veto before the model is run
    ruled = Verifier(scorer, cal, cutoff=0.4, rules=True)
    assert ruled.check("convert 5 km to miles", "convert 10 km to miles", 0.99) is not None
    assert len(calls) == 2
    # one question in different small talk is served without asking the model
    assert (
        verifier.check("How do I reset my password?", "Hi! How do I reset my password?", 1) is None
    )
    assert len(calls) == 2


@pytest.mark.real
def test_shipped_defaults_never_serve_a_neighbouring_question(
    make_store: object, minilm: OnnxEmbedder, shipped_verifier: Verifier
) -> None:
    """Different questions on one topic: the first cross-encoder served these with p near 1
    at cosine 0.5 (one came from the workload benchmark); the calibration now counts such
    pairs, and the store must refuse every one at the shipped threshold and cutoff."""
    assert shipped_verifier.calibration is not None
    store: CacheStore = make_store(minilm.dim, embedder=minilm.name)  # type: ignore[operator]
    store.verify = shipped_verifier.check
    pairs = [
        ("Tell me the capital city of Australia", "What ocean lies between Africa and Australia?"),
        ("What is 3/4 + 2/3, written as a single fraction?",
         "Python 3: what does print(type(3 / 1)) show?"),
        ("Can dogs eat cat food?", "which human foods are dogs allowed to eat"),
        ("How do I declare a constant in Go?", "golang reverse string"),
    ]  # fmt: skip
    store.put_many([entry_for(minilm, chat(stored), "an answer") for stored, _ in pairs])
    for _, asked in pairs:
        probe = entry_for(minilm, chat(asked), "")
        assert probe.embedding is not None and probe.question is not None
        threshold = shipped_verifier.calibration.cosine
        assert (
            store.lookup_semantic(probe.namespace, probe.embedding, probe.question, threshold)
            is None
        ), asked


@pytest.mark.real
def test_the_store_asks_the_verifier_and_counts_its_refusals(
    make_store: object, minilm: OnnxEmbedder
) -> None:
    seen: list[tuple[str, str]] = []

    def verify(stored: str, incoming: str, similarity: float) -> str | None:
        seen.append((stored, incoming))
        return "verifier: test says no" if incoming.startswith("Does a tuple") else None

    store: CacheStore = make_store(minilm.dim, embedder=minilm.name)  # type: ignore[operator]
    store.verify = verify
    stored = "Does a list use more memory than a tuple in Python?"
    store.put_many([entry_for(minilm, chat(stored), "a list does")])
    for question, served in [
        ("Does a tuple use more memory than a list in Python?", False),
        ("Does a list take more memory than a tuple in Python?", True),
    ]:
        probe = entry_for(minilm, chat(question), "")
        assert probe.embedding is not None and probe.question is not None
        hit = store.lookup_semantic(probe.namespace, probe.embedding, probe.question, 0.5)
        assert (hit is not None) is served, question
    assert seen == [(stored, q) for q in (
        "Does a tuple use more memory than a list in Python?",
        "Does a list take more memory than a tuple in Python?",
    )]  # fmt: skip
    assert store.stats()["guard_rejections"] == {"verifier": 1}


@pytest.mark.real
def test_a_question_longer_than_the_window_is_not_read_in_part(minilm: OnnxEmbedder) -> None:
    preamble = " ".join(["Please follow the house style guide for every reply you write."] * 36)
    assert len(preamble.split()) >= 360
    long_a, long_b = (
        f"{preamble} How do I reset my password?",
        f"{preamble} How do I delete my account?",
    )
    assert minilm.fits([long_a, long_b]) == [False, False]
    assert minilm.fits(["How do I reset my password?"]) == [True]
    # what the embedder would see of the two: the same first 256 tokens
    va, vb = minilm.embed([long_a, long_b])
    assert float(va @ vb) > 0.999
