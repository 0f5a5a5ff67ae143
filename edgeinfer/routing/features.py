"""Cheap features of a request: its type and how hard it looks.

The request type picks a default ``max_tokens`` (output-length control) and is one input of the
complexity classifier. Both run on every routed request, so they are regexes over the last user
turn, not a model.
"""

from __future__ import annotations

import math
import re
from typing import Literal, get_args

RequestType = Literal[
    "classification", "extraction", "summarization", "question_answer", "generation", "code"
]
REQUEST_TYPES: tuple[RequestType, ...] = get_args(RequestType)

# The seed's table: a default answer length per request type, in tokens.
DEFAULT_MAX_TOKENS: dict[RequestType, int] = {
    "classification": 50,
    "extraction": 200,
    "summarization": 300,
    "question_answer": 500,
    "generation": 1000,
    "code": 1500,
}

_WORDS = {
    "classification": r"classify|categori[sz]e|sentiment|which category|spam or|positive or"
    r"|is this (?:review|message|email|text|tweet) |label (?:it|this)|which language",
    "extraction": r"extract|pull out|find (?:the|all) .{0,30}(?:in|from) |list (?:all|every)"
    r" .{0,30}(?:in|from|mentioned)|what is the (?:email|phone|date|price|name) (?:in|of) ",
    "summarization": r"summari[sz]e|summary|tl;?dr|in one sentence|main (?:point|idea|topic)"
    r"|give (?:a|the) title|what is (?:this|the) (?:text|paragraph|passage) about",
    "code": r"```|\bdef |\bfunction\b|\bclass \w|\bimport \w|python|javascript|typescript|\bsql\b"
    r"|\bregex\b|\bbash\b|\bcode\b|\bprint\(|console\.log|\bcompile|\bbug\b|\bsnippet",
    "generation": r"\bwrite (?:a|an|me|the)\b|\bcompose\b|\bstory\b|\bpoem\b|\bessay\b"
    r"|\bdraft\b|\bbrainstorm|\bslogan|\bhaiku|\blimerick|\bcreate a\b|\bgenerate\b",
}
_PATTERNS = {kind: re.compile(rx, re.IGNORECASE) for kind, rx in _WORDS.items()}
# Checked in this order: an extraction request may mention "summary"; code beats generation
# because "write a function" is code.
_ORDER: tuple[RequestType, ...] = (
    "classification",
    "extraction",
    "summarization",
    "code",
    "generation",
)


def infer_request_type(text: str) -> RequestType:
    """The request type of a user turn; ``question_answer`` when nothing more specific fits."""
    for kind in _ORDER:
        if _PATTERNS[kind].search(text):
            return kind
    return "question_answer"


_STEP = re.compile(r"\b(?:then|after that|next|finally|step|first|second|third)\b", re.IGNORECASE)
_TASK = re.compile(
    r"\b(?:explain|why|prove|derive|compare|analy[sz]e|calculate|compute|how many|how much"
    r"|estimate|reason|justify|optimi[sz]e|design|implement|debug)\b",
    re.IGNORECASE,
)
_SHORT = re.compile(
    r"\b(?:one word|single word|just the|only the|yes or no|true or false|briefly|in short"
    r"|short answer|reply with|answer with)\b",
    re.IGNORECASE,
)
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_OPERATOR = re.compile(r"\d\s*[-+*/×÷^%]\s*\d")


def cheap_features(text: str) -> list[float]:
    """A fixed-length vector of surface features, each scaled to roughly 0..1.

    The order is part of the trained classifier's format: append, never reorder.
    """
    words = text.split()
    numbers = _NUMBER.findall(text)
    kind = infer_request_type(text)
    return [
        min(math.log1p(len(words)) / 6.0, 1.5),
        min(text.count("?") / 3.0, 1.0),
        min(len(_STEP.findall(text)) / 3.0, 1.0),
        min(len(_TASK.findall(text)) / 3.0, 1.0),
        1.0 if _SHORT.search(text) else 0.0,
        min(len(numbers) / 6.0, 1.0),
        1.0 if _OPERATOR.search(text) else 0.0,
        min(max((len(n) for n in numbers), default=0) / 6.0, 1.0),
        min(text.count("\n") / 10.0, 1.0),
        *(1.0 if kind == k else 0.0 for k in REQUEST_TYPES),
    ]


N_CHEAP_FEATURES = 9 + len(REQUEST_TYPES)
