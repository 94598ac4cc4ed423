/**
 * Python's string semantics where the two SDKs must agree to the character: bounded
 * find/rfind (a search never scans past its window, which keeps the glob matcher linear),
 * lengths in code points, and repr() for the quoted values in messages.
 */

/** Python `text.find(sub, start, end)`: the first occurrence inside `text[start:end]`, or -1. */
export function find(text: string, sub: string, start: number, end: number): number {
  const stop = Math.min(end, text.length);
  if (stop - start < sub.length || start > text.length) return -1;
  const found = (stop === text.length ? text : text.slice(0, stop)).indexOf(sub, start);
  return found;
}

/** Python `text.rfind(sub, start, end)`: the last occurrence inside `text[start:end]`, or -1. */
export function rfind(text: string, sub: string, start: number, end: number): number {
  const stop = Math.min(end, text.length);
  if (stop - start < sub.length || start > text.length) return -1;
  const found = text.slice(start, stop).lastIndexOf(sub);
  return found < 0 ? -1 : found + start;
}

/** Python `text.startswith(prefix, start)`. */
export function startsWithAt(text: string, prefix: string, start: number): boolean {
  return start <= text.length && text.startsWith(prefix, start);
}

/** Python `len(text)`: code points, not UTF-16 units (only counted past the short cut). */
export function codePointLength(text: string, atMost: number): number {
  if (text.length <= atMost) return text.length;
  let count = 0;
  for (let i = 0; i < text.length; i++) {
    const unit = text.charCodeAt(i);
    if (unit < 0xdc00 || unit > 0xdfff || i === 0) count++;
    else {
      const before = text.charCodeAt(i - 1);
      if (before < 0xd800 || before > 0xdbff) count++;
    }
  }
  return count;
}

/** The first `count` code points of `text`. */
export function codePointPrefix(text: string, count: number): string {
  return Array.from(text).slice(0, count).join("");
}

export function isAscii(text: string): boolean {
  for (let i = 0; i < text.length; i++) if (text.charCodeAt(i) > 0x7f) return false;
  return true;
}

/** Python `repr()` of a string (quotes chosen as Python does, control characters escaped). */
export function pyRepr(text: string): string {
  const quote = text.includes("'") && !text.includes('"') ? '"' : "'";
  let out = quote;
  for (const char of text) {
    const code = char.codePointAt(0) as number;
    if (char === "\\") out += "\\\\";
    else if (char === quote) out += "\\" + quote;
    else if (char === "\n") out += "\\n";
    else if (char === "\r") out += "\\r";
    else if (char === "\t") out += "\\t";
    else if (code < 0x20 || (code >= 0x7f && code <= 0xa0) || code === 0xad)
      out += "\\x" + code.toString(16).padStart(2, "0");
    else out += char;
  }
  return out + quote;
}

/** Python `int(text)` for decimal text (surrounding ASCII whitespace allowed); null if not one. */
export function pyInt(text: string | null | undefined): number | null {
  if (typeof text !== "string" || !/^\s*[+-]?\d+\s*$/.test(text)) return null;
  return Number(text);
}
