"""The prompt layer's pure transforms: compression, context selection, history summaries.

Table-driven: each case is one input and the exact output expected. Token counts use a word
counter and relevance the deterministic bag-of-words fake embedder, except for the one real test
at the end, which runs the MiniLM embedder over the long-context evaluation set.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from edgeinfer.embed.fake import FakeEmbedder
from edgeinfer.embed.onnx import OnnxEmbedder
from edgeinfer.prompt.compress import (
    abbreviate,
    compress_messages,
    compress_text,
    dedupe_paragraphs,
    normalize_whitespace,
    paragraphs,
)
from edgeinfer.prompt.context import (
    MARKER,
    chunk_text,
    optimise_messages,
    select_context,
    split_question,
)
from edgeinfer.prompt.history import SUMMARY_PREFIX, split_history, summarise_history
from edgeinfer.prompt.report import PromptReport
from tests.cache_fixtures import minilm_fixture  # noqa: F401

LONG_CONTEXT = Path(__file__).parent / "data" / "long_context.jsonl"
FENCE = "```"


def words(text: str) -> int:
    return len(text.split())


def para(topic: str, n: int = 12) -> str:
    """A paragraph of ``n`` words about ``topic`` (distinct words per topic)."""
    return " ".join(f"{topic}{i % 4}" for i in range(n - 1)) + "."


# -- whitespace ---------------------------------------------------------------------------------

CODE = f"{FENCE}python\nx  =  1   \n\n\n\ny\t=\t2\n{FENCE}"
WHITESPACE = [
    ("runs-between-words", "a   b\tc   d \t e", "a b c d e"),
    ("trailing-blanks", "line one   \nline two\t", "line one\nline two"),
    ("blank-line-runs", "p1\n\n\n\n\np2", "p1\n\np2"),
    ("blank-lines-of-spaces", "p1\n   \n \t \n\np2", "p1\n\np2"),
    ("outer-blank-lines", "\n\n\nhello\n\n\n", "hello"),
    ("one-blank-line-kept", "p1\n\np2", "p1\n\np2"),
    ("indentation-kept", "- item\n  - nested   item", "- item\n  - nested item"),
    ("fenced-code", f"text   here\n{CODE}\nafter   it", f"text here\n{CODE}\nafter it"),
    ("tilde-fence", "a  b\n~~~\nx   y\n~~~", "a b\n~~~\nx   y\n~~~"),
    ("unclosed-fence", f"a  b\n{FENCE}\nx   y  ", f"a b\n{FENCE}\nx   y  "),
    ("indented-code", "Ex:\n\n    a  =  1\n\n\n    b   = 2\n\nafter   this",
     "Ex:\n\n    a  =  1\n\n\n    b   = 2\n\nafter this"),
    ("inline-code", "use `a   b` now  please", "use `a   b` now please"),
    ("double-backtick-code", "x ``a ` b   c``  y", "x ``a ` b   c`` y"),
    ("double-quotes", 'he said "so   it  goes"   then', 'he said "so   it  goes" then'),
    ("curly-quotes", "she wrote “a    b”  twice", "she wrote “a    b” twice"),
    ("quote-across-lines", 'a  "one  \ntwo   three"  b', 'a "one  \ntwo   three" b'),
    ("blockquote", "> a   b  \n> c\n\n\n\nd   e", "> a   b  \n> c\n\nd e"),
    ("stray-tabs-are-prose", "a\tb  \t c\t d", "a b c d"),
    ("tab-separated-rows", "name\tage\tcity\nbob\t\t\tparis", "name\tage\tcity\nbob\t\t\tparis"),
    ("sentinel-in-input", "a\ue000  b", "a\ue000  b"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in WHITESPACE],
                         ids=[c[0] for c in WHITESPACE])  # fmt: skip
def test_normalize_whitespace(text: str, expected: str) -> None:
    assert normalize_whitespace(text) == expected


# -- repeated paragraphs ------------------------------------------------------------------------

P = "The ferry runs nine times a day in summer and five in winter."
Q = "The library lends gardening tools as well as books to members."
P_WRAPPED = P.replace(" day ", " day\n")
DEDUPE = [
    ("repeat-dropped", f"{P}\n\n{Q}\n\n{P}", f"{P}\n\n{Q}"),
    ("first-occurrence-kept", f"{Q}\n\n{P}\n\n{P}\n\n{Q}", f"{Q}\n\n{P}"),
    ("whitespace-variant", f"{P}\n\n{Q}\n\n{P.replace(' ', '   ')}  ", f"{P}\n\n{Q}"),
    ("wrapped-variant", f"{P}\n\n{P_WRAPPED}", P),
    ("case-differs-kept", f"{P}\n\n{P.upper()}", f"{P}\n\n{P.upper()}"),
    ("short-repeat-kept", "## Notes\n\nabc\n\n## Notes\n\ndef",
     "## Notes\n\nabc\n\n## Notes\n\ndef"),
    ("code-block-repeat-kept", f"{CODE}\n\n{P}\n\n{CODE}", f"{CODE}\n\n{P}\n\n{CODE}"),
    ("repeat-inside-code-kept", f"{FENCE}\n{P}\n\n{P}\n{FENCE}", f"{FENCE}\n{P}\n\n{P}\n{FENCE}"),
    ("blockquote-repeat-kept", f"> {P}\n\n> {P}", f"> {P}\n\n> {P}"),
    ("separators-kept", f"{P}\n\n\n{Q}\n\n{P}\n\n\n\nend", f"{P}\n\n\n{Q}\n\n\n\nend"),
    ("quoted-repeat-dropped", f'"{P}" he said.\n\n"{P}" he said.', f'"{P}" he said.'),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in DEDUPE],
                         ids=[c[0] for c in DEDUPE])  # fmt: skip
def test_dedupe_paragraphs(text: str, expected: str) -> None:
    assert dedupe_paragraphs(text) == expected


# -- abbreviations ------------------------------------------------------------------------------

ABBREVIATIONS = [
    ("lowercase", "use a map, for example, here", "use a map, e.g., here"),
    ("sentence-start", "For example, this.", "E.g., this."),
    ("all-caps", "IN ORDER TO WIN", "TO WIN"),
    ("to-acronym", "reply as soon as possible please", "reply ASAP please"),
    ("no-double-full-stop", "apples, pears and so on.", "apples, pears etc."),
    ("long-phrase-wins", "due to the fact that it rained", "because it rained"),
    ("across-line-break", "in order\nto go", "to go"),
    ("extra-spaces-inside", "at this  point in   time we stop", "now we stop"),
    ("whole-words-only", "within order to, for examples, prior tox",
     "within order to, for examples, prior tox"),
    ("inline-code-kept", "run `in order to` now", "run `in order to` now"),
    ("quote-kept", 'he said "for example" twice', 'he said "for example" twice'),
    ("code-block-kept", f"{FENCE}\nfor example = 1\n{FENCE}", f"{FENCE}\nfor example = 1\n{FENCE}"),
    ("blockquote-kept", "> in order to\n\nin order to", "> in order to\n\nto"),
    ("several", "Prior to that, a large number of people came.",
     "Before that, many people came."),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in ABBREVIATIONS],
                         ids=[c[0] for c in ABBREVIATIONS])  # fmt: skip
def test_abbreviate(text: str, expected: str) -> None:
    assert abbreviate(text) == expected


def test_abbreviate_with_a_custom_table() -> None:
    assert abbreviate("Kubernetes and kubernetes", {"kubernetes": "k8s"}) == "K8s and k8s"
    assert abbreviate("for example", {}) == "for example"


MESSY = [
    ("prose", f"Hello   there.  \n\n\n\n{P}\n\n{P}\n\nFor example, this."),
    ("code-and-quotes", f'x  "a   b"\n\n{CODE}\n\n{CODE}\n\n> q   q\n\n`for example`'),
    ("indented", "Ex:\n\n    a  =  1\n\n\n\n    b = 2\n\nin order to   win"),
]


@pytest.mark.parametrize("text", [c[1] for c in MESSY], ids=[c[0] for c in MESSY])
def test_compression_is_idempotent(text: str) -> None:
    """A history turn compressed again on the next request gives the same bytes (prefix reuse)."""
    once, _ = compress_text(text, {"for example": "e.g.", "in order to": "to"})
    twice, counts = compress_text(once, {"for example": "e.g.", "in order to": "to"})
    assert twice == once and counts == {}


def test_paragraphs_keep_code_blocks_whole() -> None:
    text = f"intro\n\n{CODE}\n\n\n\nend  \n"
    assert paragraphs(text) == ["intro", CODE, "end  "]


# -- messages -----------------------------------------------------------------------------------

SYSTEM = f"You are   terse.\n\n\n\n{P}\n\n{P}\n\nFor example, say yes.  "


def chat(*turns: str, system: str = SYSTEM) -> list[dict[str, Any]]:
    roles = ("user", "assistant")
    return [{"role": "system", "content": system}] + [
        {"role": roles[i % 2], "content": t} for i, t in enumerate(turns)
    ]


@pytest.mark.parametrize("role", ["system", "developer", "tool"])
def test_pinned_roles_stay_byte_identical(role: str) -> None:
    messages = [{"role": role, "content": SYSTEM}, {"role": "user", "content": SYSTEM}]
    out, report = compress_messages(messages, abbreviations=True, count_tokens=words)
    assert out[0]["content"].encode() == SYSTEM.encode()
    assert out[1]["content"] == f"You are terse.\n\n{P}\n\nE.g., say yes."
    assert report.actions == ["whitespace", "dedupe", "abbreviate"]
    assert report.details == {"paragraphs_dropped": 1, "abbreviations": 1}
    assert report.tokens_before - report.tokens_after == words(P) + 1  # "For example" -> "E.g."


REPORTS = [
    ("nothing-to-do", chat("hi there", "hello"), False, [], {}),
    ("whitespace-only", chat("hi   there", "hello  "), False, ["whitespace"], {}),
    ("assistant-too", chat("hi", f"{P}\n\n{P}"), False, ["dedupe"], {"paragraphs_dropped": 1}),
    ("abbreviations-off", chat("for example"), False, [], {}),
    ("abbreviations-on", chat("for example", "in order to"), True, ["abbreviate"],
     {"abbreviations": 2}),
]  # fmt: skip


@pytest.mark.parametrize(("messages", "abbreviations", "actions", "details"),
                         [c[1:] for c in REPORTS], ids=[c[0] for c in REPORTS])  # fmt: skip
def test_compress_messages_reports_what_acted(
    messages: list[dict[str, Any]], abbreviations: bool, actions: list[str], details: dict[str, int]
) -> None:
    original = json.dumps(messages)
    out, report = compress_messages(messages, abbreviations=abbreviations, count_tokens=words)
    assert json.dumps(messages) == original  # the input is not modified
    assert out[0] == messages[0] and [m["role"] for m in out] == [m["role"] for m in messages]
    assert (report.actions, report.details) == (actions, details)
    assert report.tokens_after == sum(words(m["content"]) for m in out)


def test_non_text_content_is_left_alone() -> None:
    parts = [{"type": "text", "text": "a   b"}]
    out, report = compress_messages([{"role": "user", "content": parts}], count_tokens=words)
    assert out[0]["content"] is parts and report.actions == []
    assert report.tokens_before == 2


def test_reports_chain() -> None:
    first = PromptReport(100, 80, ["whitespace", "dedupe"], {"paragraphs_dropped": 2})
    second = PromptReport(80, 30, ["context"], {"chunks_kept": 2, "chunks_total": 9})
    both = first.then(second)
    assert both.as_dict() == {
        "tokens_before": 100, "tokens_after": 30, "tokens_removed": 70,
        "actions": ["whitespace", "dedupe", "context"],
        "paragraphs_dropped": 2, "chunks_kept": 2, "chunks_total": 9,
    }  # fmt: skip


# -- context selection --------------------------------------------------------------------------

TOPICS = ["ferry", "bakery", "violin", "glacier", "tide", "robot", "orchard", "lantern"]
DOCUMENT = "\n\n".join(para(t) for t in TOPICS)  # 8 paragraphs of 12 words


SELECTIONS = [
    # (id, question, budget, kept topics in document order)
    ("one-fits", "violin0 violin1", 12, ["violin"]),
    ("two-in-order", "robot0 bakery0 bakery1 robot1 robot2", 30, ["bakery", "robot"]),
    ("adjacent-no-marker", "violin1 glacier2", 30, ["violin", "glacier"]),
    ("best-when-nothing-fits", "tide1 tide2", 5, ["tide"]),
    ("first-and-last", "ferry0 lantern3", 30, ["ferry", "lantern"]),
]  # fmt: skip


@pytest.mark.parametrize(("question", "budget", "kept"), [c[1:] for c in SELECTIONS],
                         ids=[c[0] for c in SELECTIONS])  # fmt: skip
def test_select_context_keeps_relevant_chunks_in_order(
    question: str, budget: int, kept: list[str]
) -> None:
    text, report = select_context(
        DOCUMENT, question, budget_tokens=budget, count_tokens=words,
        embed=FakeEmbedder(64).embed, chunk_tokens=12,
    )  # fmt: skip
    expected = [para(t) for t in kept]
    gaps = [TOPICS.index(b) - TOPICS.index(a) > 1 for a, b in zip(kept, kept[1:], strict=False)]
    assert [p for p in text.split("\n\n") if p != MARKER] == expected
    assert text.count(MARKER) == sum(gaps)
    assert report.details == {"chunks_kept": len(kept), "chunks_total": len(TOPICS)}
    assert report.actions == ["context"] and report.tokens_after == words(text)
    assert report.tokens_after <= budget or len(kept) == 1


def test_select_context_leaves_a_short_document_unembedded() -> None:
    fake = FakeEmbedder(64)
    text, report = select_context(
        DOCUMENT, "tide", budget_tokens=1000, count_tokens=words, embed=fake.embed
    )
    assert text == DOCUMENT and report.actions == [] and fake.calls == []


def test_select_context_leaves_one_big_chunk() -> None:
    text, report = select_context(
        para("x", 50), "x1", budget_tokens=10, count_tokens=words, embed=FakeEmbedder(64).embed
    )
    assert text == para("x", 50) and report.actions == []


CHUNKS = [
    ("packs-paragraphs", "a b\n\nc d\n\ne f g", 4, ["a b\n\nc d", "e f g"]),
    ("long-paragraph-by-sentence", "a b. c d. e f.\n\ng", 4, ["a b. c d.", "e f.", "g"]),
    ("code-never-split", f"{FENCE}\na b c\n\nd e f\n{FENCE}\n\ng", 2,
     [f"{FENCE}\na b c\n\nd e f\n{FENCE}", "g"]),
]  # fmt: skip


@pytest.mark.parametrize(("document", "size", "chunks"), [c[1:] for c in CHUNKS],
                         ids=[c[0] for c in CHUNKS])  # fmt: skip
def test_chunk_text(document: str, size: int, chunks: list[str]) -> None:
    assert chunk_text(document, count_tokens=words, chunk_tokens=size) == chunks


LONG = "\n\n".join(para(t, 30) for t in TOPICS[:3])
SPLITS = [
    ("last-paragraph", f"{LONG}\n\nWhat about ferry0?", ("", LONG, "\n\nWhat about ferry0?",
                                                          "What about ferry0?")),
    ("first-paragraph", f"Answer this: what about ferry0?\n\n{LONG}",
     ("Answer this: what about ferry0?\n\n", LONG, "", "Answer this: what about ferry0?")),
    ("last-sentence", f"{LONG} So what about ferry0?",
     ("", LONG, " So what about ferry0?", "So what about ferry0?")),
    ("no-document", "What about ferry0?", None),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in SPLITS],
                         ids=[c[0] for c in SPLITS])  # fmt: skip
def test_split_question(text: str, expected: tuple[str, str, str, str] | None) -> None:
    split = split_question(text, words, question_tokens=10)
    got = None if split is None else (split.prefix, split.document, split.suffix, split.question)
    assert got == expected
    if split is not None:
        assert split.prefix + split.document + split.suffix == text


def _optimise(messages: list[dict[str, Any]], budget: int) -> tuple[list[dict[str, Any]], Any]:
    return optimise_messages(
        messages, budget_tokens=budget, count_tokens=words, embed=FakeEmbedder(64).embed,
        chunk_tokens=12,
    )  # fmt: skip


def test_optimise_messages_shrinks_the_last_user_turn_only() -> None:
    messages = chat("earlier question", "earlier answer", f"{DOCUMENT}\n\nWhat about robot2?")
    out, report = _optimise(messages, 60)
    assert out[:3] == messages[:3] and out[0]["content"].encode() == SYSTEM.encode()
    assert out[3]["content"].endswith("\n\nWhat about robot2?")
    assert para("robot") in out[3]["content"] and para("ferry") not in out[3]["content"]
    assert report.actions == ["context"] and report.tokens_after <= 60
    assert report.tokens_before == sum(words(m["content"]) for m in messages)


def test_optimise_messages_follow_up_question_selects_from_the_earlier_document() -> None:
    messages = chat(DOCUMENT, "I have read it.", "what about glacier1")
    out, report = _optimise(messages, 60)
    assert para("glacier") in out[1]["content"] and para("tide") not in out[1]["content"]
    assert out[2:] == messages[2:] and report.details["chunks_total"] == len(TOPICS)


@pytest.mark.parametrize("budget", [10_000, 60], ids=["under-budget", "no-document"])
def test_optimise_messages_leaves_a_chat_it_cannot_help(budget: int) -> None:
    messages = chat("hi", "hello", "what about glacier1")
    messages[0]["content"] = DOCUMENT  # over budget, but only the system message is long
    out, report = _optimise(messages, budget)
    assert out == messages and report.actions == []


# -- history ------------------------------------------------------------------------------------

HISTORY = [
    # (id, roles, keep_last, indices summarised)
    ("short-chat", ["system", "user"], 4, []),
    ("oldest-turns", ["system", "user", "assistant", "user", "assistant", "user", "assistant",
                      "user"], 4, [1, 2, 3]),
    ("tail-starts-with-assistant", ["user", "assistant", "user", "assistant", "user"], 4, [0]),
    ("tail-would-start-with-user", ["user", "assistant", "user", "assistant", "user", "assistant"],
     4, [0]),
    ("tool-result-keeps-its-call", ["user", "assistant", "tool", "assistant", "user"], 3, [0]),
    ("system-in-the-middle-stays", ["user", "assistant", "system", "user", "assistant", "user"],
     2, [0, 1, 3]),
    ("keep-none", ["system", "user", "assistant", "user"], 0, [1, 2, 3]),
]  # fmt: skip


@pytest.mark.parametrize(("roles", "keep_last", "old"), [c[1:] for c in HISTORY],
                         ids=[c[0] for c in HISTORY])  # fmt: skip
def test_split_history(roles: list[str], keep_last: int, old: list[int]) -> None:
    messages = [{"role": r, "content": str(i)} for i, r in enumerate(roles)]
    assert split_history(messages, keep_last) == (old, old[0] if old else -1)


class FakeSummariser:
    """Records each transcript; answers with a fixed summary."""

    def __init__(self, summary: str = "they discussed ferries.") -> None:
        self.summary = summary
        self.calls: list[str] = []

    async def __call__(self, transcript: str) -> str:
        self.calls.append(transcript)
        return self.summary


async def test_summarise_history_replaces_the_oldest_turns() -> None:
    turns = [f"turn {i} " + para(TOPICS[i], 20) for i in range(7)]
    messages = chat(*turns)
    summariser = FakeSummariser()
    out, report = await summarise_history(
        messages, budget_tokens=100, count_tokens=words, summarise=summariser
    )
    assert out[0] == messages[0] and out[0]["content"].encode() == SYSTEM.encode()
    assert out[1] == {"role": "user", "content": SUMMARY_PREFIX + "they discussed ferries."}
    assert out[2:] == messages[4:]  # the last four turns, starting with an assistant turn
    assert summariser.calls == ["\n\n".join(f"{m['role']}: {m['content']}" for m in messages[1:4])]
    assert report.actions == ["history"] and report.details == {"messages_summarised": 3}
    assert report.tokens_after == sum(words(m["content"]) for m in out) < report.tokens_before


@pytest.mark.parametrize(("budget", "summary"), [(10_000, "x"), (10, "  ")],
                         ids=["under-budget", "empty-summary"])  # fmt: skip
async def test_summarise_history_leaves_a_chat_it_cannot_help(budget: int, summary: str) -> None:
    messages = chat(*(para(t, 20) for t in TOPICS[:6]))
    summariser = FakeSummariser(summary)
    out, report = await summarise_history(
        messages, budget_tokens=budget, count_tokens=words, summarise=summariser
    )
    assert out == messages and report.actions == []
    assert len(summariser.calls) == (0 if budget > 1000 else 1)


# -- the real embedder --------------------------------------------------------------------------


def _normalised(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.real
def test_real_embedder_keeps_the_answer_of_every_long_context_item(minilm: OnnxEmbedder) -> None:
    """Each item's document is ~1,900 tokens in ~20 paragraphs; the question needs one of them."""
    items = [json.loads(line) for line in LONG_CONTEXT.read_text("utf-8").splitlines() if line]
    assert len(items) >= 20
    for item in items:
        text, report = select_context(
            item["document"], item["question"], budget_tokens=300, count_tokens=words,
            embed=minilm.embed,
        )  # fmt: skip
        assert _normalised(item["evidence"]) in _normalised(text), item["id"]
        assert re.search(item["answer"], text, re.IGNORECASE), item["id"]
        assert report.tokens_after <= 300 < report.tokens_before, item["id"]
