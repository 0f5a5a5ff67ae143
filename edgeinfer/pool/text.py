"""Turning sampled token bytes into safe text: UTF-8 that never splits a character, and stop
strings that may span token boundaries. Pure; the runner feeds it one token piece at a time."""

from __future__ import annotations

import codecs


class TextStream:
    """Incremental detokeniser with stop-string detection.

    ``feed`` returns the text that is safe to send now. Text that could still be the start of a
    stop string is held back until the next piece proves otherwise, so a stop string never
    leaks into the output, even when it arrives split over several tokens.
    """

    def __init__(self, stop: tuple[str, ...] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = tuple(s for s in stop if s)
        self._held = ""
        self.text = ""  # everything emitted so far
        self.stopped = False
        self.matched: str | None = None  # the stop string that ended the text

    def feed(self, piece: bytes) -> str:
        """Add one token's bytes; return the newly emittable text."""
        if self.stopped:
            return ""
        return self._push(self._decoder.decode(piece))

    def flush(self) -> str:
        """End of generation: release held text (an unfinished stop prefix is just text)."""
        if self.stopped:
            return ""
        out = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        self.text += out
        return out

    def _push(self, new: str) -> str:
        buf = self._held + new
        hits = [(i, s) for s in self._stop if (i := buf.find(s)) >= 0]
        if hits:
            cut, self.matched = min(hits, key=lambda hit: hit[0])
            self.stopped = True
            self._held = ""
            self.text += buf[:cut]
            return buf[:cut]
        keep = self._partial_stop_len(buf)
        out, self._held = buf[: len(buf) - keep], buf[len(buf) - keep :]
        self.text += out
        return out

    def _partial_stop_len(self, buf: str) -> int:
        """Length of the longest suffix of ``buf`` that is a proper prefix of a stop string."""
        best = 0
        for stop in self._stop:
            for n in range(min(len(stop) - 1, len(buf)), best, -1):
                if buf.endswith(stop[:n]):
                    best = n
                    break
        return best
