"""Benchmark the semantic cache: hit quality on a labelled set, and lookup latency at scale.

1. Precision and recall of semantic hits on labelled pairs (default: the TEST split,
   tests/data/cache_pairs/test.jsonl, which nothing was tuned on) at cosine thresholds 0.50-0.95:
   the cosine alone, with the rule guard, and with the shipped verifier (verifier.py: the
   MiniLM cross-encoder) at its calibrated cutoff; then the shipped defaults, and the
   verifier's curve over cutoffs. The first question of a pair is the stored one, the second
   the incoming one. Precision = served pairs that were paraphrases / all served pairs;
   recall = served paraphrases / all paraphrases.
2. Lookup latency, real embedding of the incoming question included, at 1k / 10k / 100k entries:
   CacheStore (sqlite-vec Hamming KNN over sign bits + exact cosine rerank + the shipped
   verifier) against a brute-force numpy scan (exact cosine over all vectors + the same
   verifier), in one run on the same
   data. Entries are random unit vectors plus the real embeddings of the labelled set's stored
   questions, all in ONE namespace (the worst case: the KNN cannot skip anything); queries are the
   labelled set's incoming questions. "agree" is the share of queries where both methods serve the
   same entry (or both miss).

    .venv/bin/python scripts/bench_cache.py --quick
    .venv/bin/python scripts/bench_cache.py --pairs heldout.jsonl --sizes 1000 --queries 100
    .venv/bin/python scripts/bench_cache.py --pairs tests/data/cache_pairs/fresh.jsonl \
        --sizes 1000 --quick --skip-e2e     # the pairs written after the release (BRIEF3.md)

The latency runs include the cross-encoder's pass over each candidate the store asks about
(up to GUARDED per lookup).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeinfer.cache.entry import CacheEntry  # noqa: E402
from edgeinfer.cache.filler import core, same_question  # noqa: E402
from edgeinfer.cache.guard import guard  # noqa: E402
from edgeinfer.cache.store import GUARDED, CacheStore  # noqa: E402
from edgeinfer.cache.verifier import WEIGHTS_PATH, Verifier  # noqa: E402
from edgeinfer.embed.onnx import OnnxEmbedder, open_minilm, open_pair_scorer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
THRESHOLDS = [round(0.50 + 0.05 * i, 2) for i in range(10)]
CUTOFFS = [0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995]
NAMESPACE = "bench"


def quality(pairs: list[dict[str, str]], sims: np.ndarray, verifier: Verifier) -> dict[str, Any]:
    """Precision/recall per threshold: cosine alone, + rule guard, + the shipped verifier."""
    cal = verifier.calibration
    assert cal is not None
    same = np.array([p["label"] == "same" for p in pairs])
    passed = np.array(
        [same_question(p["a"], p["b"]) or guard(core(p["a"]), core(p["b"])) is None for p in pairs]
    )
    probs = np.array([verifier.probability(p["a"], p["b"]) for p in pairs])
    allowed = passed if verifier.rules else np.ones_like(passed)

    everyone = np.ones_like(same)

    def measure(served: np.ndarray, among: np.ndarray = everyone) -> dict[str, Any]:
        served = served & among
        right = int((served & same).sum())
        return {
            "served": int(served.sum()),
            "precision": right / served.sum() if served.any() else 1.0,
            "recall": right / max(int((same & among).sum()), 1),
            "wrong": int((served & ~same).sum()),
        }

    rows = []
    for threshold in THRESHOLDS:
        above = sims >= threshold
        rows.append({
            "threshold": threshold,
            "plain": measure(above),
            "guard": measure(above & passed),
            "verifier": measure(above & allowed & (probs >= verifier.cutoff)),
        })  # fmt: skip
    shipped_served = (sims >= cal.cosine) & allowed & (probs >= verifier.cutoff)
    shipped = measure(shipped_served)
    batches: dict[str, dict[str, Any]] = {}  # by who wrote them: group "<batch>-<id>"
    if all("-" in p.get("group", "") for p in pairs):
        from train_verifier import batch_of

        names = np.array([batch_of(p["group"]) for p in pairs])
        for name in sorted(set(names), key=lambda n: (len(n), n)):
            among = names == name
            batches[name] = {
                "pairs": int(among.sum()),
                "paraphrases": int((same & among).sum()),
                **measure(shipped_served, among),
            }
    curve = [
        {"cutoff": c, **measure((sims >= cal.cosine) & allowed & (probs >= c))} for c in CUTOFFS
    ]
    return {"rows": rows, "shipped": shipped, "curve": curve, "cutoff": verifier.cutoff,
            "threshold": cal.cosine, "rules": verifier.rules, "batches": batches}  # fmt: skip


def unrelated_served(
    vectors: dict[str, np.ndarray], pairs: list[dict[str, str]], verifier: Verifier
) -> dict[str, Any]:
    """How many "unrelated" pairs the shipped defaults serve: two different base questions of
    one batch of the set on a nearby topic (cosine 0.45-0.85; train_verifier.unrelated), all
    wrong hits. Needs the pairs' ``group`` (``<batch>-<id>``); a set without it is skipped."""
    from train_verifier import unrelated

    if not all("group" in p for p in pairs):
        print("\nUnrelated pairs: not mined (the pairs have no group)")
        return {"mined": 0, "served": 0}
    mined = unrelated(pairs, vectors)
    cal = verifier.calibration
    assert cal is not None
    served = [
        (a, b) for a, b in mined
        if float(vectors[a] @ vectors[b]) >= cal.cosine and verifier.check(a, b, 1.0) is None
    ]  # fmt: skip
    print(f"\nUnrelated pairs mined from the set (different questions on a nearby topic): "
          f"{len(served)} of {len(mined)} served at the shipped defaults")  # fmt: skip
    for a, b in served[:5]:
        print(f"  served: {a!r} / {b!r}")
    return {"mined": len(mined), "served": len(served)}


