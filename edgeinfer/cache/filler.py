"""The question inside a message: greetings, thanks and polite frames taken off its ends.

People wrap the same question in different small talk ("Hi there, how do I ...", "Quick
question: ...", "... Thanks in advance!"). The words of a wrapper say nothing about the answer,
yet to the verifier's features they are unmatched words, the very signal of a near-miss: on the
workload benchmark no wrapped repeat of a cached question was served. :func:`core` strips
wrappers from both ends, one known phrase at a time, and only there ("Can you explain X?" is
"Explain X?": a request verb after "can you" marks a polite frame, while "Can you swim?" keeps
it): a word inside the question
is never touched, and a message that is nothing but a wrapper is kept whole. The verifier
compares the cores; two messages whose cores are equal up to case, spacing, end punctuation,
contractions and apostrophes ("What's" / "what is" / "whats"), the space or hyphen inside a word
("work out" / "workout", "e-mail" / "email") and the way a how-to question opens ("How do I" /
"How can I" / "how to" / "What's the way to") ask the same thing. Digits are never joined: "1 2"
is not "12". Each of these equivalences was checked on the labelled pairs: none makes a
near-miss look the same.

Pure; the phrase lists are English, plus greetings and thanks in German, Dutch, French,
Spanish, Italian and Portuguese (their polite frames, "Können Sie mir sagen ...", stay, and the
verifier reads them as it always did).
"""

from __future__ import annotations

import re

