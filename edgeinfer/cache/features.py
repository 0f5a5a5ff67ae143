"""What the guard compares: the answer-changing features of one question, extracted once.

:func:`features` tokenises a question and pulls out numbers with their units, negations, the
poles of opposite-word families, time expressions, named entities, languages, and "flows" (which
items stand on each side of ``to``/``from``/``than``). Pure and cached: a stored question is
compared against many incoming ones.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

from edgeinfer.cache import lexicon as lx
from edgeinfer.cache.quantities import numbers_and_units
from edgeinfer.cache.tokens import Token, content, tokenize

_QUOTED = re.compile(r"\"([^\"]{1,80})\"|`([^`]{1,80})`|'([^']{2,80})'(?![a-z])")
_ONE = frozenset({"a", "an", "one", "single", "first", "last", "only"})
_MANY = frozenset({"all", "every", "each", "some", "several", "few", "many", "multiple", "both"})
Flow = tuple[frozenset[str], frozenset[str], str]


@dataclass(frozen=True)
class Features:
    tokens: tuple[Token, ...]
    lowered: str  # " tok tok ... " for phrase lookups
    stems: frozenset[str]
    numbers: tuple[str, ...]  # values in order of appearance
    quantities: frozenset[tuple[str, str]]  # (value, unit) written together
    units: frozenset[str]  # every unit mentioned, with or without a number
    negations: int
    poles: dict[int, frozenset[int]]  # OPPOSITES index -> poles present (0, 1)
    times: frozenset[str]
    entities: frozenset[str]
    languages: frozenset[str]
    written_in: str | None  # script or Latin-language guess of the question itself
    flows: tuple[Flow, ...]  # (words before, words after, "to" | "from" | "than")
    counts: dict[str, str]  # noun -> "one" | "many", where a determiner says so
    content: tuple[str, ...]  # content stems in order (numbers included)
    acronyms: frozenset[str]  # lowercased ALLCAPS words (GDP, USA)
    initials: dict[str, frozenset[str]]  # initials of word runs -> the runs' stems


@lru_cache(maxsize=8192)
def features(text: str) -> Features:
    """The features of ``text`` (see the module docstring)."""
    tokens = tokenize(text)
    numbers, quantities, units = numbers_and_units(tokens)
    lowered = " " + " ".join(t.low for t in tokens) + " "
    return Features(
        tokens=tokens,
        lowered=lowered,
        stems=frozenset(w for t in tokens for w in (t.stem, t.low, t.compound) if w),
        numbers=tuple(numbers),
        quantities=frozenset(quantities),
        units=frozenset(units),
        negations=sum(_is_negator(t.low) for t in tokens if t.kind == "word"),
        poles=_poles(tokens, lowered),
        times=_times(tokens),
        entities=_entities(text, tokens),
        languages=_languages(tokens, lowered),
        written_in=_written_in(text, tokens),
        flows=_flows(tokens),
        counts=_counts(tokens),
        content=tuple(c for t in tokens if (c := content(t)) is not None),
        acronyms=frozenset(t.low for t in tokens if 2 <= len(t.text) <= 6 and t.text.isupper()),
        initials=_initials(tokens),
    )


def _is_negator(low: str) -> bool:
    return low in lx.NEGATORS or low.endswith("n't") or low.startswith("non-")


def _poles(tokens: tuple[Token, ...], lowered: str) -> dict[int, frozenset[int]]:
    """For each family of opposites, which of its two poles the question uses."""
    found: dict[int, set[int]] = {}
    skip = -1
    for i, tok in enumerate(tokens):
        if i <= skip or tok.kind != "word":
            continue
        flip = tok.low in lx.COMPARISON_FLIPPERS or tok.low in ("more", "most")
        if flip and i + 1 < len(tokens) and _WORD_POLES.get(tokens[i + 1].low):
            for fam, pole in _WORD_POLES[tokens[i + 1].low]:
                found.setdefault(fam, set()).add(
                    1 - pole if tok.low in lx.COMPARISON_FLIPPERS else pole
                )
            skip = i + 1
            continue
        for fam, pole in _WORD_POLES.get(tok.low, ()):
            found.setdefault(fam, set()).add(pole)
    for phrase, fam, pole in _PHRASE_POLES:
        if f" {phrase} " in lowered:
            found.setdefault(fam, set()).add(pole)
    return {fam: frozenset(poles) for fam, poles in found.items()}


def _pole_tables() -> tuple[dict[str, list[tuple[int, int]]], list[tuple[str, int, int]]]:
    words: dict[str, list[tuple[int, int]]] = {}
    phrases: list[tuple[str, int, int]] = []
    for fam, (_kind, *poles) in enumerate(lx.OPPOSITES):
        for pole, entries in enumerate(poles):
            for entry in entries:
                if " " in entry:
                    phrases.append((entry, fam, pole))
                else:
                    words.setdefault(entry, []).append((fam, pole))
    return words, phrases


_WORD_POLES, _PHRASE_POLES = _pole_tables()


def _times(tokens: tuple[Token, ...]) -> frozenset[str]:
    """Time expressions, with ``past/previous/prior`` folded into ``last`` and so on."""
    fold = {"past": "last", "previous": "last", "prior": "last", "coming": "next",
            "upcoming": "next", "following": "next"}  # fmt: skip
    found: set[str] = set()
    used = -1
    for i, tok in enumerate(tokens):
        nxt = tokens[i + 1].stem if i + 1 < len(tokens) else ""
        nxt = "autumn" if nxt == "fall" else nxt
        if tok.low in lx.TIME_MODIFIERS and nxt in lx.TIME_UNITS:
            found.add(f"{fold.get(tok.low, tok.low)} {nxt}")
            used = i + 1
        elif i != used and tok.stem in lx.TIME_WORDS:
            found.add(tok.stem)
        elif tok.low == "the" and nxt == "autumn":  # "in the fall"
            found.add("autumn")
            used = i + 1
    return frozenset(found)


def _entities(text: str, tokens: tuple[Token, ...]) -> frozenset[str]:
    """Names: capitalised mid-sentence, ALLCAPS, CamelCase, known places and products, quotes."""
    words = [t for t in tokens if t.kind == "word"]
    long_words = [t for t in words if len(t.text) > 3 and not t.initial]
    title_case = len(long_words) >= 5 and sum(t.text[0].isupper() for t in long_words) > 0.6 * len(
        long_words
    )
    found: set[str] = set()
    for tok in words:
        shape = tok.text[1:]
        capitalised = tok.text[0].isupper() and not tok.initial and not title_case
        odd_case = (len(tok.text) > 1 and tok.text.isupper()) or any(c.isupper() for c in shape)
        if tok.low == "i" or tok.low.startswith("i'"):
            continue
        if capitalised or odd_case or tok.low in lx.GAZETTEER or tok.stem in lx.GAZETTEER:
            found.add(tok.compound or tok.stem)
        elif "." in tok.text or tok.text.endswith(("++", "#")):
            found.add(tok.low)
    for match in _QUOTED.finditer(text):
        found.add("q:" + " ".join(t.low for t in tokenize(next(g for g in match.groups() if g))))
    return frozenset(found)


def _languages(tokens: tuple[Token, ...], lowered: str) -> frozenset[str]:
    found = {lx.PROGRAMMING[t.low] for t in tokens if t.low in lx.PROGRAMMING}
    found |= {t.low for t in tokens if t.low in lx.NATURAL}
    found |= {lx.PROGRAMMING[p] for p in lx.PROGRAMMING if " " in p and f" {p} " in lowered}
    for i, tok in enumerate(tokens):
        after_number = i > 0 and (tokens[i - 1].kind == "num" or tokens[i - 1].low == "°")
        if tok.text in lx.CASED_PROGRAMMING and not after_number and not tok.initial:
            found.add(lx.CASED_PROGRAMMING[tok.text])
    return frozenset(found)


def _written_in(text: str, tokens: tuple[Token, ...]) -> str | None:
    """The script of the question, or for Latin script a guess among common languages."""
    scripts = Counter(unicodedata.name(ch, "UNKNOWN").split()[0] for ch in text if ch.isalpha())
    if not scripts:
        return None
    script = scripts.most_common(1)[0][0]
    if script != "LATIN":
        return script
    lows = [t.low for t in tokens if t.kind == "word"]
    scores = sorted(
        ((sum(w in words for w in lows), lang) for lang, words in lx.LATIN_PROFILES.items()),
        reverse=True,
    )
    (best, lang), (second, _) = scores[0], scores[1]
    return lang if best >= 2 and best > second else None


def _flows(tokens: tuple[Token, ...]) -> tuple[Flow, ...]:
    """For each ``to``/``into``/``from``/``than``: content words before it and after it.

    Only flows of the same marker are compared ("from A to B" against "from B to A"): ``to``
    is also the infinitive, so "stop X from Y" and "get X to Y" must not meet.
    """
    markers = lx.FORWARD | lx.BACKWARD | lx.THAN
    flows: list[Flow] = []
    for i, tok in enumerate(tokens):
        if tok.low not in markers:
            continue
        left = _side(tokens, i, -1, markers)
        right = _side(tokens, i, 1, markers)
        if not left or not right:
            continue
        kind = "from" if tok.low in lx.BACKWARD else "than" if tok.low in lx.THAN else "to"
        flows.append((left, right, kind))
    return tuple(flows)


def _side(tokens: tuple[Token, ...], i: int, step: int, markers: frozenset[str]) -> frozenset[str]:
    """Up to three content stems from ``i`` in direction ``step``, within the clause."""
    found: list[str] = []
    j = i + step
    while 0 <= j < len(tokens) and len(found) < 3:
        tok = tokens[j]
        if tok.clause != tokens[i].clause or tok.low in markers:
            break
        word = content(tok)
        if word is not None:
            found.append(word)
        j += step
    return frozenset(found)


def _counts(tokens: tuple[Token, ...]) -> dict[str, str]:
    """Nouns that a determiner counts: "a file" -> one, "all/every/some file(s)" -> many.

    The noun is the first content word within three tokens after the determiner; nouns with no
    determiner (or both kinds) stay out, since "delete files" and "delete a file" are often
    the same question.
    """
    found: dict[str, set[str]] = {}
    for i, tok in enumerate(tokens):
        if tok.low not in _ONE and tok.low not in _MANY:
            continue
        for nxt in tokens[i + 1 : i + 4]:
            if nxt.kind != "word" or nxt.clause != tok.clause or nxt.low in lx.NUMBER_WORDS:
                break
            if (word := content(nxt)) is not None:
                found.setdefault(word, set()).add("one" if tok.low in _ONE else "many")
                break
    return {noun: kinds.pop() for noun, kinds in found.items() if len(kinds) == 1}


def _initials(tokens: tuple[Token, ...]) -> dict[str, frozenset[str]]:
    """Runs of 2-6 words by their initials, so "GDP" can match "gross domestic product"."""
    words = [t for t in tokens if t.kind == "word" and t.low not in ("of", "the", "and", "&")]
    runs: dict[str, frozenset[str]] = {}
    for start in range(len(words)):
        for end in range(start + 2, min(start + 6, len(words)) + 1):
            run = words[start:end]
            runs["".join(t.low[0] for t in run)] = frozenset(t.stem for t in run)
    return runs
