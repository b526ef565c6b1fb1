"""Stop strings for streamed text: never show a stop string, not even its first half.

Text arrives in small chunks (one detokenized token at a time), and a stop string such as
``"\\nUser:"`` may straddle several of them. :class:`StopMatcher` emits text as soon as it can no
longer be part of a stop string and holds back only the suffix that still could be, so the caller
streams with at most ``max(len(stop)) - 1`` characters of delay and never has to retract anything.
Memory is the stop strings themselves and the held suffix: no table of prefixes, whose size grows
with the square of a stop string's length.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopMatcher:
    """Find the first stop string in a stream of chunks.

    >>> matcher = StopMatcher(["</answer>"])
    >>> matcher.push("42</ans")
    ('42', False)
    >>> matcher.push("wer> and more")
    ('', True)

    Empty stop strings are ignored (they would stop before the first character). After a stop,
    every further :meth:`push` returns ``("", True)``.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        if isinstance(stops, str):  # a lone string is one stop, not one stop per character
            stops = [stops]
        self._stops = tuple(dict.fromkeys(stop for stop in stops if stop))
        self._held = ""
        self._stopped = False
        self._matched: str | None = None

    @property
    def stopped(self) -> bool:
        """True once a stop string has completed."""
        return self._stopped

    @property
    def matched(self) -> str | None:
        """The stop string that ended the stream (None while running or after flush without one)."""
        return self._matched

    def push(self, text: str) -> tuple[str, bool]:
        """Feed new text; return ``(text safe to show now, whether a stop string completed)``.

        On a stop the returned text ends right before the stop string; the stop string and
        anything after it are dropped.
        """
        if self._stopped:
            return "", True
        if not self._stops:
            return text, False
        buffer = self._held + text
        found, stop = self._first_stop(buffer)
        if found >= 0:
            self._held = ""
            self._stopped = True
            self._matched = stop
            return buffer[:found], True
        keep = self._partial_suffix(buffer)
        self._held = buffer[len(buffer) - keep :]
        return buffer[: len(buffer) - keep], False

    def flush(self) -> str:
        """End of generation without a stop: release the held-back text."""
        held, self._held = self._held, ""
        return "" if self._stopped else held

    def _first_stop(self, buffer: str) -> tuple[int, str]:
        """Earliest position of any stop string (-1 when none).

        The held part never contains a whole stop, so only matches ending in the new text can be
        found; the search stays proportional to ``len(held) + len(text)``.
        """
        best, best_stop = -1, ""
        for stop in self._stops:
            index = buffer.find(stop)
            if index >= 0 and (best < 0 or index < best):
                best, best_stop = index, stop
        return best, best_stop

    def _partial_suffix(self, buffer: str) -> int:
        """Length of the longest suffix of ``buffer`` that begins some stop string: only the
        positions in the last ``len(stop) - 1`` characters holding the stop's first character are
        tried."""
        longest = 0
        for stop in self._stops:
            start = max(0, len(buffer) - len(stop) + 1)
            i = buffer.find(stop[0], start)
            while i >= 0 and len(buffer) - i > longest:
                if stop.startswith(buffer[i:]):
                    longest = len(buffer) - i
                    break
                i = buffer.find(stop[0], i + 1)
        return longest
