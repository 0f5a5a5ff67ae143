"""Router decisions, confidence, classifier, remote tier and cascade orchestration (no models)."""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from edgeinfer.bootstrap import load_classifier
from edgeinfer.config.load import check_catalogue
from edgeinfer.config.schema import RemoteSpec, RouterSettings
from edgeinfer.core.embedding import MINILM_DIM, MINILM_VECTORS
from edgeinfer.core.generation import Generation
from edgeinfer.core.options import GenerateOptions
from edgeinfer.core.tier import TierCard
from edgeinfer.core.values import Delta, Event, Failed, Finished, TokenLogprob, Usage
from edgeinfer.errors import NoSuitableModel, UpstreamError
from edgeinfer.paths import resolve
from edgeinfer.routing.classifier import Classifier, Outcome, feature_vector, train
from edgeinfer.routing.distill import DistillLog
from edgeinfer.routing.features import DEFAULT_MAX_TOKENS, N_CHEAP_FEATURES, infer_request_type
from edgeinfer.routing.policy import (
    Confidence,
    Constraints,
    confidence,
    doomed,
    eligible,
    plan,
    should_escalate,
)
from edgeinfer.routing.router import Router
from edgeinfer.service.remote import RemoteTier
from tests.tiers import Script, scripted

TINY = TierCard("tiny", 0.45, 6.0)
SMALL = TierCard("small", 0.52, 16.0)
LARGE = TierCard("large", 0.69, 28.0)
CLOUD = TierCard("cloud", 0.9, 100.0, frozenset({"vision"}), remote=True)
ALL = [LARGE, TINY, SMALL]


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("Classify the sentiment of this review: great phone", "classification"),
        ("Is this email spam or ham? WIN A PRIZE NOW", "classification"),
        ("Extract the email address from: contact bob@example.com today", "extraction"),
        ("Summarize this paragraph in one sentence: ...", "summarization"),
        ("Write a Python function that reverses a list", "code"),
        ("What does print(len('abc')) output?", "code"),
        ("Write a poem about autumn leaves", "generation"),
        ("What is the capital of Peru?", "question_answer"),
        ("How many legs does a spider have?", "question_answer"),
    ],
)
def test_request_type_is_inferred_from_the_last_turn(text: str, kind: str) -> None:
    assert infer_request_type(text) == kind


def test_default_max_tokens_follow_the_seed_table() -> None:
    assert [DEFAULT_MAX_TOKENS[k] for k in DEFAULT_MAX_TOKENS] == [50, 200, 300, 500, 1000, 1500]


@pytest.mark.parametrize(
    ("want", "names"),
    [
        (Constraints(), ["tiny", "small", "large"]),
        (Constraints(min_quality=0.5), ["small", "large"]),
        (Constraints(max_cost=20.0), ["tiny", "small"]),
        (Constraints(min_quality=0.5, max_cost=20.0), ["small"]),
    ],
    ids=["all", "floor", "ceiling", "both"],
)
def test_eligible_tiers_are_filtered_and_cheapest_first(
    want: Constraints, names: list[str]
) -> None:
    assert [t.name for t in eligible(ALL, want)] == names


@pytest.mark.parametrize(
    ("tiers", "want", "message"),
    [
        (ALL, Constraints(min_quality=0.9), "large quality 0.69 < min_quality 0.9"),
        (ALL, Constraints(max_cost=1.0), "tiny cost 6/1k > max_cost 1.0"),
        ([TINY, CLOUD], Constraints(tags=frozenset({"vision"}), max_cost=50), "cloud cost 100"),
        ([], Constraints(), "no model is configured for routing"),
    ],
    ids=["floor", "ceiling", "tags-and-cost", "empty"],
)
def test_no_suitable_model_says_why(tiers: list[TierCard], want: Constraints, message: str) -> None:
    with pytest.raises(NoSuitableModel) as err:
        eligible(tiers, want)
    assert message in err.value.message
    assert err.value.status == 422 and err.value.code == "no_suitable_model"


