/**
 * Resource patterns of the scope grammar, matched in linear time without regular expressions
 * (a port of agent_passport/globs.py; read its module docstring for the algorithm).
 *
 * `*` matches any text within one path segment (never `/`), `**` matches any text including
 * `/`, every other character is literal. A resource comes from the agent (or an attacker), so
 * the matcher never backtracks: it places literal pieces greedily with bounded substring
 * searches, at most one attempt per path segment.
 */
import { find, rfind, startsWithAt } from "./pytext.js";

type Pieces = readonly string[];

function placeAfterStars(pieces: Pieces, text: string, pos: number, end: number): number {
  let slash = -1;
  for (const piece of pieces) {
    if (slash < pos) {
      slash = find(text, "/", pos, end);
      if (slash < 0) slash = end;
    }
    const found = find(text, piece, pos, slash + piece.length);
    if (found < 0) return -1;
    pos = found + piece.length;
  }
  return pos <= end ? pos : -1;
}

function placeBeforeStars(pieces: Pieces, text: string, start: number, pos: number): number {
  let slash = pos;
  for (let i = pieces.length - 1; i >= 0; i--) {
    const piece = pieces[i] as string;
    if (slash >= pos) slash = rfind(text, "/", start, pos);
    const lowest = slash + 1 - piece.length;
    const found = rfind(text, piece, lowest > start ? lowest : start, pos);
    if (found < 0) return -1;
    pos = found;
  }
  return pos;
}

function fit(pieces: Pieces, text: string, start: number, end: number): boolean {
  const first = pieces[0] as string;
  const last = pieces[pieces.length - 1] as string;
  if (pieces.length === 1) return end - start === first.length && startsWithAt(text, first, start);
  const tail = end - last.length;
  if (tail < start + first.length || !startsWithAt(text, first, start)) return false;
  if (!startsWithAt(text, last, tail)) return false;
  const pos = placeAfterStars(pieces.slice(1, -1), text, start + first.length, tail);
  return pos >= 0 && find(text, "/", pos, tail) < 0;
}

function earliestEndFrom(pieces: Pieces, text: string, start: number, end: number): number {
  const first = pieces[0] as string;
  if (!startsWithAt(text, first, start) || start + first.length > end) return -1;
  return placeAfterStars(pieces.slice(1), text, start + first.length, end);
}

function latestStartTo(pieces: Pieces, text: string, start: number, end: number): number {
  const last = pieces[pieces.length - 1] as string;
  const pos = end - last.length;
  if (pos < start || !startsWithAt(text, last, pos)) return -1;
  return placeBeforeStars(pieces.slice(0, -1), text, start, pos);
}

function earliestEndWithin(pieces: Pieces, text: string, start: number, end: number): number {
  const first = pieces[0] as string;
  let found = find(text, first, start, end);
  if (pieces.length === 1) return found < 0 ? -1 : found + first.length;
  while (found >= 0) {
    const matchEnd = earliestEndFrom(pieces, text, found, end);
    if (matchEnd >= 0) return matchEnd;
    // Every start before the next "/" fails the same way.
    const slash = find(text, "/", found, end);
    if (slash < 0) return -1;
    found = find(text, first, slash + 1, end);
  }
  return -1;
}

/** A compiled resource pattern; `matches` tells whether a whole resource matches. */
export class Glob {
  readonly text: string;
  readonly parts: readonly Pieces[];
  /** The one resource this pattern matches, if it has no wildcard. */
  readonly literal: string | null;
  /** `P` for a pattern `P**` (`P` without wildcards): everything starting with `P`. */
  readonly prefix: string | null;

  constructor(pattern: string) {
    const parts = pattern.split("**").map((part, i) => (i > 0 && part.startsWith("*") ? part.slice(1) : part));
    this.text = pattern;
    this.parts = parts.map((part) => part.split("*"));
    const first = this.parts[0] as Pieces;
    this.literal = this.parts.length === 1 && first.length === 1 ? pattern : null;
    const rest = this.parts.slice(1);
    this.prefix =
      first.length === 1 && rest.length === 1 && rest[0]?.length === 1 && rest[0][0] === ""
        ? (first[0] as string)
        : null;
  }

  matches(resource: string): boolean {
    const parts = this.parts;
    const end = resource.length;
    if (parts.length === 1) return fit(parts[0] as Pieces, resource, 0, end);
    let pos = earliestEndFrom(parts[0] as Pieces, resource, 0, end);
    if (pos < 0) return false;
    const limit = latestStartTo(parts[parts.length - 1] as Pieces, resource, pos, end);
    for (const pieces of parts.slice(1, -1)) {
      if (limit < 0) return false;
      pos = earliestEndWithin(pieces, resource, pos, limit);
      if (pos < 0) return false;
    }
    return limit >= pos;
  }
}
