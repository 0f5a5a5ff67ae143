"""Context optimisation for long prompts: keep the parts of a document that bear on the question.

A long pasted document costs prefill time in proportion to its tokens, while a question usually
needs a few paragraphs of it. :func:`select_context` chunks the document at paragraph
boundaries, embeds the chunks and the question with the injected embedder, and keeps the most
similar chunks that fit a token budget, in their original order, with ``[…]`` where text was
left out. :func:`optimise_messages` finds the question and the document in a chat and applies it;
the service calls it after compression when the conversation is over its budget.

:func:`optimise_document` is the default-on variant (``[prompt] documents``): it touches only a
last user turn that is a long pasted document followed (or preceded) by a *lookup* question, one
that asks for a fact the document states. A request to summarise, translate, rewrite, count or
compare needs all of the text, and so does a turn whose "question" is just the document's last
line: both are left whole (:func:`lookup_question`). Measured by scripts/eval_prompt.py.

Pure apart from the injected callables: ``count_tokens`` is the target model's tokenizer and
``embed`` returns L2-normalised rows (``Embedder.embed``), a blocking call the service runs in a
worker thread.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgeinfer.core.embedding import Vectors
from edgeinfer.prompt.compress import paragraphs
from edgeinfer.prompt.report import (
    MAX_TEXT_CHARS,
    CountTokens,
    Message,
    PromptReport,
    content_tokens,
    count_too_long,
    editable,
    text_of,
    too_long,
)

Embed = Callable[[list[str]], Vectors]

MARKER = "[…]"
GAP = f"\n\n{MARKER}\n\n"
CHUNK_TOKENS = 128  # MiniLM reads at most 256 of its own tokens; a chunk must fit whole
QUESTION_TOKENS = 64  # a trailing paragraph at most this long is taken for the question
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_WHOLE = re.compile(
    r"\b(?:summar(?:y|ies|ise|ize|ising|izing)|tl;?dr|translat\w*|rewrit\w*|rephras\w*|"
    r"paraphras\w*|proofread\w*|edit|shorten|condense|simplify|outline|overview|gist|"
    r"(?:key|main|important) (?:points?|ideas?|takeaways?|themes?|facts|arguments?)|"
    r"themes?|tone|style|structure|critique|review|improve|"
    r"list|(?:them|those|these) all|all of (?:them|those|these)|every(?:one|body|thing)|"
    r"all (?:the )?\w+ (?:mentioned|listed|named|discussed)|"
    r"every (?:time|mention|instance|occurrence|one)|each (?:of|time|mention)|"
    r"how many (?:times|mentions|instances)|count|compare|contrast|differences?|similarit\w+|"
    r"entire|whole|overall|throughout|(?:this|the) (?:document|text|article|email|passage) "
    r"(?:is|as a whole)|what (?:is|'s) (?:this|the) (?:document|text|article|email) about)\b",
    re.IGNORECASE,
)
_WHOLE_TASK = re.compile(  # what a system prompt may ask of every pasted text
    r"\b(?:summar(?:y|ies|ise|ize|ising|izing)|tl;?dr|translat\w*|rewrit\w*|rephras\w*|"
    r"paraphras\w*|proofread\w*|shorten|condense|simplify|critique|review the)\b",
    re.IGNORECASE,
)
_ASKS = re.compile(
    r"^(?:question\s*[:\-]\s*)?(?:what|who|whom|whose|when|where|which|why|how|is|are|was|were|"
    r"does|do|did|can|could|should|will|would|has|have|had|find|tell|give|name|state|identify|"
    r"according|based on|look up|quote|from the (?:document|text)|in the (?:document|text))\b",
    re.IGNORECASE,
)


def chunk_text(document: str, *, count_tokens: CountTokens, chunk_tokens: int) -> list[str]:
    """Consecutive paragraphs packed into chunks of about ``chunk_tokens`` tokens.

    A paragraph longer than that is split at sentence ends; code never is (half a function
    helps nobody), so a long code block stays one big chunk.
    """
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for paragraph in paragraphs(document):
        tokens = count_tokens(paragraph)
        long = tokens > chunk_tokens and not _is_code(paragraph)
        if current and (long or size + tokens > chunk_tokens):
            chunks.append("\n\n".join(current))
            current, size = [], 0
        if long:
            chunks.extend(_sentences(paragraph, count_tokens, chunk_tokens))
        else:
            current.append(paragraph)
            size += tokens
    if current:
        chunks.append("\n\n".join(current))
    return chunks


def _is_code(paragraph: str) -> bool:
    return "```" in paragraph or "~~~" in paragraph or paragraph.startswith(("    ", "\t"))


def _sentences(paragraph: str, count_tokens: CountTokens, chunk_tokens: int) -> list[str]:
    """One long paragraph as chunks of whole sentences."""
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for sentence in (s for s in _SENTENCE_END.split(paragraph) if s):
        tokens = count_tokens(sentence)
        if current and size + tokens > chunk_tokens:
            chunks.append(" ".join(current))
            current, size = [], 0
        current.append(sentence)
        size += tokens
    if current:
        chunks.append(" ".join(current))
    return chunks


def _pick(order: Sequence[int], sizes: Sequence[int], budget: int, gap: int) -> list[int]:
    """Greedy by similarity: take each chunk that still fits (a gap marker costs ``gap``)."""
    kept: list[int] = []
    total = 0
    for i in order:
        if total + sizes[i] + gap <= budget:
            kept.append(i)
            total += sizes[i] + gap
    return sorted(kept) or [order[0]]  # nothing fits: the best chunk beats an empty context


def assemble(chunks: Sequence[str], kept: Sequence[int]) -> str:
    """The kept chunks in document order, ``[…]`` between chunks that were not adjacent."""
    out: list[str] = []
    for k, i in enumerate(kept):
        if k:
            out.append("\n\n" if i == kept[k - 1] + 1 else GAP)
        out.append(chunks[i])
    return "".join(out)


def select_context(
    document: str,
    question: str | Sequence[str],
    *,
    budget_tokens: int,
    count_tokens: CountTokens,
    embed: Embed,
    chunk_tokens: int = CHUNK_TOKENS,
) -> tuple[str, PromptReport]:
    """The parts of ``document`` most relevant to ``question`` within ``budget_tokens``.

    ``question`` may be several (a conversation's questions about one document, oldest
    first): the first one's cut is kept as it was (what the earlier answers were read from),
    and each later one adds its best chunks within half of ``budget_tokens``. On the dev
    split's follow-ups this kept the follow-up's passage for 17 of 20 lookups, where sharing
    one budget (each question's best chunk, then the last one's) kept it for 15.
    A document within the budget comes back unchanged without being embedded. Otherwise the
    result holds at most ``budget_tokens`` tokens (plus half that for each later question),
    except when even the single best chunk is larger: it is then kept alone. The report's
    ``details`` has ``chunks_kept`` and ``chunks_total``. A document over
    :data:`MAX_TEXT_CHARS` comes back unchanged too (the report's ``too_long``).
    """
    before = count_tokens(document)
    if before <= budget_tokens:
        return document, PromptReport.unchanged(before)
    if len(document) > MAX_TEXT_CHARS:
        return document, PromptReport(before, before, too_long=1)
    chunks = chunk_text(document, count_tokens=count_tokens, chunk_tokens=chunk_tokens)
    if len(chunks) < 2:
        return document, PromptReport.unchanged(before)
    questions = [question] if isinstance(question, str) else list(question)
    if not questions:
        return document, PromptReport.unchanged(before)
    vectors = embed([*questions, *chunks])
    by_question = vectors[len(questions) :] @ vectors[: len(questions)].T  # (chunks, questions)
    similarity = by_question.max(axis=1)
    rankings = [
        sorted(range(len(chunks)), key=lambda i: (-float(by_question[i, q]), i))
        for q in range(len(questions))
    ]
    sizes = [count_tokens(c) for c in chunks]
    gap = count_tokens(GAP)
    kept = _pick(rankings[0], sizes, budget_tokens, gap)  # the first question's cut, as it was
    added: list[int] = []
    for ranking in rankings[1:]:  # each later question adds its best within half a budget
        room = budget_tokens // 2
        for i in ranking:
            if i not in kept and i not in added and sizes[i] + gap <= room:
                added.append(i)
                room -= sizes[i] + gap
    limit = budget_tokens + (budget_tokens // 2) * (len(questions) - 1)
    kept = sorted([*kept, *added])
    text = assemble(chunks, kept)
    after = count_tokens(text)
    while after > limit and len(kept) > 1:  # joins tokenised differently: trim
        pool = added or kept  # what the later questions added goes first
        drop = min(pool, key=lambda i: (float(similarity[i]), -i))
        kept.remove(drop)
        if drop in added:
            added.remove(drop)
        text = assemble(chunks, kept)
        after = count_tokens(text)
    details = {"chunks_kept": len(kept), "chunks_total": len(chunks)}
    return text, PromptReport(before, after, ["context"], details)


@dataclass(frozen=True)
class Split:
    """A turn cut into ``prefix + document + suffix``; ``question`` is what relevance is to."""

    prefix: str
    document: str
    suffix: str
    question: str


def split_question(
    text: str, count_tokens: CountTokens, question_tokens: int = QUESTION_TOKENS
) -> Split | None:
    """Find the question in a long user turn: its last paragraph when short; else a short
    first paragraph ending in ``?`` or ``:`` (question before the document); else the last
    sentence. None when there is no document beside the question.
    """
    body = text.rstrip()
    parts = paragraphs(body)
    if len(parts) >= 2 and count_tokens(parts[-1]) <= question_tokens:
        return _tail_split(text, body.rfind(parts[-1]), parts[-1])
    if len(parts) >= 2 and count_tokens(parts[0]) <= question_tokens:
        if parts[0].rstrip().endswith(("?", ":")):
            start = text.find(parts[0]) + len(parts[0])
            rest = text[start:]
            document = rest.lstrip()
            prefix = text[: len(text) - len(rest)] + rest[: len(rest) - len(document)]
            return Split(prefix, document, "", parts[0])
    sentences = [s for s in _SENTENCE_END.split(body) if s]
    if len(sentences) >= 2 and count_tokens(sentences[-1]) <= question_tokens:
        return _tail_split(text, body.rfind(sentences[-1]), sentences[-1])
    return None


def _tail_split(text: str, at: int, question: str) -> Split:
    document = text[:at].rstrip()
    return Split("", document, text[len(document) :], question)


def optimise_messages(
    messages: Sequence[Mapping[str, Any]],
    *,
    budget_tokens: int,
    count_tokens: CountTokens,
    embed: Embed,
    chunk_tokens: int = CHUNK_TOKENS,
) -> tuple[list[Message], PromptReport]:
    """Shrink the document in the chat's last user turn when the chat is over ``budget_tokens``.

    The question comes from the last user turn. When that turn is itself short (a follow-up
    question), the document is the longest earlier user message instead. The document gets
    whatever budget the other messages leave, but never less than one chunk. System and
    developer messages are never touched, nor is a message over :data:`MAX_TEXT_CHARS`.
    """
    out = [dict(m) for m in messages]
    total = content_tokens(messages, count_tokens)
    unchanged = PromptReport(total, total, too_long=count_too_long(messages))
    users = [i for i, m in enumerate(messages) if m.get("role") == "user" and editable(m)]
    if total <= budget_tokens or not users:
        return out, unchanged
    target, split = _locate(messages, users, count_tokens, chunk_tokens)
    if split is None:
        return out, unchanged
    others = total - count_tokens(messages[target]["content"])
    room = budget_tokens - others - count_tokens(split.prefix + split.suffix)
    return _cut(
        messages,
        target,
        split,
        unchanged,
        budget_tokens=max(room, chunk_tokens),
        count_tokens=count_tokens,
        embed=embed,
        chunk_tokens=chunk_tokens,
    )


def _cut(
    messages: Sequence[Mapping[str, Any]],
    target: int,
    split: Split,
    unchanged: PromptReport,
    *,
    budget_tokens: int,
    count_tokens: CountTokens,
    embed: Embed,
    chunk_tokens: int,
    action: str | None = None,
    questions: Sequence[str] = (),
) -> tuple[list[Message], PromptReport]:
    """``messages`` with ``split`` (message ``target``'s) document cut to ``budget_tokens`` by
    :func:`select_context` for ``questions`` (default: the split's own); ``unchanged`` when
    nothing was cut. ``action`` names the cut in the report (else select_context's own
    actions). Both cuts end here."""
    out = [dict(m) for m in messages]
    document, report = select_context(
        split.document,
        questions or split.question,
        budget_tokens=budget_tokens,
        count_tokens=count_tokens,
        embed=embed,
        chunk_tokens=chunk_tokens,
    )
    if not report.actions:
        return out, unchanged
    out[target]["content"] = split.prefix + document + split.suffix
    after = content_tokens(out, count_tokens)
    actions = [action] if action else report.actions
    before = unchanged.tokens_before
    return out, PromptReport(before, after, actions, report.details, unchanged.too_long)


def _locate(
    messages: Sequence[Mapping[str, Any]],
    users: list[int],
    count_tokens: CountTokens,
    chunk_tokens: int,
) -> tuple[int, Split | None]:
    """Which message holds the document, and how it splits around the question (None when
    there is no document, or it is too long to touch)."""
    last = messages[users[-1]]["content"]
    if count_tokens(last) > QUESTION_TOKENS:
        split = None if too_long(messages[users[-1]]) else split_question(last, count_tokens)
        return users[-1], split
    sizes = {i: count_tokens(messages[i]["content"]) for i in users[:-1]}
    longest = max(sizes, key=lambda i: sizes[i], default=None)
    if longest is None or sizes[longest] <= chunk_tokens or too_long(messages[longest]):
        return users[-1], None
    return longest, Split("", messages[longest]["content"], "", last)


def lookup_question(question: str, instructions: str = "") -> bool:
    """Whether ``question`` asks for a fact a part of the document holds: it reads as a question
    (ends in ``?`` or opens like one) and neither it nor the chat's ``instructions`` (system
    messages, the turn's text around the document) ask for the whole text."""
    text = question.strip()
    if not text or _WHOLE.search(text) or _WHOLE_TASK.search(instructions):
        return False
    return text.endswith("?") or _ASKS.match(text) is not None


def optimise_document(
    messages: Sequence[Mapping[str, Any]],
    *,
    min_tokens: int,
    budget_tokens: int,
    count_tokens: CountTokens,
    embed: Embed,
    chunk_tokens: int = CHUNK_TOKENS,
    follow_ups: bool = False,
) -> tuple[list[Message], PromptReport]:
    """Keep the ``budget_tokens`` most relevant tokens of a pasted document that the last user
    turn (of at least ``min_tokens``) holds beside a lookup question (:func:`lookup_question`).

    An earlier turn's document (a conversation going on about it) was cut the same way when
    it was the last turn, so no KV holds it whole, and the follow-up re-reads all of it. With
    ``follow_ups`` it is cut again instead, for its own question plus each later user turn
    that reads as one (:func:`select_context`), unless a later turn asks for the whole text
    ("now summarise it"). Off by default: on the documents' test split it lost 4 of 24
    follow-up answers (19 to 15, while 1.8x faster to the first token), on dev none.
    Anything else comes back unchanged: system messages, whole-text requests, a document
    pasted without a question (kept whole from the start, so the conversation's KV holds it).
    """
    out = [dict(m) for m in messages]
    total = content_tokens(messages, count_tokens)
    report = PromptReport(total, total, too_long=count_too_long(messages))
    system = " ".join(
        str(m.get("content")) for m in messages if m.get("role") in ("system", "developer")
    )
    users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
    asks = {  # what each user turn asks, for the documents before it (follow_ups only)
        i: _ask(text_of(messages[i].get("content")), count_tokens)
        for i in (users[1:] if follow_ups else [])
        if not too_long(messages[i])
    }
    for target in users if follow_ups else users[-1:]:
        message = messages[target]
        if not editable(message) or too_long(message):
            continue
        turn = message["content"]
        if count_tokens(turn) < min_tokens:
            continue
        split = split_question(turn, count_tokens)
        if split is None or not lookup_question(split.question, f"{system} {split.prefix}"):
            continue
        later = [ask for i, ask in asks.items() if i > target]
        if any(_WHOLE.search(ask) for ask in later):
            continue  # the conversation went on to the whole text
        questions = [split.question, *(ask for ask in later if lookup_question(ask))]
        cut, step = _cut(
            out,
            target,
            split,
            PromptReport.unchanged(report.tokens_after),
            budget_tokens=budget_tokens,
            count_tokens=count_tokens,
            embed=embed,
            chunk_tokens=chunk_tokens,
            action="document",
            questions=questions,
        )
        if step.actions:
            out, report = cut, report.then(step)
    return out, report


def _ask(turn: str, count_tokens: CountTokens) -> str:
    """What a user turn asks: the whole turn when short, else the question beside its pasted
    text ("" when there is none)."""
    if count_tokens(turn) <= QUESTION_TOKENS:
        return turn.strip()
    split = split_question(turn, count_tokens)
    return split.question.strip() if split is not None else ""
