"""Small talk around a question: what :func:`core` takes off, what it must never take, and the
verifier serving a wrapped repeat while still refusing a wrapped near-miss (real MiniLM)."""

from __future__ import annotations

import pytest

from edgeinfer.cache.filler import core, same_question
from edgeinfer.cache.verifier import Verifier
from edgeinfer.embed.onnx import OnnxEmbedder
from tests.cache_fixtures import (  # noqa: F401
    minilm_fixture,
    pair_scorer_fixture,
    shipped_verifier_fixture,
)

QUESTION = "How do I reset my password?"


@pytest.mark.parametrize(
    "wrapped",
    [
        "Hi there, how do I reset my password?",
        "Hey! How do I reset my password? Thanks in advance!",
        "Quick question: how do I reset my password",
        "I was wondering, how do I reset my password?",
        "Could you help me with this? How do I reset my password?",
        "Good morning team - how do I reset my password? Much appreciated :)",
        "How do I reset my password? Please keep it short.",
        "  how do I reset   my password?? thank you so much",
        "Sorry to bother you. Can you tell me how do I reset my password? Cheers",
    ],
)
def test_a_wrapped_question_has_the_same_core(wrapped: str) -> None:
    assert same_question(QUESTION, wrapped), core(wrapped)
    assert same_question(wrapped, QUESTION)


def test_thanks_after_a_quote_or_code_is_small_talk() -> None:
    asked = 'Classify the sentiment of "I love it"'
    assert same_question(asked, f"{asked} Thanks in advance!")
    assert same_question("Run `ls -la`", "Run `ls -la` thanks")
    assert not same_question("Say thank you", "Say")
    casual = "whats the chemical symbol for gold"
    assert same_question(casual, f"{casual} Thanks in advance!")
    assert same_question(casual, f"{casual} Thank you so much")
    assert not same_question(f"{casual} thanks", casual)  # a bare "thanks" may be the question
    assert not same_question("Say thank you so much", "Say")  # lower case: may be the question


