"""The guard: reject a semantic hit when two questions differ in what changes the answer.

An embedding puts "convert 5 km to miles" and "convert 5 miles to km" next to each other, and
"enable" next to "disable"; a cosine threshold cannot tell them apart (on held-out near-misses a
threshold alone is right only about half the time it hits). So before the store serves a semantic
hit it asks :func:`guard`, which compares the two questions' features (features.py) rule by rule:

==============  =================================================================================
language        the question is written in another language or script, or names another
                programming or natural language ("in Rust", "to French")
number          another number, count, version or year (digits or words), or the same numbers
                in another order around a non-commutative word ("10 minus 3" / "3 minus 10")
unit            the same number with another unit, or other units mentioned
time            another time expression (today / tomorrow, next week / last week, a weekday)
negation        a different count of negations (not, never, without, n't ...), or opposite
                words (enable / disable, with / without, allow / block, add / remove)
direction       opposite direction words (upload / download, ascending / descending), or the
                same items on swapped sides of to / into / from ("A to B" / "B to A")
comparison      the same items on swapped sides of "than", or an opposite comparative
                (faster / slower) — both at once ("A faster than B" / "B slower than A") agree
scope           all / some, first / last, or "all items" against "an item"
entity          a name in one question that the other does not mention, or the same question
                with one content word exchanged (a lowercase name, a contrast no list knows)
==============  =================================================================================

Most rules need evidence on both sides (a contrast, not just an extra word), so rewording a
question, which is what a paraphrase does, mostly passes; where in doubt a rule refuses, since a
refused hit costs a generation and a wrong hit serves a wrong answer. Pure and deterministic;
called by ``CacheStore.lookup_semantic`` for each candidate above the threshold, and by the
benchmark.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from edgeinfer.cache import lexicon as lx
from edgeinfer.cache.features import Features, features

Rule = Callable[[Features, Features], str | None]


def guard(question_a: str, question_b: str) -> str | None:
    """Why ``question_b`` must not be answered with ``question_a``'s answer, or None.

    The reason starts with the rule's name (``"number: 5 vs 10"``); symmetric in its arguments.
    """
    fa, fb = features(question_a), features(question_b)
    for rule in RULES:
        reason = rule(fa, fb)
        if reason is not None:
            return reason
    return None


def reason_kind(reason: str) -> str:
    """The rule name at the start of a reason (``"number"``), for counters."""
    return reason.split(":", 1)[0]


def _language(fa: Features, fb: Features) -> str | None:
    if fa.written_in and fb.written_in and fa.written_in != fb.written_in:
        return f"language: written in {fa.written_in} vs {fb.written_in}"
    if fa.languages != fb.languages:
        return f"language: {_diff(fa.languages, fb.languages)}"
    return None


def _number(fa: Features, fb: Features) -> str | None:
    if Counter(fa.numbers) != Counter(fb.numbers):
        return f"number: {_diff(set(fa.numbers), set(fb.numbers))}"
    if fa.numbers != fb.numbers and _has_any(fa, fb, lx.NON_COMMUTATIVE):
        return f"direction: {' '.join(fa.numbers)} vs {' '.join(fb.numbers)}"
    return None


def _unit(fa: Features, fb: Features) -> str | None:
    if fa.quantities != fb.quantities:
        return f"unit: {_diff(_pairs(fa), _pairs(fb))}"
    for dimension in sorted({_dimension(u) for u in fa.units} & {_dimension(u) for u in fb.units}):
        ua = {u for u in fa.units if _dimension(u) == dimension}
        ub = {u for u in fb.units if _dimension(u) == dimension}
        if ua != ub:
            return f"unit: {_diff(ua, ub)}"
    return None


def _dimension(unit: str) -> str:
    return "rate" if "/" in unit else lx.DIMENSION.get(unit, unit)


def _time(fa: Features, fb: Features) -> str | None:
    """Different times; a time on one side only counts when it pins a day ("tomorrow")."""
    if fa.times == fb.times:
        return None
    one_sided = not fa.times or not fb.times
    if one_sided and not (fa.times | fb.times) & lx.DEICTIC_TIMES:
        return None
    return f"time: {_diff(fa.times, fb.times)}"


def _negation(fa: Features, fb: Features) -> str | None:
    if fa.negations % 2 != fb.negations % 2:
        return f"negation: {fa.negations} vs {fb.negations} negations"
    if (reason := _prefix_negation(fa, fb)) is not None:
        return reason
    return _opposites(fa, fb, {"negation", "direction", "scope"})


_NEGATING_PREFIXES = ("un", "dis", "non", "in", "im", "ir", "il")
_OPPOSITE_PREFIXES = (("on", "off"), ("in", "out"), ("up", "down"), ("over", "under"),
                      ("im", "ex"), ("in", "ex"), ("en", "de"), ("inc", "dec"), ("max", "min"),
                      ("pre", "post"), ("inter", "intra"), ("hyper", "hypo"))  # fmt: skip
_OPPOSITE_SUFFIXES = (("in", "out"), ("up", "down"), ("on", "off"))


def _prefix_negation(fa: Features, fb: Features) -> str | None:
    """``supported``/``unsupported``, ``online``/``offline``, ``upstream``/``downstream``."""
    only_a, only_b = fa.stems - fb.stems, fb.stems - fa.stems
    for one, other in ((only_a, only_b), (only_b, only_a)):
        for word in sorted(one):
            for prefix in _NEGATING_PREFIXES:
                if len(word) >= 4 and prefix + word in other:
                    return f"negation: {word} vs {prefix}{word}"
            for p, q in _OPPOSITE_PREFIXES:
                rest = word.removeprefix(p)
                if rest != word and len(rest) >= 3 and q + rest in other:
                    return f"negation: {word} vs {q}{rest}"
            for p, q in _OPPOSITE_SUFFIXES:  # stdin / stdout, zoomin / zoomout
                rest = word.removesuffix(p)
                if rest != word and len(rest) >= 3 and rest + q in other:
                    return f"direction: {word} vs {rest}{q}"
    return None


def _opposites(fa: Features, fb: Features, kinds: set[str]) -> str | None:
    for fam, (kind, pole0, pole1) in enumerate(lx.OPPOSITES):
        if kind not in kinds:
            continue
        pa, pb = fa.poles.get(fam, frozenset()), fb.poles.get(fam, frozenset())
        if len(pa) == 1 and len(pb) == 1 and pa != pb:
            return f"{kind}: {'/'.join(sorted(pole0)[:2])} vs {'/'.join(sorted(pole1)[:2])}"
    return None


def _comparison(fa: Features, fb: Features) -> str | None:
    reversed_ = _swapped(fa, fb, "than")
    contrast = _opposites(fa, fb, {"comparison"})
    if reversed_ and contrast is None:
        return f"comparison: {reversed_}"
    if contrast is not None and not reversed_:
        return contrast
    return None


def _direction(fa: Features, fb: Features) -> str | None:
    swapped = _swapped(fa, fb, "to") or _swapped(fa, fb, "from")
    return f"direction: {swapped}" if swapped else None


def _swapped(fa: Features, fb: Features, kind: str) -> str | None:
    """Two items on one side of a marker in one question and on the other side in the other."""
    for src_a, dst_a, kind_a in fa.flows:
        for src_b, dst_b, kind_b in fb.flows:
            if kind_a != kind or kind_b != kind:
                continue
            for x in sorted(src_a & dst_b):
                for y in sorted(dst_a & src_b):
                    if x != y:
                        return f"{x} → {y} vs {y} → {x}"
    return None


def _entity(fa: Features, fb: Features) -> str | None:
    for one, other in ((fa, fb), (fb, fa)):
        for name in sorted(one.entities):
            if not _mentions(other, name) and not _abbreviated(one, other, name):
                return f"entity: {name.removeprefix('q:')!r} only in one question"
    return None


def _abbreviated(one: Features, other: Features, name: str) -> bool:
    """``GDP`` in one question and "gross domestic product" in the other name the same thing."""
    if name in one.acronyms and name in other.initials:
        return True
    return any(name in one.initials.get(acronym, ()) for acronym in other.acronyms)


def _mentions(f: Features, name: str) -> bool:
    if name.startswith("q:"):
        return f" {name[2:]} " in f.lowered
    return name in f.stems or f" {name} " in f.lowered


def _scope(fa: Features, fb: Features) -> str | None:
    """ "all files" / "every file" / "some files" against "a file": how many of a thing."""
    for noun in sorted(fa.counts.keys() & fb.counts.keys()):
        if fa.counts[noun] != fb.counts[noun]:
            return f"scope: {fa.counts[noun]} vs {fb.counts[noun]} {noun}"
    return None


def _has_any(fa: Features, fb: Features, words: frozenset[str]) -> bool:
    return any(t.low in words for t in fa.tokens + fb.tokens)


def _pairs(f: Features) -> set[str]:
    return {f"{value} {unit}" for value, unit in f.quantities}


def _diff(a: set[str] | frozenset[str], b: set[str] | frozenset[str]) -> str:
    only_a = ", ".join(sorted(set(a) - set(b))) or "-"
    only_b = ", ".join(sorted(set(b) - set(a))) or "-"
    return f"{only_a} vs {only_b}"


def _swap(fa: Features, fb: Features) -> str | None:
    """The same question with one content word exchanged for another ("side effects of X").

    Near-misses are usually one-slot edits of a question; paraphrases reword more than one
    word. The slot may hold a name written in lowercase or a contrast missing from the lexicon,
    so one exchanged word is enough to refuse, unless the two are forms of one word
    ("install"/"installing") or two negations.
    """
    if len(fa.content) != len(fb.content):
        return None
    changed = [(x, y) for x, y in zip(fa.content, fb.content, strict=True) if x != y]
    if len(changed) != 1:
        return None
    x, y = changed[0]
    if x[:4] == y[:4] and (x.startswith(y) or y.startswith(x) or min(len(x), len(y)) >= 5):
        return None
    if x in lx.NEGATORS and y in lx.NEGATORS:
        return None
    return f"entity: {x!r} vs {y!r}"


RULES: tuple[Rule, ...] = (
    _language,
    _number,
    _unit,
    _time,
    _comparison,
    _negation,
    _direction,
    _scope,
    _entity,
    _swap,
)
