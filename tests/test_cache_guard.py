"""The semantic-cache guard: table tests per kind of near-miss, and what it lets through.

Cases here are written apart from the dev set (tests/data/semantic_pairs.jsonl) so they test the
rules; the dev set is checked as a whole at the end.
"""

from __future__ import annotations

from collections import Counter

import pytest

from edgeinfer.cache.guard import guard, reason_kind
from tests.cache_fixtures import load_pairs

REJECT = {
    "number": [
        ("Give me 3 examples of irony.", "Give me 7 examples of irony."),
        ("How much is a dozen eggs?", "How much are 6 eggs?"),
        ("Book a table for two people.", "Book a table for four people."),
        ("What changed in Django 4.2?", "What changed in Django 5.0?"),
        ("What was the inflation rate in 2008?", "What was the inflation rate in 2018?"),
        ("What is twenty-five plus 3?", "What is 25 plus 4?"),
        ("What is 12 divided by 4?", "What is 4 divided by 12?"),
    ],
    "unit": [
        ("How heavy is 3 kg of water?", "How heavy is 3 lb of water?"),
        ("Is 30 C warm?", "Is 30 F warm?"),
        ("Convert 100 MB to bits.", "Convert 100 GB to bits."),
        ("Wait 10 seconds before retrying.", "Wait 10 minutes before retrying."),
        ("How far is 5 km?", "How far is 5 miles?"),
        ("What's a good speed in km/h?", "What's a good speed in mph?"),
    ],
    "negation": [
        ("How do I enable autosave in Word?", "How do I disable autosave in Word?"),
        ("Tea with sugar recipe", "Tea without sugar recipe"),
        ("Why does the build pass?", "Why doesn't the build pass?"),
        ("Which plants are poisonous to cats?", "Which plants are safe for cats?"),
        ("How do I mount a USB drive on Linux?", "How do I unmount a USB drive on Linux?"),
        ("Is the function thread-safe?", "Is the function not thread-safe?"),
        ("What are supported file types?", "What are unsupported file types?"),
        ("How do I connect to the VPN?", "How do I disconnect from the VPN?"),
        ("Why is my server online?", "Why is my server offline?"),
    ],
    "entity": [
        ("What is the capital of Peru?", "What is the capital of Chile?"),
        ("When was Einstein born?", "When was Newton born?"),
        ("How do I install Vim plugins on Ubuntu?", "How do I install Vim plugins on Debian?"),
        ('What does "carpe diem" mean?', 'What does "memento mori" mean?'),
        ("What are the side effects of aspirin?", "What are the side effects of naproxen?"),
        ("How do I export a table from MySQL?", "How do I export a table from Oracle?"),
    ],
    "direction": [
        ("Convert GBP to JPY.", "Convert JPY to GBP."),
        ("Bus times from Leeds to York", "Bus times from York to Leeds"),
        ("How do I cast a string to a date?", "How do I cast a date to a string?"),
        ("How do I upload photos to iCloud?", "How do I download photos from iCloud?"),
        ("Sort by price in ascending order", "Sort by price in descending order"),
        ("Move mail from Inbox into Archive", "Move mail from Archive into Inbox"),
        ("What is 2 to the power of 5?", "What is 5 to the power of 2?"),
    ],
    "time": [
        ("Will it snow tomorrow in Oslo?", "Will it snow today in Oslo?"),
        ("What's open on Thursday?", "What's open on Tuesday?"),
        ("Top songs of last month", "Top songs of next month"),
        ("Is the office busy in the afternoon?", "Is the office busy at night?"),
        ("Flights to Rome in July", "Flights to Rome in November"),
    ],
    "comparison": [
        ("Is Go faster than Rust?", "Is Rust faster than Go?"),
        ("Is copper a better conductor than tin?", "Is tin a better conductor than copper?"),
        ("Which is the smallest planet?", "Which is the largest planet?"),
        ("Is renting cheaper than buying?", "Is renting more expensive than buying?"),
        ("What's the least common blood type?", "What's the most common blood type?"),
    ],
    "scope": [
        ("How do I drop the last character of a string?", "How do I drop the first character?"),
        ("How do I stop all Docker containers?", "How do I stop a Docker container?"),
        ("Delete every row in the table", "Delete one row in the table"),
        ("Show me some examples of haiku.", "Show me all examples of haiku."),
    ],
    "language": [
        ("How do I read a CSV in Python?", "How do I read a CSV in R?"),
        ("Write a linked list in C++.", "Write a linked list in Java."),
        ("How do I say hello in Dutch?", "How do I say hello in Swedish?"),
        ("¿Qué hora es en Tokio?", "What time is it in Tokyo?"),
        ("Как дела?", "How are you?"),
        ("How do I write a loop in Go?", "How do I write a loop in Rust?"),
    ],
}  # fmt: skip

