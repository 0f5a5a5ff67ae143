"""Lossless-in-meaning prompt compression: whitespace, repeated paragraphs, opt-in abbreviations.

Called by the service (step 3 of the pipeline) through :func:`compress_messages`. Every
transform leaves code and quoted text alone, because there whitespace and wording are content:
fenced (```/~~~) and indented code blocks, blockquotes (``>`` lines), tab-separated rows,
inline ```code``` spans and ``"..."``/``“...”`` quotations. They are swapped for placeholders
before a transform runs and put back byte for byte afterwards.

System and developer messages are never touched, so the KV of the prompt's prefix stays
reusable across requests; the transforms are deterministic, so a compressed history turn
compresses to the same bytes on every later request too.

Every pass is linear in the text: the work runs in a worker thread, but a regular expression
holds the GIL for its whole call, so one that backtracks quadratically over a padded message
would freeze the daemon's event loop. No pattern here can retry a run from each of its positions
(runs are matched possessively, from their first character only), and the inline spans are found
by a scanner (:func:`_inline_spans`) instead of a lazy pattern. A message longer than
:data:`~edgeinfer.prompt.report.MAX_TEXT_CHARS` is not compressed at all (the report says so).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from edgeinfer.prompt.report import (
    CountTokens,
    Message,
    PromptReport,
    content_tokens,
    count_too_long,
    editable,
    too_long,
)

# Placeholders use private-use code points; text that already holds them is left unchanged.
_INLINE, _BLOCK, _END = "\ue000", "\ue002", "\ue001"
_SENTINELS = re.compile("[\ue000\ue001\ue002]")
_PLACEHOLDER = re.compile("[\ue000\ue002](\\d+)\ue001")

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_QUOTE_LINE = re.compile(r"^ {0,3}>")
_INDENTED = re.compile(r"^(?: {4}|\t)")
_PARA_BREAK = re.compile(r"(\n[ \t]*+\n(?:[ \t]*+\n)*+)")
# The newline that ends a paragraph (a blank line follows); no inline span runs across it.
_PARA_END = re.compile(r"\n(?=[ \t]*+\n)")
_OPENER = re.compile('[`"“]')
_TICKS = re.compile("`+")
# The whitespace passes: a run is matched from its first blank only (the lookbehind), whole.
_TRAILING = re.compile(r"(?<![ \t])[ \t]++$", re.MULTILINE)
_BETWEEN_WORDS = re.compile(r"(?<=\S)(?:\t| [ \t])[ \t]*+(?=\S)")
_BLANK_LINES = re.compile(r"\n{3,}+")

# A repeated paragraph shorter than this stays: headings and one-word lines ("## Example",
# "Yes.") repeat legitimately and carry structure; dropping them saves almost nothing.
MIN_DEDUPE_CHARS = 40

DEFAULT_ABBREVIATIONS: Mapping[str, str] = {
    "for example": "e.g.",
    "for instance": "e.g.",
    "that is to say": "i.e.",
    "in other words": "i.e.",
    "and so on": "etc.",
    "and so forth": "etc.",
    "et cetera": "etc.",
    "in order to": "to",
    "so as to": "to",
    "as soon as possible": "ASAP",
    "due to the fact that": "because",
    "owing to the fact that": "because",
    "in spite of the fact that": "although",
    "despite the fact that": "although",
    "at this point in time": "now",
    "at the present time": "now",
    "in the event that": "if",
    "in the near future": "soon",
    "a large number of": "many",
    "the majority of": "most",
    "prior to": "before",
    "with regard to": "regarding",
    "with respect to": "regarding",
    "in the absence of": "without",
    "is able to": "can",
    "are able to": "can",
    "has the ability to": "can",
    "have the ability to": "can",
    "frequently asked questions": "FAQ",
    "by the way": "BTW",
}
"""Verbose phrase → short form; only phrases whose short form means exactly the same."""


@dataclass
class _Masked:
    """A text with its protected spans swapped for placeholders."""

    text: str
    spans: list[str] = field(default_factory=list)

    def hide(self, original: str, marker: str) -> str:
        self.spans.append(original)
        return f"{marker}{len(self.spans) - 1}{_END}"

    def restore(self, text: str) -> str:
        return _PLACEHOLDER.sub(lambda m: self.spans[int(m[1])], text)


def _tabular(line: str) -> bool:
    """A tab-separated row: two or more tabs, none beside a space (that is messy prose)."""
    return line.count("\t") >= 2 and " \t" not in line and "\t " not in line


def _block_end(lines: list[str], i: int) -> int:
    """Index after the protected block starting at line ``i``, or ``i`` for a prose line."""
    line, n = lines[i], len(lines)
    if fence := _FENCE.match(line):
        mark = fence[1]
        closing = re.compile(rf"^ {{0,3}}{re.escape(mark[0])}{{{len(mark)},}}[ \t]*$")
        j = i + 1
        while j < n and not closing.match(lines[j]):
            j += 1
        return min(j + 1, n)  # an unclosed fence runs to the end, as in Markdown
    if _QUOTE_LINE.match(line) or _tabular(line):
        j = i + 1
        while j < n and (_QUOTE_LINE.match(lines[j]) or _tabular(lines[j])):
            j += 1
        return j
    if _INDENTED.match(line) and line.strip() and (i == 0 or not lines[i - 1].strip()):
        j = i + 1
        while j < n and (_INDENTED.match(lines[j]) or not lines[j].strip()):
            j += 1
        while j > i + 1 and not lines[j - 1].strip():  # trailing blank lines are prose
            j -= 1
        return j
    return i


def _mask(text: str) -> _Masked:
    """Hide code blocks, blockquotes and tabular rows, then inline code and quotations."""
    masked = _Masked(text)
    lines = text.split("\n")
    out: list[str] = []
    prose: list[str] = []
    i = 0
    while i < len(lines):
        end = _block_end(lines, i)
        if end == i:
            prose.append(lines[i])
            i += 1
            continue
        if prose:
            out.append(_mask_inline(masked, "\n".join(prose)))
            prose = []
        out.append(masked.hide("\n".join(lines[i:end]), _BLOCK))
        i = end
    if prose:
        out.append(_mask_inline(masked, "\n".join(prose)))
    masked.text = "\n".join(out)
    return masked


def _mask_inline(masked: _Masked, prose: str) -> str:
    out: list[str] = []
    pos = 0
    for start, end in _inline_spans(prose):
        out += (prose[pos:start], masked.hide(prose[start:end], _INLINE))
        pos = end
    out.append(prose[pos:])
    return "".join(out)


class _Ahead:
    """The next match of a pattern at or after a position, asked for positions that only grow.

    The answer is kept until the position passes it, so a thousand unclosed quotes ask the text
    once, not a thousand times each to the end of the paragraph.
    """

    def __init__(self, text: str, pattern: re.Pattern[str]) -> None:
        self._text, self._pattern, self._at = text, pattern, -1

    def __call__(self, pos: int) -> int:
        """Where the first match at or after ``pos`` starts; ``len(text)`` when there is none."""
        if self._at < pos:
            found = self._pattern.search(self._text, pos)
            self._at = len(self._text) if found is None else found.start()
        return self._at


class _Runs:
    """The text's backtick runs by length: a closing run is looked up, never scanned for."""

    def __init__(self, text: str) -> None:
        self._starts: dict[int, list[int]] = {}
        for run in _TICKS.finditer(text):
            self._starts.setdefault(run.end() - run.start(), []).append(run.start())
        self._passed: dict[int, int] = {}

    def first(self, length: int, pos: int) -> int:
        """Start of the first run of exactly ``length`` backticks at or after ``pos`` (which
        only grows between calls); -1 when there is none."""
        starts = self._starts.get(length, [])
        i = self._passed.get(length, 0)
        while i < len(starts) and starts[i] < pos:
            i += 1
        self._passed[length] = i
        return starts[i] if i < len(starts) else -1


