"""Resource patterns of the scope grammar, matched in linear time without regular expressions.

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
* Each middle part is placed at its earliest end between them. A failed attempt from a start
  fails the same way for every later start before the next ``/``, so the next attempt begins
  after that ``/``: at most one attempt per path segment.

Cost: ``O(len(resource) + len(pattern))`` steps, except for a part between two ``**`` that holds
both ``/`` and ``*``: it is tried once per path segment, ``O(len(resource) * len(pattern))`` at
worst (the bound of any automaton; bench/bench_rules.py measures it). The lengths are bounded in
:mod:`agent_passport.rules`.
"""

from __future__ import annotations

from dataclasses import dataclass

Pieces = tuple[str, ...]


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
        found = text.find(piece, pos, slash + len(piece))
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
        found = text.rfind(piece, lowest if lowest > start else start, pos)
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


def _earliest_end_within(pieces: Pieces, text: str, start: int, end: int) -> int:
    """Earliest end of a match of ``pieces`` anywhere in ``text[start:end]``, or -1."""
    first = pieces[0]
    found = text.find(first, start, end)
    if len(pieces) == 1:
        return -1 if found < 0 else found + len(first)
    while found >= 0:
        match_end = _earliest_end_from(pieces, text, found, end)
        if match_end >= 0:
            return match_end
        # Every start before the next "/" fails the same way (module docstring).
        slash = text.find("/", found, end)
        if slash < 0:
            return -1
        found = text.find(first, slash + 1, end)
    return -1


@dataclass(frozen=True)
class Glob:
    """A compiled resource pattern; :meth:`matches` tells whether a whole resource matches."""

    text: str
    parts: tuple[Pieces, ...]

    @classmethod
    def compile(cls, pattern: str) -> Glob:
        parts = pattern.split("**")
        parts[1:] = [part.removeprefix("*") for part in parts[1:]]  # "**" "*" is "**"
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

    def matches(self, resource: str) -> bool:
        parts, end = self.parts, len(resource)
        if len(parts) == 1:
            return _fit(parts[0], resource, 0, end)
        pos = _earliest_end_from(parts[0], resource, 0, end)
        if pos < 0:
            return False
        limit = _latest_start_to(parts[-1], resource, pos, end)
        for pieces in parts[1:-1]:
            if limit < 0:
                return False
            pos = _earliest_end_within(pieces, resource, pos, limit)
            if pos < 0:
                return False
        return limit >= pos

    def to_posix_regex(self) -> str:
        """The same pattern as an anchored POSIX/ARE regex (for PostgreSQL's ``~``, which runs
        a DFA for expressions without back-references, so it does not backtrack either)."""

        def literal(piece: str) -> str:
            return "".join(f"\\{c}" if c.isascii() and not c.isalnum() else c for c in piece)

        parts = ("[^/]*".join(literal(piece) for piece in pieces) for pieces in self.parts)
        return "^" + ".*".join(parts) + "$"