PASS = [
    ("What's 15% of 80?", "How much is fifteen percent of 80?"),
    ("How do I reverse a list in Python?", "What's the way to reverse a Python list?"),
    ("How do I turn off notifications on Android?", "How can I disable Android notifications?"),
    ("Why doesn't my script run?", "Why won't my script run?"),
    ("Convert 10 miles to kilometers.", "How many kilometers is 10 miles?"),
    ("What's the GDP of France?", "How big is the gross domestic product of France?"),
    ("Who was the first president of the United States?", "Who was the first US president?"),
    ("Is Python slower than C?", "Is C faster than Python?"),
    ("How do I go from Paris to Lyon by train?", "What's the train route to Lyon from Paris?"),
    ("How do I list all files in a folder?", "What command lists every file in a folder?"),
    ("How to make pancakes from scratch", "What is a good homemade pancake recipe?"),
    ("What is the 2nd largest city in Spain?", "Which is the second largest city in Spain?"),
    ("What's the weather like right now in Oslo?", "What is the current weather in Oslo?"),
]


@pytest.mark.parametrize(
    ("kind", "a", "b"), [(kind, a, b) for kind, pairs in REJECT.items() for a, b in pairs]
)
def test_near_misses_are_rejected_with_a_reason(kind: str, a: str, b: str) -> None:
    reason = guard(a, b)
    assert reason is not None, f"{kind}: {a!r} / {b!r} passed"
    assert guard(b, a) is not None, "the guard must be symmetric"
    assert reason_kind(reason) in {"number", "unit", "negation", "entity", "direction", "time",
                                   "comparison", "scope", "language"}  # fmt: skip


@pytest.mark.parametrize(("a", "b"), PASS)
def test_rewordings_pass(a: str, b: str) -> None:
    assert guard(a, b) is None
    assert guard(b, a) is None


def test_identical_questions_pass() -> None:
    for pair in load_pairs():
        assert guard(pair["a"], pair["a"]) is None, pair["a"]


@pytest.mark.parametrize(
    ("a", "b", "kind"),
    [
        ("How much is 5 USD in EUR?", "How much is 50 USD in EUR?", "number"),
        ("Is 30 C warm?", "Is 30 F warm?", "unit"),
        ("What's on TV today?", "What's on TV tomorrow?", "time"),
        ("Python vs Ruby speed", "Python vs Perl speed", "language"),
        ("How do I enable SSH?", "How do I disable SSH?", "negation"),
    ],
)
def test_reason_names_the_kind(a: str, b: str, kind: str) -> None:
    reason = guard(a, b)
    assert reason is not None and reason_kind(reason) == kind, reason


def test_dev_set_is_labelled_and_large_enough() -> None:
    pairs = load_pairs()
    assert len(pairs) >= 200
    kinds = Counter(p["kind"] for p in pairs)
    expected = {"paraphrase", "number", "negation", "entity", "direction", "time", "comparison",
                "scope", "language", "unrelated"}  # fmt: skip
    assert set(kinds) == expected
    assert all(kinds[k] >= 12 for k in expected), kinds
    for p in pairs:
        assert set(p) == {"a", "b", "label", "kind"}
        assert p["label"] == ("same" if p["kind"] == "paraphrase" else "different")


def test_guard_on_the_dev_set() -> None:
    """Guard alone (no threshold): nearly every near-miss refused, most paraphrases kept."""
    pairs = load_pairs()
    near = [p for p in pairs if p["kind"] not in ("paraphrase", "unrelated")]
    same = [p for p in pairs if p["kind"] == "paraphrase"]
    caught = sum(guard(p["a"], p["b"]) is not None for p in near)
    kept = sum(guard(p["a"], p["b"]) is None for p in same)
    assert caught / len(near) >= 0.95, caught
    assert kept / len(same) >= 0.85, kept