@pytest.mark.parametrize(
    ("route", "predicted", "expect"),
    [
        ("best", {}, ["large"]),
        ("cheapest", {}, ["large"]),  # priors: tiny and small are > 0.1 below large
        ("cheapest", {"tiny": 0.9, "small": 0.9, "large": 0.95}, ["tiny"]),
        ("cheapest", {"tiny": 0.2, "small": 0.3, "large": 0.8}, ["large"]),
        ("cascade", {"tiny": 0.9, "small": 0.9, "large": 0.95}, ["tiny", "large"]),
        ("cascade", {"tiny": 0.1, "small": 0.75, "large": 0.8}, ["small", "large"]),
        ("cascade", {"tiny": 0.1, "small": 0.2, "large": 0.8}, ["large"]),
    ],
    ids=["best", "priors", "easy", "hard", "cascade-easy", "cascade-mid", "cascade-hard"],
)
def test_plan_picks_start_and_ladder(
    route: str, predicted: dict[str, float], expect: list[str]
) -> None:
    chosen = plan(ALL, Constraints(route=route), predicted)  # type: ignore[arg-type]
    assert [t.name for t in chosen.tiers] == expect
    assert chosen.reason


@pytest.mark.parametrize(
    ("floor", "expect"), [(0.0, ["tiny", "large"]), (0.5, ["tiny", "large"]), (0.7, ["large"])]
)
def test_a_draft_likely_to_be_escalated_is_skipped(floor: float, expect: list[str]) -> None:
    """draft_floor: under it the start tier's draft would most likely be thrown away, so the
    best tier answers at once instead of after it."""
    predicted = {"tiny": 0.6, "small": 0.55, "large": 0.7}
    chosen = plan(ALL, Constraints(route="cascade"), predicted, margin=0.2, draft_floor=floor)
    assert [t.name for t in chosen.tiers] == expect
    assert ("draft_floor" in chosen.reason) is (expect == ["large"])
    # the floor only shapes a cascade: "cheapest" still takes the cheap tier
    cheapest = plan(ALL, Constraints(route="cheapest"), predicted, margin=0.2, draft_floor=floor)
    assert [t.name for t in cheapest.tiers] == ["tiny"]


def test_a_cascade_never_climbs_to_a_tier_no_better_than_its_start() -> None:
    """Two tiers of equal quality (tiny and its Q8 build): the one the classifier knows nothing
    about counts with its configured quality, which may make it the start; with nothing of
    higher quality above it the plan is that tier alone, not a crash."""
    tiny, tiny_q8 = TierCard("tiny", 0.45, 1.0), TierCard("tiny-q8", 0.45, 2.0)
    chosen = plan([tiny, tiny_q8], Constraints(route="cascade"), {"tiny": 0.1}, margin=0.2)
    assert [t.name for t in chosen.tiers] == ["tiny-q8"]
    chosen = plan([tiny, tiny_q8], Constraints(route="cascade"), {"tiny": 0.44}, margin=0.2)
    assert [t.name for t in chosen.tiers] == ["tiny"]


def _tok(logprob: float, *alts: float, piece: bytes = b"x") -> TokenLogprob:
    return TokenLogprob(piece, logprob, tuple((b"a", a) for a in alts))


def test_confidence_summarises_the_answer_head() -> None:
    conf = confidence([_tok(-0.1, -0.1, -3.0), _tok(-0.5, -0.5, -1.0), _tok(0.0, piece=b" ")])
    assert conf.tokens == 2  # whitespace-only tokens carry no signal
    assert conf.mean_logprob == pytest.approx(-0.3)
    assert conf.min_logprob == pytest.approx(-0.5)
    assert conf.score == pytest.approx(math.exp(-0.3))
    assert conf.mean_entropy > 0


def test_confidence_prefers_the_engines_exact_entropy() -> None:
    exact = [TokenLogprob(b"x", -0.2, (), entropy=0.7), TokenLogprob(b"y", -0.4, (), entropy=1.1)]
    assert confidence(exact).mean_entropy == pytest.approx(0.9)
    # Without it, the estimate from alternatives: p = 0.5 each side, ln 2.
    assert confidence([_tok(math.log(0.5), math.log(0.5), math.log(0.5))]).mean_entropy == (
        pytest.approx(math.log(2))
    )