def _inline_spans(prose: str) -> Iterator[tuple[int, int]]:
    """``(start, end)`` of each inline code span and quotation in ``prose``, left to right.

    A run of n backticks opens a span that closes at the next run of exactly n; when there is
    none, its first n-1 backticks open it, and so on. A ``"`` closes at the next ``"``, a ``“``
    at the next ``”``. No span runs across a blank line. This is what the lazy pattern
    ``(`+)…+?\\1|"…"|“…”`` matched, found in one pass over the text.
    """
    para_end = _Ahead(prose, _PARA_END)
    closer = {'"': _Ahead(prose, re.compile('"')), "“": _Ahead(prose, re.compile("”"))}
    runs = _Runs(prose)
    pos = 0
    while opener := _OPENER.search(prose, pos):
        start = opener.start()
        limit = para_end(start)
        if prose[start] != "`":
            close = closer[prose[start]](start + 1)
            if close < limit:
                yield start, close + 1
                pos = close + 1
            else:
                pos = start + 1
            continue
        ticks = _TICKS.match(prose, start)
        assert ticks is not None
        pos = ticks.end()
        for n in range(pos - start, 0, -1):
            close = runs.first(n, pos)
            if 0 <= close < limit:
                yield start, close + n
                pos = close + n
                break


def _whitespace(text: str) -> str:
    text = _TRAILING.sub("", text)
    # Runs between words only: leading indentation is list structure, so it stays. Any run but
    # a lone space becomes one space.
    text = _BETWEEN_WORDS.sub(" ", text)
    return _BLANK_LINES.sub("\n\n", text).strip("\n")


def _dedupe(masked: _Masked, text: str) -> tuple[str, int]:
    """Drop later exact repeats of a paragraph; a paragraph holding a code block always stays."""
    parts = _PARA_BREAK.split(text)
    seen: set[str] = set()
    kept: list[str] = []
    dropped = 0
    for k in range(0, len(parts), 2):
        paragraph = parts[k]
        key = " ".join(masked.restore(paragraph).split())
        if _BLOCK not in paragraph and len(key) >= MIN_DEDUPE_CHARS:
            if key in seen:
                dropped += 1
                continue
            seen.add(key)
        if kept and k > 0:
            kept.append(parts[k - 1])  # the break that preceded this paragraph
        kept.append(paragraph)
    return "".join(kept), dropped


