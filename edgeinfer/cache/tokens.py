"""Tokens of a question, as the guard's feature extractors see them.

Words (hyphenated words split, possessives and plurals stemmed), numbers and the symbols that
matter; sentences and clauses numbered so extractors know where a name starts a sentence and
where a phrase ends.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from edgeinfer.cache import lexicon as lx

_TOKEN = re.compile(
    r"(?P<num>\d+(?:[.,]\d+)*)"
    r"|(?P<word>[^\W\d_]+(?:\+\+|\#)?(?:'[^\W\d_]+)?(?:[.\-][^\W\d_]+)*)"
    r"|(?P<sym>->|→|\*\*|[$€£¥%°^/+\-*=<>?!.,;:()\[\]\"`])"
)
_SENTENCE_END = frozenset(".?!:")
_CLAUSE_END = frozenset('.?!:,;()[]"`')


@dataclass(frozen=True)
class Token:
    text: str
    low: str
    stem: str
    kind: str  # "num" | "word" | "sym"
    initial: bool  # first word of a sentence
    clause: int
    compound: str = ""  # a hyphenated word this token is part of, hyphens dropped ("wifi")


def tokenize(text: str) -> tuple[Token, ...]:
    """Words, numbers and the symbols that matter; sentences and clauses are numbered."""
    text = unicodedata.normalize("NFKC", text).replace("\u2019", "'").replace("\u2018", "'")
    out: list[Token] = []
    initial, clause = True, 0
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup or "sym"
        raw = match.group()
        if kind == "sym":
            if raw in _CLAUSE_END:
                clause += 1
                initial = initial or raw in _SENTENCE_END
            out.append(Token(raw, raw, raw, kind, False, clause))
            continue
        parts = raw.split("-") if kind == "word" else [raw]
        whole = stem(raw.replace("-", "").lower()) if len(parts) > 1 else ""
        for part in parts:
            low = part.lower()
            word_stem = stem(low) if kind == "word" else low
            out.append(Token(part, low, word_stem, kind, initial, clause, whole))
            initial = False
    return tuple(out)


def stem(word: str) -> str:
    """A light stemmer: possessive and plural endings only (enough to match names and nouns)."""
    for suffix in ("'s", "'"):
        if word.endswith(suffix):
            word = word[: -len(suffix)]
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("ches", "shes", "xes", "sses", "zes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is", "'s")):
        return word[:-1]
    return word


def content(token: Token) -> str | None:
    """The stem the order checks use, or None for function words and punctuation."""
    if token.kind == "num":
        return token.low
    if token.kind == "word" and token.low not in lx.STOPWORDS and token.stem not in lx.STOPWORDS:
        return token.stem
    return None