@pytest.mark.parametrize(
    ("conf", "finish", "escalates"),
    [
        (Confidence(-0.05, -0.2, 0.1, 5), "stop", None),
        (Confidence(-1.0, -3.0, 1.5, 5), "stop", "confidence 0.37 < threshold 0.60"),
        (Confidence(-0.4, -1.0, 0.5, 5), "length", None),  # sure, though cut: kept
        (Confidence(-1.0, -3.0, 1.5, 5), "length", "0.37 < threshold 0.60 (cut at max_tokens)"),
        (Confidence(-math.inf, -math.inf, math.inf, 0), "stop", "the answer was empty"),
    ],
    ids=["sure", "unsure", "sure-cut", "unsure-cut", "empty"],
)
def test_escalation_policy(conf: Confidence, finish: str, escalates: str | None) -> None:
    why = should_escalate(conf, 0.6, finish)
    assert (why is None) == (escalates is None)
    if escalates is not None:
        assert why is not None and escalates in why


# Window 4, threshold 0.5: a draft is doomed once its logprob sum is below 4 * log(0.5) = -2.77.
@pytest.mark.parametrize(
    ("logprobs", "is_doomed"),
    [
        ([], False),
        ([-0.1, -0.2], False),
        ([-1.0, -1.0], False),  # -2.0: three perfect tokens would still reach 0.61
        ([-1.5, -1.5], True),  # -3.0: no continuation reaches 0.5
        ([-3.0], True),  # one token can doom a draft
        ([-1.5, 0.0, -1.5], True),
        ([-0.1, -0.1, -0.1, -0.1, -5.0], False),  # past the window: never read
    ],
)
def test_a_draft_is_doomed_exactly_when_no_continuation_can_reach_the_threshold(
    logprobs: list[float], is_doomed: bool
) -> None:
    tokens = [_tok(lp) for lp in logprobs]
    cut = doomed(tokens, 0.5, window=4)
    assert (cut is not None) == is_doomed
    if cut is not None:
        assert cut.score < 0.5
        # whatever follows, the finished draft's confidence stays below the threshold
        best_case = tokens + [_tok(0.0)] * 4
        assert confidence(best_case, window=4).score < 0.5
    # whitespace-only pieces carry no signal and cannot doom a draft
    assert doomed([_tok(-9.0, piece=b"\n")], 0.5, window=4) is None


def _embed(texts: Sequence[str]) -> np.ndarray:
    """A deterministic stand-in: the 'hard' word lights up one dimension."""
    return np.asarray([[1.0 if "hard" in t else 0.0, 0.5] for t in texts])


def test_classifier_learns_which_tier_is_right(tmp_path: Path) -> None:
    outcomes = []
    for i in range(20):
        easy, hard = f"easy question {i}", f"hard question {i}"
        outcomes += [Outcome(easy, "tiny", True), Outcome(hard, "tiny", False)]
        outcomes += [Outcome(easy, "large", True), Outcome(hard, "large", i % 4 != 0)]
    clf = train(outcomes, _embed)
    clf.save(tmp_path / "w.json")
    loaded = Classifier.load(tmp_path / "w.json")
    easy = loaded.predict(feature_vector("easy question 99", _embed(["easy"])[0]))
    hard = loaded.predict(feature_vector("hard question 99", _embed(["hard"])[0]))
    assert easy["tiny"] > 0.8 and hard["tiny"] < 0.2
    assert hard["large"] > hard["tiny"]
    assert loaded.predict(np.zeros(3)) == {}  # a vector of the wrong size predicts nothing
    body = json.loads((tmp_path / "w.json").read_text())
    body["tiers"]["tiny"]["weights"][0] = float("nan")  # `router train --l2 nan` wrote these
    (tmp_path / "w.json").write_text(json.dumps(body))
    with pytest.raises(ValueError, match="not finite"):
        Classifier.load(tmp_path / "w.json")


