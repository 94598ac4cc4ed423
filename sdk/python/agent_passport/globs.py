"""Resource patterns of the scope grammar, matched in linear time without backtracking.

``*`` matches any text within one path segment (never ``/``), ``**`` matches any text including
``/``, every other character is literal. A resource comes from the agent (or an attacker), so the
matcher must never backtrack: Python's ``re`` took seconds on ``*a*a*a*a*b`` against 200 ``a``s.

Why not a linear-time regex engine such as ``google-re2``: every agent would need its C++
wheel, ``re2.Set`` (one pass over many rules) fails silently when its DFA runs out of memory,
and a TypeScript SDK has no such engine built in. The grammar has two wildcards, so a greedy
matcher over substring search (``str.find``/``rfind``/``startswith``; ``indexOf``/``lastIndexOf``
in TypeScript) is enough and small:

* The pattern is split on ``**`` into parts, each part on ``*`` into literal pieces (a ``*`` right
  after ``**`` adds nothing and is dropped).
* The first part is anchored at the start: each piece is placed at its leftmost occurrence that
  keeps the ``*`` before it free of ``/``. Leftmost placement gives the earliest possible end (if
  any placement works, the leftmost does, and the text it skips holds no ``/``).
* The last part is anchored at the end and placed the same way from the right (latest start).
* A part between two ``**`` is literal (:meth:`Glob.compile` refuses a ``*`` there) and is placed
  at its first occurrence after the previous part: the earliest end leaves the most room.

Cost: each piece is one ``find``/``rfind``/``startswith`` over text no other piece of the pattern
searches, so a match reads the resource about once, in C, plus one Python step per piece. A ``*``
between two ``**`` would need one attempt per path segment (``O(len(resource) * len(pattern))``,
11.8 ms at 1000 characters), hence the rule. The number of wildcards is bounded in
:mod:`agent_passport.rules`; bench/bench_rules.py measures the worst cases.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

Pieces = tuple[str, ...]

# CPython's str.find/rfind compare the whole piece at each candidate position for texts under
# 2,500 characters: O(len(text) * len(piece)), 38 µs for a 492-character piece. A longer piece
# is searched by ``re`` instead: a pattern that is one literal runs only SRE's prefix search
# (Knuth-Morris-Pratt over an overlap table), linear and without backtracking. (Searching from
# the right reverses the text first: one copy per such piece, at most MAX_RULE_WILDCARDS.)
_SHORT_PIECE = 8


@lru_cache(maxsize=1024)
def _literal(piece: str) -> re.Pattern[str]:
    return re.compile(re.escape(piece))


def _find(text: str, piece: str, start: int, end: int) -> int:
    """``text.find(piece, start, end)`` in linear time."""
    if len(piece) <= _SHORT_PIECE:
        return text.find(piece, start, end)
    found = _literal(piece).search(text, start, end)
    return found.start() if found else -1


def _rfind(text: str, piece: str, start: int, end: int) -> int:
    """``text.rfind(piece, start, end)`` in linear time: a forward search of the reversals."""
    if len(piece) <= _SHORT_PIECE:
        return text.rfind(piece, start, end)
    size = len(text)
    found = _literal(piece[::-1]).search(text[::-1], size - end, size - start)
    return size - found.start() - len(piece) if found else -1


def _place_after_stars(pieces: Pieces, text: str, pos: int, end: int) -> int:
    """Place each piece at its leftmost occurrence after the ``*`` before it, starting at
    ``pos`` and ending by ``end``; return the end of the last piece, or -1.

    A ``*`` cannot cross ``/``, so each piece must start at or before the next ``/``.
    """
    slash = -1
    for piece in pieces:
        if slash < pos:  # first piece, or the previous one held the "/": find the next one
            slash = text.find("/", pos, end)
            if slash < 0:
                slash = end
        found = _find(text, piece, pos, slash + len(piece))
        if found < 0:
            return -1
        pos = found + len(piece)
    return pos if pos <= end else -1


def _place_before_stars(pieces: Pieces, text: str, start: int, pos: int) -> int:
    """The mirror of :func:`_place_after_stars`: place the pieces from the last, each at its
    rightmost occurrence before the ``*`` after it, ending by ``pos`` and starting at or after
    ``start``; return the start of the first piece, or -1."""
    slash = pos
    for piece in reversed(pieces):
        if slash >= pos:  # first piece, or the previous one held the "/": find the next one
            slash = text.rfind("/", start, pos)
        lowest = slash + 1 - len(piece)  # the piece must reach past that "/"
        found = _rfind(text, piece, lowest if lowest > start else start, pos)
        if found < 0:
            return -1
        pos = found
    return pos


def _fit(pieces: Pieces, text: str, start: int, end: int) -> bool:
    """Does the ``*``-only pattern ``pieces`` match exactly ``text[start:end]``?"""
    first, last = pieces[0], pieces[-1]
    if len(pieces) == 1:
        return end - start == len(first) and text.startswith(first, start)
    tail = end - len(last)
    if tail < start + len(first) or not text.startswith(first, start):
        return False
    if not text.startswith(last, tail):
        return False
    pos = _place_after_stars(pieces[1:-1], text, start + len(first), tail)
    return pos >= 0 and text.find("/", pos, tail) < 0


def _earliest_end_from(pieces: Pieces, text: str, start: int, end: int) -> int:
    """Earliest end of a match of ``pieces`` that starts exactly at ``start``, or -1."""
    if not text.startswith(pieces[0], start) or start + len(pieces[0]) > end:
        return -1
    return _place_after_stars(pieces[1:], text, start + len(pieces[0]), end)


def _latest_start_to(pieces: Pieces, text: str, start: int, end: int) -> int:
    """Latest start (at or after ``start``) of a match of ``pieces`` ending exactly at ``end``."""
    last = pieces[-1]
    pos = end - len(last)
    if pos < start or not text.startswith(last, pos):
        return -1
    return _place_before_stars(pieces[:-1], text, start, pos)


@dataclass(frozen=True)
class Glob:
    """A compiled resource pattern; :meth:`matches` tells whether a whole resource matches."""

    text: str
    parts: tuple[Pieces, ...]

    @classmethod
    def compile(cls, pattern: str) -> Glob:
        """Raises ValueError for a ``*`` between two ``**`` (see the module docstring)."""
        parts = pattern.split("**")
        parts[1:] = [part.removeprefix("*") for part in parts[1:]]  # "**" "*" is "**"
        if any("*" in part for part in parts[1:-1]):
            raise ValueError("a '*' between two '**' is not supported (it makes matching slow)")
        return cls(pattern, tuple(tuple(part.split("*")) for part in parts))

    @property
    def literal(self) -> str | None:
        """The one resource this pattern matches, if it has no wildcard."""
        return self.text if len(self.parts) == 1 and len(self.parts[0]) == 1 else None

    @property
    def prefix(self) -> str | None:
        """``P`` for a pattern ``P**`` (``P`` without wildcards): everything starting with ``P``."""
        first, *rest = self.parts
        return first[0] if len(first) == 1 and rest == [("",)] else None

    @property
    def wildcards(self) -> int:
        """How many ``*`` and ``**`` (one each) the pattern holds."""
        return len(self.parts) - 1 + sum(len(pieces) - 1 for pieces in self.parts)

    @property
    def searches(self) -> bool:
        """Does some literal text sit between two wildcards? Then matching searches the
        resource (``*miner*``, ``**/.ssh/**``); otherwise it only compares at both ends."""
        if len(self.parts) == 1:
            searched = self.parts[0][1:-1]
        else:
            first, *middle, last = self.parts
            searched = (*first[1:], *(literal for (literal,) in middle), *last[:-1])
        return any(searched)

    def matches(self, resource: str) -> bool:
        parts, end = self.parts, len(resource)
        if len(parts) == 1:
            return _fit(parts[0], resource, 0, end)
        pos = _earliest_end_from(parts[0], resource, 0, end)
        if pos < 0:
            return False
        limit = _latest_start_to(parts[-1], resource, pos, end)
        for (literal,) in parts[1:-1]:
            found = _find(resource, literal, pos, limit) if limit >= 0 else -1
            if found < 0:
                return False
            pos = found + len(literal)
        return limit >= pos

    def to_posix_regex(self) -> str:
        """The same pattern as an anchored POSIX/ARE regex (for PostgreSQL's ``~``, which runs
        a DFA for expressions without back-references, so it does not backtrack either)."""

        def literal(piece: str) -> str:
            return "".join(f"\\{c}" if c.isascii() and not c.isalnum() else c for c in piece)

        parts = ("[^/]*".join(literal(piece) for piece in pieces) for pieces in self.parts)
        return "^" + ".*".join(parts) + "$"