_GREETING = r"(?:hi|hello|hey|hiya|howdy|greetings|good (?:morning|afternoon|evening)|dear \w+)"
_GREETING_ELSEWHERE = (
    r"(?:hallo|hoi|moin|servus|guten (?:morgen|tag|abend)|goedemorgen|goedemiddag|bonjour|"
    r"bonsoir|salut|hola|buenos d[ií]as|buenas(?: tardes| noches)?|ciao|salve|buongiorno|"
    r"buonasera|ol[aá]|oi|bom dia|boa (?:tarde|noite))"
)
"""Greetings in the other languages of the labelled set (German, Dutch, French, Spanish,
Italian, Portuguese); taken only before a comma or stop ("Hola, ...", "Guten Morgen! ..."),
since without one they may be the question's first word ("Salut en français, c'est poli ?",
"Ola de calor: ..." is a heat wave)."""
_OPENERS = (
    rf"{_GREETING}(?: there| all| everyone| team| again)?",
    rf"{_GREETING_ELSEWHERE}(?: (?:zusammen|allemaal|à tous|a todos|a tutti))?(?= *[,.!])",
    r"(?:ok(?:ay)?|so|um+|uh+|alright)",
    r"(?:well|right)(?=[,.!])",  # "well water", "right angle" start questions too
    r"(?:a |one |just a |another )?(?:quick|simple|small|random|short|silly|dumb)? ?"
    r"question(?: for you)?",
    r"(?:i was|i am|i'm|just) wondering(?: if you (?:could|can) (?:tell me|help))?",
    r"(?:can|could|would|will) you (?:please |kindly )?"
    r"help me(?: out)?(?: with this| with something| here)?",
    r"(?:can|could|would|will) you (?:please |kindly )?(?:tell|let) me(?: know)?",
    r"(?:can|could|would|will) you(?: please| kindly)?(?= (?:please )?(?:explain|describe|show|"
    r"list|give|define|summari[sz]e|outline|clarify|translate|compare|recommend|suggest)\b)",
    r"(?:do|would) you (?:happen to )?know",
    r"(?:i'?d|i would) (?:like|love) to know",
    r"i (?:want|need) to know",
    r"(?:please |kindly )?(?:tell|let) me(?: know)?",
    r"(?:please|kindly|pls|plz)",
    r"(?:i have|i've got|got) a (?:quick |simple )?question",
    r"help me(?: out)?(?: with this)?",
    r"sorry to bother you",
)
_THANKS = (
    r"(?:thanks|thank you|thx|ty|cheers|many thanks)(?: (?:so|very) much)?(?: in advance)?"
    r"(?: for (?:your|the) help)?",
    r"(?:danke(?: schön| sehr| im voraus)?|vielen dank(?: im voraus)?|dank je(?: wel)?|"
    r"dank u(?: wel)?|bedankt|merci(?: beaucoup| d'avance)?|gracias(?: de antemano)?|"
    r"muchas gracias|grazie(?: mille| in anticipo)?|obrigad[oa])",
)
"""Thanks, taken only after the question's own punctuation, a closing quote or bracket:
"What's the German for thank you?" ends in the words it asks about."""
_THANKS_AT_LENGTH = (
    r"(?=(?-i:[A-Z]))(?:thanks|thank you|many thanks|danke|vielen dank|merci|gracias|"
    r"muchas gracias|grazie)"
    r"(?: (?:so|very) much| in advance| for (?:your|the) help| im voraus| d'avance| de antemano|"
    r" in anticipo)+"
)
"""Thanks no question asks about, taken after a plain space too when they open a new sentence
with a capital ("whats the chemical symbol for gold Thanks in advance!": many people type
without punctuation). Lower-case they may be what is asked: "How do I say thank you so much"."""
_CLOSERS = (
    r"(?:much )?appreciated",
    r"(?:i'?d )?appreciate (?:it|any help|your help)",
    r"(?:please|pls|plz)",
    r"(?:please )?(?:keep it|be) (?:short|brief|concise)(?: please)?",
    r"(?:in short|briefly|short answer(?: please)?)",
    r"any help (?:is|would be) (?:appreciated|great)",
    r"[:;]-?[)D]",
)
_PUNCT = r"[\s,.:;!?\-–—]*"
_LEAD = re.compile(rf"^\s*¡?(?:{'|'.join(_OPENERS)})(?=[\s,.:;!?\-–—]|$){_PUNCT}", re.IGNORECASE)
_TAIL = re.compile(
    rf"(?:(?:^|(?<=[\s,.:;!?]))(?:{'|'.join(_CLOSERS)})|(?<=\s)¡?{_THANKS_AT_LENGTH}"
    rf"|(?:^|(?<=[,.;!?\"'’”)\]`]))\s*¡?"
    rf"(?:{'|'.join(_THANKS)})){_PUNCT}$",
    re.IGNORECASE,
)
"""A closer at the end. Bare thanks only after a stop, comma, closing quote or bracket, never a
colon: after "Spell backwards:" the thanks is the question."""
_ROUNDS = 6  # phrases taken from each end at most
_MIN_CHARS = 3  # a "question" shorter than this after stripping was nothing but a wrapper
_PLAIN_SPACES = re.compile(r"\s+")
_END_PUNCT = re.compile(r"[\s.?!,;:]+$")
_APOSTROPHES = re.compile(r"['’`´]")
_LETTER_GAP = re.compile(r"(?<=[^\W\d_])[\s\-‐]+(?=[^\W\d_])")  # between two letters
_SPELLED = {
    **{f"{w}s": f"{w} is" for w in "what who where how when it that there here".split()},
    **{f"{w}nt": f"{w} not" for w in "do does did is are was were should could would has have had"
       " must need".split()},  # fmt: skip
    "cant": "can not", "wont": "will not", "aint": "is not",  # "can not" joins to "cannot"
    "im": "i am", "ive": "i have", "youre": "you are", "theyre": "they are",
}  # fmt: skip
"""Contractions as typed without their apostrophe, spelled out."""
_CONTRACTION = re.compile(r"\b(?:" + "|".join(sorted(_SPELLED, key=len, reverse=True)) + r")\b")
_HOW_TO = re.compile(
    r"^(?:how (?:do|can|could|should) (?:i|we|one)|how does one|how to|what is the way to)\b"
)
"""How-to openers that ask for the same steps. Not "how do you" or "how would you": "How do you
feel about Rust?" asks the assistant's view, "How do I feel about Rust?" is another question."""


def core(text: str) -> str:
    """``text`` without the greetings, thanks and polite frames at its start and end."""
    out = text.strip()
    for _ in range(_ROUNDS):
        before = out
        out = _LEAD.sub("", out, count=1)
        out = _TAIL.sub("", out, count=1).rstrip(" ,;:-–—")
        if out == before:
            break
    if len(_plain(out)) < _MIN_CHARS:
        return text.strip()
    if out != text.strip() and out[:1].islower():
        out = out[:1].upper() + out[1:]  # the question now starts the sentence
    return out


def _plain(text: str) -> str:
    return _END_PUNCT.sub("", _PLAIN_SPACES.sub(" ", text.strip().lower()))


def _canonical(text: str) -> str:
    """:func:`_plain` with contractions spelled out, one how-to opener, no apostrophes and no
    gaps between letters: two questions with the same canonical form ask the same thing."""
    out = _CONTRACTION.sub(lambda m: _SPELLED[m[0]], _APOSTROPHES.sub("", _plain(text)))
    return _LETTER_GAP.sub("", _HOW_TO.sub("how do i", out))


def same_question(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` are one question in different small talk."""
    return same_core(core(a), core(b))


def same_core(a: str, b: str) -> bool:
    """Whether two questions' :func:`core` have the same :func:`_canonical` form."""
    return _canonical(a) == _canonical(b)