def test_a_classifier_fitted_on_another_embedders_vectors_is_passed_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A user's classifier trained before the embedder changed would read vectors it was never
    fitted on: the daemon passes it over, says why, and uses the next one (the bundled)."""
    paths = resolve()
    outcomes = [Outcome("easy", "tiny", True), Outcome("hard", "tiny", False)]
    paths.router_weights.parent.mkdir(parents=True, exist_ok=True)
    train(outcomes, _embed, meta={"embedder": "all-MiniLM-L6-v2-int8"}).save(paths.router_weights)
    with caplog.at_level(logging.WARNING):
        chosen = load_classifier(paths, RouterSettings())
    assert chosen is not None and chosen.meta["embedder"] == MINILM_VECTORS
    assert chosen.dim == N_CHEAP_FEATURES + MINILM_DIM  # the bundled one
    assert "fitted on vectors of all-MiniLM-L6-v2-int8" in caplog.text
    train(outcomes, _embed, meta={"embedder": MINILM_VECTORS}).save(paths.router_weights)
    mine = load_classifier(paths, RouterSettings())
    assert mine is not None and set(mine.tiers) == {"tiny"}


def test_router_and_remotes_tables_are_checked(tmp_path: Path) -> None:
    user = tmp_path / "models.toml"
    user.write_text(
        '[router]\ntiers = ["tiny", "nope"]\ndefault_rout = "best"\n'
        '[remotes.cloud]\nurl = "ftp://x"\nmodel = "m"\n'
    )
    from edgeinfer.config.load import bundled_catalogue_path

    catalogue, problems = check_catalogue([bundled_catalogue_path(), user])
    assert catalogue is None
    text = "\n".join(problems)
    assert "router.default_rout: unknown key (did you mean 'default_route'?)" in text
    assert "remotes.cloud.url: must be an http:// or https:// URL" in text

    user.write_text('[router]\ntiers = ["tiny", "nope"]\n[remotes.cloud]\nurl = "http://h/v1"\n')
    catalogue, problems = check_catalogue([bundled_catalogue_path(), user])
    assert any("remotes.cloud.model: required key is missing" in p for p in problems)

    user.write_text(
        '[router]\ntiers = ["tiny", "nope"]\n[remotes.cloud]\nurl = "http://h/v1"\nmodel = "m"\n'
    )
    catalogue, problems = check_catalogue([bundled_catalogue_path(), user])
    assert any("router.tiers: unknown model 'nope'" in p for p in problems)

    user.write_text(
        '[router]\ntiers = ["tiny", "cloud"]\n[remotes.cloud]\nurl = "http://h/v1"\nmodel = "m"\n'
    )
    catalogue, problems = check_catalogue([bundled_catalogue_path(), user])
    assert problems == [] and catalogue is not None
    assert (
        catalogue.remotes["cloud"].name == "cloud"
        and catalogue.remotes["cloud"].url == "http://h/v1"
    )


# -- the remote tier against a scripted upstream ------------------------------------------------


def _sse(*chunks: dict[str, Any]) -> bytes:
    return b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks) + b"data: [DONE]\n\n"


def _chunk(text: str | None = None, finish: str | None = None) -> dict[str, Any]:
    delta = {"content": text} if text is not None else {}
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


async def _drain(remote: RemoteTier, body: dict[str, Any]) -> list[Event]:
    events: list[Event] = []
    task = await remote.start(body, events.append)
    await task
    return events


def test_remote_tier_retries_then_streams_with_the_key_from_the_environment() -> None:
    seen: list[httpx.Request] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) == 1:
            return httpx.Response(503, text="warming up")
        usage = {"prompt_tokens": 5, "completion_tokens": 2}
        body = _sse(_chunk("Hel"), _chunk("lo", "stop"), {"choices": [], "usage": usage})
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    spec = RemoteSpec(name="up", url="http://up/v1", model="m", api_key_env="UP_KEY", retries=2)
    remote = RemoteTier(
        spec, env={"UP_KEY": "s3cret"}, transport=httpx.MockTransport(upstream), backoff=0
    )
    events = asyncio.run(
        _drain(remote, remote.body([{"role": "user", "content": "hi"}], {"max_tokens": 4}))
    )
    assert [e.text for e in events if isinstance(e, Delta)] == ["Hel", "lo"]
    done = events[-1]
    assert isinstance(done, Finished) and done.usage.completion_tokens == 2
    assert len(seen) == 2 and seen[-1].headers["authorization"] == "Bearer s3cret"
    sent = json.loads(seen[-1].content)
    assert sent["model"] == "m" and sent["stream"] is True and sent["max_tokens"] == 4


@pytest.mark.parametrize(
    ("status", "env", "message"),
    [
        (401, {"UP_KEY": "x"}, "answered HTTP 401"),
        (503, {"UP_KEY": "x"}, "answered HTTP 503"),  # still 503 after every retry
        (200, {}, "environment variable UP_KEY is not set"),
    ],
    ids=["auth", "exhausted", "no-key"],
)
def test_remote_tier_failures_are_upstream_errors(
    status: int, env: dict[str, str], message: str
) -> None:
    calls = []

    def upstream(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(status, text="nope")

    spec = RemoteSpec(name="up", url="http://up/v1", model="m", api_key_env="UP_KEY", retries=1)
    remote = RemoteTier(spec, env=env, transport=httpx.MockTransport(upstream), backoff=0)
    with pytest.raises(UpstreamError) as err:
        events = asyncio.run(_drain(remote, {"messages": []}))
        failed = events[-1]
        assert isinstance(failed, Failed)
        raise failed.error
    assert message in err.value.message and err.value.status == 502
    assert len(calls) == {401: 1, 503: 2, 200: 0}[status]  # 401 is not retried


# -- the cascade, with scripted tiers ------------------------------------------------------------


class Tiers:
    """Answers per tier with fixed text and per-token logprob; records what ran."""

    def __init__(self, logprob: dict[str, float]) -> None:
        self.logprob = logprob
        self.calls: list[tuple[str, GenerateOptions]] = []

    async def answer(
        self, name: str, messages: Sequence[Mapping[str, Any]], options: GenerateOptions
    ) -> Generation:
        self.calls.append((name, options))
        queue: asyncio.Queue[Event] = asyncio.Queue()
        lp = self.logprob[name]
        tokens = tuple(TokenLogprob(b"w", lp, ((b"w", lp),)) for _ in range(3))
        queue.put_nowait(Delta(f"{name} says hi", tokens if options.logprobs is not None else ()))
        queue.put_nowait(Finished("stop", Usage(10, 3, 0, 0.01, 0.02)))
        return Generation(name, f"sha-{name}", queue, prompt_tokens=10, wants_logprobs=True)


def _router(tmp_path: Path, script: Script, **settings: Any) -> Router:
    return Router(
        RouterSettings(**settings),
        tiers=scripted([TINY, LARGE], script),
        distill=DistillLog(tmp_path / "d.sqlite"),
        outcomes=tmp_path / "outcomes.jsonl",
    )


QUESTION = [{"role": "user", "content": "What is the capital of Peru? Answer in one word."}]


@pytest.mark.parametrize(
    ("logprob", "served", "escalated"),
    [(-0.01, "tiny", False), (-2.0, "large", True)],
    ids=["keeps-confident-draft", "escalates-unsure-draft"],
)
def test_cascade_keeps_or_escalates(
    tmp_path: Path, logprob: float, served: str, escalated: bool
) -> None:
    tiers = Tiers({"tiny": logprob, "large": -0.01})
    router = _router(tmp_path, tiers.answer, margin=1.0, distill=True, log_prompts=True)

    async def go() -> tuple[Generation, str]:
        gen = await router.chat(QUESTION, GenerateOptions())
        return gen, await gen.text()

    gen, text = asyncio.run(go())
    assert gen.model == served and text == f"{served} says hi"
    route = gen.route
    assert route is not None and route["escalated"] is escalated and route["route"] == "cascade"
    assert route["request_type"] == "question_answer"
    assert route["tiers"][0]["model"] == "tiny" and route["tiers"][0]["kept"] is not escalated
    assert route["tiers"][0]["confidence"]["score"] == pytest.approx(math.exp(logprob), abs=1e-3)
    # output-length control: no max_tokens given, so the request type's default applies
    assert [c[1].max_tokens for c in tiers.calls] == [500] * len(tiers.calls)
    assert tiers.calls[0][1].logprobs == 0  # logprobs to score itself, no alternatives
    stats = router.stats.as_dict()
    assert stats["escalations"] == int(escalated) and stats["drafts_kept"] == int(not escalated)
    outcome = json.loads((tmp_path / "outcomes.jsonl").read_text())
    assert outcome == {
        "prompt": QUESTION[0]["content"],
        "tier": "tiny",
        "correct": not escalated,
        "source": "cascade",
    }
    assert router.distill is not None
    router.distill.flush()
    assert router.distill.count() == int(escalated)  # only larger tiers' answers are captured
    if escalated:
        example = next(router.distill.examples())
        assert example["messages"][-1] == {"role": "assistant", "content": "large says hi"}
    else:
        assert stats["tokens_on_smaller_tiers"] == 3 and stats["compute_seconds_saved_est"] > 0


class Streaming:
    """A draft tier that streams one token per delta, each with logprob ``lp``."""

    def __init__(self, lp: float, n: int) -> None:
        self.lp, self.n = lp, n
        self.calls: list[tuple[str, GenerateOptions]] = []
        self.cancelled: list[str] = []

    async def answer(
        self, name: str, messages: Sequence[Mapping[str, Any]], options: GenerateOptions
    ) -> Generation:
        self.calls.append((name, options))
        queue: asyncio.Queue[Event] = asyncio.Queue()
        n = self.n if name == "tiny" else 2
        lp = self.lp if name == "tiny" else -0.01
        for _ in range(n):
            queue.put_nowait(Delta(" w", (TokenLogprob(b" w", lp, ((b" w", lp),)),)))
        queue.put_nowait(Finished("length", Usage(10, n, 0, 0.01, 0.5)))
        return Generation(
            name, None, queue, prompt_tokens=10, cancel=lambda: self.cancelled.append(name)
        )


def test_a_doomed_draft_is_stopped_early_and_escalated(tmp_path: Path) -> None:
    tiers = Streaming(-1.5, 64)  # 64 tokens on offer; sum < 32 * log(0.5) after 15 of them
    router = _router(tmp_path, tiers.answer, margin=1.0, confidence_threshold=0.5)
    gen = asyncio.run(router.chat(QUESTION, GenerateOptions(max_tokens=64)))
    assert gen.model == "large" and [c[0] for c in tiers.calls] == ["tiny", "large"]
    assert "tiny" in tiers.cancelled  # its slot is freed, not run to 64 tokens
    route = gen.route
    assert route is not None and route["escalated"] is True
    assert route["tiers"][0]["completion_tokens"] == 15
    assert "draft stopped early" in route["escalation_reason"]
    # The caller asked for no logprobs: the draft computes them only over the confidence window.
    assert tiers.calls[0][1].logprobs == 0 and tiers.calls[0][1].logprob_tokens == 32


def test_a_confident_long_draft_streams_on_once_its_head_is_judged(tmp_path: Path) -> None:
    tiers = Streaming(-0.1, 64)
    router = _router(tmp_path, tiers.answer, margin=1.0, confidence_threshold=0.5)
    options = GenerateOptions(max_tokens=64, logprobs=2)

    async def go() -> tuple[Generation, bool, str, list[TokenLogprob]]:
        gen = await router.chat(QUESTION, options)
        running = gen.result is None  # handed over after 32 tokens, not after 64
        text, logprobs = await gen.collect()
        return gen, running, text, logprobs

    gen, running, text, logprobs = asyncio.run(go())
    assert running and gen.model == "tiny" and [c[0] for c in tiers.calls] == ["tiny"]
    assert not tiers.cancelled
    assert text == " w" * 64 and len(logprobs) == 64  # the judged head, then the rest
    assert gen.wants_logprobs
    route = gen.route
    assert route is not None and route["escalated"] is False
    assert route["tiers"][0]["kept"] is True and route["tiers"][0]["completion_tokens"] == 64
    # The caller asked for logprobs: every token gets them, with its own top_logprobs count.
    assert tiers.calls[0][1].logprob_tokens is None and tiers.calls[0][1].logprobs == 2


def test_explicit_max_tokens_and_route_win(tmp_path: Path) -> None:
    tiers = Tiers({"tiny": -0.01, "large": -0.01})
    router = _router(tmp_path, tiers.answer)
    options = GenerateOptions(max_tokens=7, route="best")
    gen = asyncio.run(router.chat(QUESTION, options))
    assert gen.model == "large" and [c[0] for c in tiers.calls] == ["large"]
    assert tiers.calls[0][1].max_tokens == 7 and tiers.calls[0][1].logprobs is None