@lru_cache(maxsize=8)
def _phrase_pattern(phrases: tuple[str, ...]) -> re.Pattern[str]:
    ordered = sorted(phrases, key=len, reverse=True)  # longest first: "for example" wins
    alternatives = (r"\s++".join(map(re.escape, p.split())) for p in ordered)
    return re.compile(rf"\b(?:{'|'.join(alternatives)})\b", re.IGNORECASE)


def _abbreviate(text: str, table: Mapping[str, str]) -> tuple[str, int]:
    if not table:
        return text, 0
    lookup = {" ".join(k.lower().split()): v for k, v in table.items()}
    count = 0

    def short(m: re.Match[str]) -> str:
        nonlocal count
        count += 1
        found, out = m[0], lookup[" ".join(m[0].lower().split())]
        if found.isupper() and len(found) > 1:
            out = out.upper()
        elif found[0].isupper():
            out = out[0].upper() + out[1:]
        if out.endswith(".") and m.string[m.end() : m.end() + 1] == ".":
            out = out[:-1]  # "... and so on." must not become "etc.."
        return out

    return _phrase_pattern(tuple(lookup)).sub(short, text), count


def _guarded(text: str) -> _Masked | None:
    return None if _SENTINELS.search(text) else _mask(text)


def normalize_whitespace(text: str) -> str:
    """Collapse runs of blanks between words, trailing blanks and runs of blank lines."""
    masked = _guarded(text)
    return text if masked is None else masked.restore(_whitespace(masked.text))


def dedupe_paragraphs(text: str) -> str:
    """Drop repeats of a paragraph (compared with whitespace normalised), keeping the first."""
    masked = _guarded(text)
    return text if masked is None else masked.restore(_dedupe(masked, masked.text)[0])


def abbreviate(text: str, table: Mapping[str, str] = DEFAULT_ABBREVIATIONS) -> str:
    """Replace whole-word verbose phrases with their short forms, keeping the capitalisation."""
    masked = _guarded(text)
    return text if masked is None else masked.restore(_abbreviate(masked.text, table)[0])


def paragraphs(text: str) -> list[str]:
    """The paragraphs of ``text`` (split at blank lines, never inside a code block), verbatim
    but for trailing newlines.

    Used by context selection to chunk a document without cutting code apart.
    """
    masked = _guarded(text)
    parts = _PARA_BREAK.split(text if masked is None else masked.text)[::2]
    restore = (lambda p: p) if masked is None else masked.restore
    return [restore(p).rstrip("\n") for p in parts if p.strip()]


def compress_text(text: str, table: Mapping[str, str] | None = None) -> tuple[str, dict[str, int]]:
    """All transforms on one text, masking once; the counts say which of them acted."""
    masked = _guarded(text)
    if masked is None:
        return text, {}
    counts: dict[str, int] = {}
    current = _whitespace(masked.text)
    if current != masked.text:
        counts["whitespace"] = 1
    current, dropped = _dedupe(masked, current)
    if dropped:
        counts["dedupe"] = dropped
    if table:
        current, replaced = _abbreviate(current, table)
        if replaced:
            counts["abbreviate"] = replaced
    return masked.restore(current), counts


def compress_messages(
    messages: Sequence[Mapping[str, Any]],
    *,
    abbreviations: bool = False,
    count_tokens: CountTokens,
    table: Mapping[str, str] | None = None,
) -> tuple[list[Message], PromptReport]:
    """Compress the user/assistant contents; every other message comes back byte-identical.

    Args:
        messages: the chat as the client sent it (not modified).
        abbreviations: apply the abbreviation table (off by default: it rewords the user's text).
        count_tokens: the target model's token counter, for the report.
        table: the abbreviations to use when enabled; :data:`DEFAULT_ABBREVIATIONS` if None.

    Returns:
        New message dicts, and the report (``details`` holds ``paragraphs_dropped`` and
        ``abbreviations`` counts; ``too_long`` the contents left as sent for their length).
    """
    use = (DEFAULT_ABBREVIATIONS if table is None else table) if abbreviations else None
    out: list[Message] = []
    totals: dict[str, int] = {}
    for message in messages:
        new = dict(message)
        if editable(message) and not too_long(message):
            new["content"], counts = compress_text(message["content"], use)
            for name, n in counts.items():
                totals[name] = totals.get(name, 0) + n
        out.append(new)
    actions: list[str] = [a for a in ("whitespace", "dedupe", "abbreviate") if a in totals]
    details = {"paragraphs_dropped": totals.get("dedupe", 0)} if "dedupe" in totals else {}
    if "abbreviate" in totals:
        details["abbreviations"] = totals["abbreviate"]
    before = content_tokens(messages, count_tokens)
    after = content_tokens(out, count_tokens) if actions else before
    return out, PromptReport(before, after, actions, details, count_too_long(messages))