@pytest.mark.parametrize(
    ("question", "wrapped"),
    [
        ("Wie lange muss ein Ei kochen?", "Hallo zusammen, wie lange muss ein Ei kochen? Danke!"),
        ("Wie lange kocht ein Ei?", "Guten Morgen! Wie lange kocht ein Ei? Vielen Dank"),
        ("Comment changer mon mot de passe ?", "Bonjour, comment changer mon mot de passe ? Merci"),
        ("¿Cuánto tarda el arroz?", "Hola, ¿cuánto tarda el arroz? Muchas gracias"),
        ("Quanto costa la successione?", "Ciao a tutti! Quanto costa la successione? Grazie"),
        ("Quanto tempo cozinha o arroz?", "Olá, quanto tempo cozinha o arroz? Obrigado"),
        ("Hoeveel vakantiegeld krijg ik?", "Hoi, hoeveel vakantiegeld krijg ik? Bedankt"),
        ("¿Cuánto tarda el arroz?", "¡Hola! ¿Cuánto tarda el arroz? ¡Gracias!"),
    ],
)
def test_greetings_and_thanks_in_other_languages_are_small_talk(
    question: str, wrapped: str
) -> None:
    assert same_question(question, wrapped), core(wrapped)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Ola de calor: ¿cuánto dura?", "¿Cuánto dura?"),  # a heat wave, not a greeting
        ("Salut en français, c'est poli ?", "En français, c'est poli ?"),
        ("¿Cómo se dice gracias?", "¿Cómo se dice merci?"),
        ("Spell backwards: thanks", "Spell backwards: merci"),  # after a colon it is asked
        ("How do I say thank you so much", "How do I say thanks in advance"),
        ("Wie sagt man danke im Voraus", "Wie sagt man vielen Dank im Voraus"),
        ("Merci ou merci beaucoup ?", "Ou merci beaucoup ?"),
        ("Comment dit-on merci ?", "Comment dit-on gracias ?"),
        ("What's the German for thank you?", "What's the German for cheers?"),
    ],
)
def test_a_foreign_greeting_or_thanks_that_is_the_question_stays(a: str, b: str) -> None:
    assert not same_question(a, b), (core(a), core(b))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Hi, how do I reset my password?", "Hi, how do I delete my account?"),
        ("Please don't delete the branch", "Delete the branch"),  # a negation is content
        ("Well water is safe to drink?", "Water is safe to drink?"),  # "well" without a comma
        ("Is it right to left?", "Is it left to right?"),
        ("What is 2 + 2? Thanks", "What is 2 + 3? Thanks"),
        ("Hi there, translate 'thank you' to French", "Translate 'thank you' to German"),
    ],
)
def test_words_inside_the_question_are_never_taken(a: str, b: str) -> None:
    assert not same_question(a, b), (core(a), core(b))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("What's the capital of Australia?", "whats the capital of australia"),
        ("Is it bad to work out on an empty stomach?", "is it bad to workout on an empty stomach"),
        ("How do I change my e-mail address?", "How do I change my email address"),
        ("What's the capital of Australia?", "What is the capital of Australia"),
        ("Why can't I log in?", "why cannot I log in"),
        ("How do I reset my password?", "How can I reset my password?"),
        ("How do I reverse a list in Python?", "how to reverse a list in python"),
        ("How do I exit vim?", "how can we exit vim"),
        ("Why doesn’t my phone charge?", "why doesnt my phone charge"),
        ("Explain what a hash table is.", "Can you explain what a hash table is?"),
        ("List the planets in order.", "Could you please list the planets in order?"),
    ],
)
def test_spelling_and_how_to_openers_do_not_make_another_question(a: str, b: str) -> None:
    assert same_question(a, b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("What is 1 2 in binary?", "What is 12 in binary?"),  # digits are never joined
        ("Is 3-4 cups enough?", "Is 34 cups enough?"),
        ("Can I work out on an empty stomach?", "Can I work on an empty stomach?"),
        ("Can I reset my password?", "Should I reset my password?"),  # modality is content
        ("How do I reset my password?", "Why do I reset my password?"),
        ("Why can I log in?", "Why can't I log in?"),
        ("How do I feel about Rust?", "How do you feel about Rust?"),  # the assistant's view
        ("How do I rate this essay?", "How would you rate this essay?"),
        ("Can you swim?", "Swim?"),  # "can you" before a verb that is not a request
        ("Can you explain what a hash table is?", "Can you explain what a hash map is?"),
    ],
)
def test_joining_words_never_joins_numbers_or_drops_a_word(a: str, b: str) -> None:
    assert not same_question(a, b)


def test_a_message_that_is_only_small_talk_stays_whole() -> None:
    for text in ("Thanks!", "Hi there", "Please", "  hello  "):
        assert core(text) == text.strip()
    assert not same_question("Thanks!", "Hi there")
    assert core("Thanks so much for the help!") == "Thanks so much for the help!"


def test_the_core_keeps_the_question_as_written() -> None:
    assert core("Hi there, how do I reset my password?") == "How do I reset my password?"
    assert core("Question: what does `git rebase -i` do? Thanks!") == (
        "What does `git rebase -i` do?"
    )
    assert core(QUESTION) == QUESTION  # nothing to take: unchanged, case and all


def test_the_verifier_serves_wrapped_repeats_and_refuses_wrapped_near_misses(
    minilm: OnnxEmbedder, shipped_verifier: Verifier
) -> None:
    verifier = shipped_verifier

    def decide(a: str, b: str) -> str | None:
        va, vb = minilm.embed([a, b])
        return verifier.check(a, b, float(va @ vb))

    stored = "Does a list use more memory than a tuple in Python?"
    assert decide(stored, f"Quick question: {stored[0].lower()}{stored[1:]} Thanks!") is None
    assert verifier.probability(stored, f"Hi there, {stored}") == 1.0
    for near_miss in (
        "Quick question: does a tuple use more memory than a list in Python? Thanks!",
        "Hi there, does a list use less memory than a tuple in Python?",
        "Could you help me with this? Does a list use more memory than a tuple in Rust?",
    ):
        assert decide(stored, near_miss) is not None, near_miss
