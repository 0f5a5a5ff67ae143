"""TextStream: UTF-8 never split, stop strings caught across token boundaries."""

import pytest

from edgeinfer.pool.text import TextStream


@pytest.mark.parametrize(
    ("pieces", "stop", "emitted", "stopped"),
    [
        ([b"Hello", b" world"], (), ["Hello", " world"], False),
        # a multi-byte character split over two tokens is held until complete
        ([b"caf", b"\xc3", b"\xa9!"], (), ["caf", "", "\u00e9!"], False),
        # stop string inside one piece: text before it only
        ([b"one two END three"], ("END",), ["one two "], True),
        # stop string spanning three tokens: the partial prefix is held back, never leaked
        ([b"abc E", b"N", b"D tail"], ("END",), ["abc ", "", ""], True),
        # a held prefix that turns out not to be the stop string is released
        ([b"abc E", b"x"], ("END",), ["abc ", "Ex"], False),
        # the earliest of several stop strings wins
        ([b"a\n\nb###"], ("###", "\n\n"), ["a"], True),
    ],
)
def test_feed(
    pieces: list[bytes], stop: tuple[str, ...], emitted: list[str], stopped: bool
) -> None:
    stream = TextStream(stop)
    assert [stream.feed(p) for p in pieces] == emitted
    assert stream.stopped is stopped


def test_flush_releases_held_prefix_and_partial_bytes() -> None:
    stream = TextStream(("END",))
    assert stream.feed(b"tail E") == "tail "
    assert stream.flush() == "E"
    assert stream.text == "tail E"
    broken = TextStream()
    assert broken.feed(b"x\xc3") == "x"
    assert broken.flush() == "\ufffd"


def test_matched_names_the_stop_string_that_ended_the_text() -> None:
    stream = TextStream(("world", "lo w", "zzz"))
    out = "".join(stream.feed(p.encode()) for p in ("hel", "lo", " wor", "ld"))
    assert (out, stream.stopped, stream.matched) == ("hel", True, "lo w")  # the earliest wins
    plain = TextStream(("zzz",))
    plain.feed(b"hello")
    assert plain.matched is None and not plain.stopped