def print_quality(q: dict[str, Any], pairs: list[dict[str, str]], source: Path) -> None:
    same = sum(p["label"] == "same" for p in pairs)
    print(f"\n## Semantic hits on {len(pairs)} pairs ({same} paraphrases) from {source.name}\n")
    shipped, rules = q["shipped"], "on" if q["rules"] else "off"
    print(f"Shipped defaults (cosine ≥ {q['threshold']}, rule guard {rules}, verifier p ≥ "
          f"{q['cutoff']:.2f}): precision {shipped['precision']:.3f}, recall "
          f"{shipped['recall']:.3f}, {shipped['wrong']} wrong hits\n")  # fmt: skip
    print("| threshold | cosine: precision / recall | + rule guard | + verifier (wrong) |")
    print("|---|---|---|---|")
    for r in q["rows"]:
        p, g, v = r["plain"], r["guard"], r["verifier"]
        print(
            f"| {r['threshold']:.2f} | {p['precision']:.3f} / {p['recall']:.3f} "
            f"| {g['precision']:.3f} / {g['recall']:.3f} "
            f"| {v['precision']:.3f} / {v['recall']:.3f} ({v['wrong']}) |"
        )
    if q["batches"]:
        print("\nAt the shipped defaults, by batch (who wrote the pairs: the group's prefix):\n")
        print("| batch | pairs | paraphrases | precision | recall | wrong hits |")
        print("|---|---|---|---|---|---|")
        for name, b in q["batches"].items():
            print(f"| {name} | {b['pairs']} | {b['paraphrases']} | {b['precision']:.3f} "
                  f"| {b['recall']:.3f} | {b['wrong']} |")  # fmt: skip
    print(f"\nThe verifier's curve at cosine ≥ {q['threshold']}:\n")
    print("| cutoff | served | precision | recall | wrong hits |\n|---|---|---|---|---|")
    for c in q["curve"]:
        print(f"| {c['cutoff']:.3f} | {c['served']} | {c['precision']:.3f} | {c['recall']:.3f} "
              f"| {c['wrong']} |")  # fmt: skip


def build(path: Path, size: int, planted: list[str], vectors: np.ndarray, dim: int,
          verifier: Verifier) -> tuple[CacheStore, np.ndarray, list[str]]:  # fmt: skip
    """A store and the same data as a numpy matrix: random unit rows plus the planted questions."""
    rng = np.random.default_rng(size)
    randoms = rng.standard_normal((size - len(planted), dim)).astype(np.float32)
    randoms /= np.linalg.norm(randoms, axis=1, keepdims=True)
    matrix = np.vstack([randoms, vectors]).astype(np.float32)
    questions = [f"stored filler question number {i}" for i in range(len(randoms))] + planted
    store = CacheStore(path, dim=dim, max_bytes=1 << 40, ttl_s=None, verify=verifier.check)
    store.start()
    for start in range(0, size, 5000):
        store.put_many([
            CacheEntry(f"k{i}", NAMESPACE, "tiny", "d", questions[i], matrix[i],
                       {"choices": [{"message": {"content": f"answer {i}"}}]}, 20, 30, 1.0)
            for i in range(start, min(size, start + 5000))
        ])  # fmt: skip
    return store, matrix, questions


