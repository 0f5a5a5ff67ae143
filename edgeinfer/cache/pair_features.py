"""What the verifier sees of a (stored, incoming) question pair: a short vector of numbers.

Near-misses are mostly one-slot edits of a question ("in Rust" / "in Go", "list than tuple" /
"tuple than list"); paraphrases reword it. So beside the two sentences' cosine, the features
describe the words the two questions do NOT share: how many there are, how well each is matched
by a word of the other question in context (MiniLM's token states,
:class:`~edgeinfer.core.embedding.Words`), whether they are numbers or names, whether shared
words come in another order, and which of the guard's rules fire. Pure and symmetric in the
two questions.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from edgeinfer.cache import lexicon as lx
from edgeinfer.cache.features import features
from edgeinfer.cache.guard import RULE_KINDS, guard_kinds
from edgeinfer.cache.tokens import stem
from edgeinfer.core.embedding import Words

NAMES: tuple[str, ...] = (
    "cosine",
    "unmatched_share",
    "substitutions",
    "unmatched_max_side",
    "worst_alignment",
    "mean_unmatched_alignment",
    "best_substitute",
    "unmatched_number",
    "unmatched_name",
    "order_inversions",
    "length_ratio",
    "alignment_f1",
    "one_sided",
    "identical_content",
    "question_word_mismatch",
    "modal_mismatch",
    *(
        f"changed_{group}"
        for group in (
            "negation",
            "modal",
            "relation",
            "quantifier",
            "comparative",
            "conjunction",
            "question",
            "other",
        )
    ),
    *(f"guard_{kind}" for kind in RULE_KINDS),
)


def pair_features(
    a: str, b: str, words_a: Words, words_b: Words, cosine: float
) -> NDArray[np.float32]:
    """The feature vector of one pair, in the order of :data:`NAMES`."""
    ia, ib = _content(words_a), _content(words_b)
    la = [_lexical(words_a.names[i]) for i in ia]
    lb = [_lexical(words_b.names[i]) for i in ib]
    kinds = guard_kinds(a, b)
    flags = [float(kind in kinds) for kind in RULE_KINDS]
    frames = [
        _mismatch(words_a, words_b, _QUESTION_WORDS),
        _mismatch(words_a, words_b, _MODALS),
        *_changed_function_words(a, b),
    ]
    if not ia or not ib:
        empty = [cosine, 1.0, 0.0, float(max(len(ia), len(ib))), 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
        return np.array([*empty, 0.0, 0.0, 1.0, 0.0, *frames, *flags], dtype=np.float32)
    sims = words_a.vectors[ia] @ words_b.vectors[ib].T
    set_a, set_b = set(la), set(lb)
    ua = [k for k, w in enumerate(la) if w not in set_b]
    ub = [k for k, w in enumerate(lb) if w not in set_a]
    align_a, align_b = sims.max(axis=1), sims.max(axis=0)
    unmatched = np.concatenate([align_a[ua], align_b[ub]])
    best_sub = float(sims[np.ix_(ua, ub)].max()) if ua and ub else 0.0
    names_a = [words_a.names[ia[k]] for k in ua]
    names_b = [words_b.names[ib[k]] for k in ub]
    recall, precision = float(align_a.mean()), float(align_b.mean())
    return np.array(
        [
            cosine,
            (len(ua) + len(ub)) / (len(la) + len(lb)),
            float(min(len(ua), len(ub), 3)),
            float(min(max(len(ua), len(ub)), 6)),
            float(unmatched.min()) if unmatched.size else 1.0,
            float(unmatched.mean()) if unmatched.size else 1.0,
            best_sub,
            float(any(_numeric(w) for w in names_a + names_b)),
            float(
                any(_named(words_a, ia[k]) for k in ua) or any(_named(words_b, ib[k]) for k in ub)
            ),
            _inversions(la, lb),
            min(len(la), len(lb)) / max(len(la), len(lb)),
            2 * recall * precision / max(recall + precision, 1e-6),
            float(not ua or not ub) if (ua or ub) else 0.0,
            float(not ua and not ub),
            *frames,
            *flags,
        ],
        dtype=np.float32,
    )


_QUESTION_WORDS = frozenset(
    "what when where who whom whose why which how many much long often far old big".split()
)
_MODALS = frozenset(
    "can could should must may might need have allowed legal illegal worth safe possible "
    "required mandatory recommended okay ok".split()
)


_FUNCTION_GROUPS: tuple[frozenset[str], ...] = (
    lx.NEGATORS,
    frozenset("can could should must may might shall will would did".split()),
    frozenset(
        "to from into onto before after in out on off up down with without over under "
        "above below for against between through".split()
    ),  # fmt: skip
    frozenset("all any some none each every first last only both either neither".split()),
    frozenset("more less most least fewer better worse".split()),
    frozenset("and or but nor".split()),
    _QUESTION_WORDS,
)


def _changed_function_words(a: str, b: str) -> list[float]:
    """How many function words of each group one question has and the other lacks.

    "How do I" / "How can I" changes a word of no group ("do"); "can I" / "should I" changes a
    modal; the learned model weighs which changes matter. The last count is every other
    function word (articles, pronouns, auxiliaries), capped.
    """
    la = {t.low for t in features(a).tokens if t.low in lx.STOPWORDS or t.low in _ALL}
    lb = {t.low for t in features(b).tokens if t.low in lx.STOPWORDS or t.low in _ALL}
    changed = la ^ lb
    counts = [float(len(changed & group)) for group in _FUNCTION_GROUPS]
    other = changed - _ALL
    return [*counts, float(min(len(other), 5))]


def _mismatch(words_a: Words, words_b: Words, vocabulary: frozenset[str]) -> float:
    """1.0 when both questions use words of ``vocabulary`` and not the same ones."""
    sa = {n.lower() for n in words_a.names} & vocabulary
    sb = {n.lower() for n in words_b.names} & vocabulary
    return float(bool(sa) and bool(sb) and sa != sb)


_ALL = frozenset().union(*_FUNCTION_GROUPS)


def _content(words: Words) -> list[int]:
    """Indices of the words that carry meaning: not punctuation, not function words."""
    return [
        i
        for i, name in enumerate(words.names)
        if any(c.isalnum() for c in name) and name.lower() not in lx.STOPWORDS
    ]


def _lexical(name: str) -> str:
    low = name.lower()
    return str(lx.NUMBER_WORDS.get(low, stem(low)))


def _numeric(name: str) -> bool:
    return any(c.isdigit() for c in name) or name.lower() in lx.NUMBER_WORDS


def _named(words: Words, index: int) -> bool:
    """A capitalised word that does not start the question or a sentence."""
    name = words.names[index]
    if not name[:1].isupper() or index == 0:
        return False
    previous = words.names[index - 1]
    return previous not in {".", "?", "!", ":", '"'}


def _inversions(la: list[str], lb: list[str]) -> float:
    """Share of shared-word pairs that come in the opposite order in the other question."""
    pos_b = {w: i for i, w in enumerate(lb)}
    order = [pos_b[w] for w in dict.fromkeys(la) if w in pos_b]
    pairs = len(order) * (len(order) - 1) / 2
    if pairs == 0:
        return 0.0
    swapped = sum(
        1 for i in range(len(order)) for j in range(i + 1, len(order)) if order[i] > order[j]
    )
    return swapped / pairs