def brute_force(matrix: np.ndarray, questions: list[str], vector: np.ndarray, question: str,
                threshold: float, verifier: Verifier) -> str | None:  # fmt: skip
    """The same decision as CacheStore.lookup_semantic, by exact cosine over every row."""
    sims = matrix @ vector
    top = np.argpartition(-sims, GUARDED)[:GUARDED] if len(sims) > GUARDED else np.arange(len(sims))
    for i in top[np.argsort(-sims[top])]:
        if sims[i] >= threshold and verifier.check(questions[i], question, sims[i]) is None:
            return str(questions[i])
    return None


def latency(
    embedder: OnnxEmbedder, pairs: list[dict[str, str]], sizes: list[int], queries: int,
    threshold: float, verifier: Verifier,
) -> list[dict[str, Any]]:  # fmt: skip
    planted = sorted({p["a"] for p in pairs})
    vectors = embedder.embed(planted)
    asks = [p["b"] for p in pairs][:queries]
    asks = (asks * (queries // max(1, len(asks)) + 1))[:queries]
    rows = []
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp:
            t0 = time.perf_counter()
            store, matrix, questions = build(
                Path(tmp) / "c.sqlite3", size, planted, vectors, embedder.dim, verifier
            )
            built = time.perf_counter() - t0
            store.lookup_semantic(NAMESPACE, vectors[0], planted[0], threshold)  # open the reader
            vec_ms, np_ms, search_vec, search_np, agree = [], [], [], [], 0
            for question in asks:
                t0 = time.perf_counter()
                v = embedder.embed([question])[0]
                t1 = time.perf_counter()
                hit = store.lookup_semantic(NAMESPACE, v, question, threshold)
                t2 = time.perf_counter()
                v2 = embedder.embed([question])[0]
                t3 = time.perf_counter()
                mine = brute_force(matrix, questions, v2, question, threshold, verifier)
                t4 = time.perf_counter()
                vec_ms.append((t2 - t0) * 1e3)
                search_vec.append((t2 - t1) * 1e3)
                np_ms.append((t4 - t2) * 1e3)
                search_np.append((t4 - t3) * 1e3)
                agree += (hit.question if hit else None) == mine
            file_mb = sum(p.stat().st_size for p in Path(tmp).iterdir()) / 1e6
            store.close()
        rows.append({
            "entries": size, "build_s": built, "file_mb": file_mb, "queries": len(asks),
            "sqlite_vec_ms": _pcts(vec_ms), "numpy_ms": _pcts(np_ms),
            "sqlite_vec_search_ms": _pcts(search_vec), "numpy_search_ms": _pcts(search_np),
            "agree": agree / len(asks),
        })  # fmt: skip
    return rows


def _pcts(values: list[float]) -> dict[str, float]:
    return {"p50": float(np.percentile(values, 50)), "p99": float(np.percentile(values, 99))}


def print_latency(rows: list[dict[str, Any]], threshold: float) -> None:
    print(f"\n## Lookup latency, embedding and verifier included (threshold {threshold}, one "
          "namespace)\n")  # fmt: skip
    print("| entries | sqlite-vec p50 | p99 | numpy p50 | p99 "
          "| search only: sqlite-vec p50 / numpy p50 | agree | build s | db MB |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        v, n, sv, sn = (
            r["sqlite_vec_ms"],
            r["numpy_ms"],
            r["sqlite_vec_search_ms"],
            r["numpy_search_ms"],
        )
        print(
            f"| {r['entries']:,} | {v['p50']:.2f} ms | {v['p99']:.2f} ms | {n['p50']:.2f} ms "
            f"| {n['p99']:.2f} ms | {sv['p50']:.2f} / {sn['p50']:.2f} ms | {r['agree']:.0%} "
            f"| {r['build_s']:.1f} | {r['file_mb']:.0f} |"
        )


E2E_QUESTIONS = [
    ("How do I reset my password?", "How can I reset my password?"),
    ("What is the capital of Australia?", "What's the capital city of Australia?"),
    ("Explain what a hash table is.", "Could you explain what a hash table is?"),
    ("How do I undo the last git commit?", "how to undo my last commit in git"),
    ("What is the boiling point of water at sea level?",
     "At sea level, what temperature does water boil at?"),
    ("How long should I boil an egg for a soft yolk?",
     "For a soft-boiled egg, how many minutes do I boil it?"),
    ("What does HTTP status code 404 mean?", "What is the meaning of the HTTP 404 status code?"),
    ("How many bones are in the adult human body?", "How many bones does an adult human have?"),
]  # fmt: skip
"""Distinct questions (each a generation, then an exact repeat, then a rewording): a suffix
like "(round 2)" would not make a question new to the verifier, which serves it semantically."""


def end_to_end(models_dir: Path, model: str, questions: int) -> dict[str, Any]:
    """Over the real daemon's socket: a generation, then the same answer from each layer."""
    import httpx
    from _benchutil import ServerProcess, unix_accepts

    with tempfile.TemporaryDirectory(prefix="eic-", dir="/tmp") as tmp:
        sock = Path(tmp) / "ei.sock"
        env = {
            **os.environ,
            "EDGEINFER_HOME": f"{tmp}/home",
            "EDGEINFER_MODELS_DIR": str(models_dir),
        }
        argv = [
            sys.executable,
            "-m",
            "edgeinfer",
            "serve",
            "--models",
            model,
            "--socket",
            str(sock),
        ]
        server = ServerProcess(argv, env, Path(tmp) / "daemon.log", lambda: unix_accepts(sock))
        server.start()
        times: dict[str, list[float]] = {"generation": [], "exact": [], "semantic": []}
        try:
            transport = httpx.HTTPTransport(uds=str(sock))
            with httpx.Client(transport=transport, base_url="http://ei", timeout=300) as client:
                for q, p in E2E_QUESTIONS[:questions]:
                    for kind, text in (("generation", q), ("exact", q), ("semantic", p)):
                        elapsed, layer = _timed_ask(client, model, text, kind)
                        bucket = kind if layer == kind else f"{kind}: missed, {layer}"
                        times.setdefault(bucket, []).append(elapsed)
        finally:
            server.stop()
    return {k: {**_pcts(v), "n": len(v)} for k, v in times.items() if v}


def _timed_ask(client: Any, model: str, text: str, expect: str) -> tuple[float, str]:
    """The request's latency (ms) and what served it: generation, exact or semantic."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": 128,
        "temperature": 0,
    }
    t0 = time.perf_counter()
    reply = client.post("/v1/chat/completions", json=body).json()
    elapsed = (time.perf_counter() - t0) * 1000
    layer = reply["edgeinfer"]["cache"]["layer"] or "generation"
    if layer != expect:
        print(f"  note: {text!r} expected {expect}, got {layer}", file=sys.stderr)
    return elapsed, layer


def print_end_to_end(e2e: dict[str, Any]) -> None:
    gen = e2e["generation"]["p50"]
    print("\nEnd to end over the socket: the same answer generated vs served from the cache (ms)")
    print(f"  {'served by':<28}{'requests':>9}{'p50':>10}{'p99':>10}{'vs generation':>16}")
    for kind, row in e2e.items():
        share = row["p50"] / gen if gen else float("nan")
        print(f"  {kind:<28}{row['n']:>9}{row['p50']:>10.1f}{row['p99']:>10.1f}{share:>15.1%}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--pairs", type=Path, default=REPO / "tests" / "data" / "cache_pairs" / "test.jsonl"
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--queries", type=int, default=300, help="lookups per size")
    parser.add_argument("--threshold", type=float, help="for the latency runs (default: shipped)")
    parser.add_argument("--quick", action="store_true", help="100 lookups per size")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--model", default="tiny", help="model for the end-to-end section")
    parser.add_argument("--skip-e2e", action="store_true", help="skip the daemon section")
    parser.add_argument("--models-dir", type=Path, default=Path(
        os.environ.get("EDGEINFER_TEST_MODELS", REPO / ".edgeinfer-test" / "models")))  # fmt: skip
    args = parser.parse_args(argv)
    queries = 100 if args.quick else args.queries

    embedder = open_minilm(args.models_dir, threads=args.threads)
    pairs = [
        json.loads(line) for line in args.pairs.read_text(encoding="utf-8").splitlines() if line
    ]
    verifier = Verifier(open_pair_scorer(args.models_dir, WEIGHTS_PATH, threads=args.threads).same)
    assert verifier.calibration is not None
    threshold = args.threshold if args.threshold is not None else verifier.calibration.cosine
    a = embedder.embed([p["a"] for p in pairs])
    b = embedder.embed([p["b"] for p in pairs])
    rows = quality(pairs, (a * b).sum(axis=1), verifier)
    print_quality(rows, pairs, args.pairs)
    vectors = dict(zip([p["a"] for p in pairs], a, strict=True))
    vectors |= dict(zip([p["b"] for p in pairs], b, strict=True))  # embedded once, above
    rows["unrelated"] = unrelated_served(vectors, pairs, verifier)
    lat = latency(embedder, pairs, args.sizes, queries, threshold, verifier)
    print_latency(lat, threshold)
    e2e = {} if args.skip_e2e else end_to_end(args.models_dir, args.model, 4 if args.quick else 8)
    if e2e:
        print_end_to_end(e2e)
    if args.json:
        args.json.write_text(json.dumps({"quality": rows, "latency": lat, "e2e": e2e}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
