/**
 * Tamper evidence for the action log (agent_passport/audit.py): the canonical encoding, the
 * per-agent hash chains and the registry's signed checkpoints, verifiable offline with the JWKS.
 *
 * Canonical encoding: JSON with keys sorted by Unicode code point at every depth, no
 * whitespace, non-ASCII written as UTF-8 (JSON.stringify escapes exactly what Python's
 * `json.dumps(ensure_ascii=False)` escapes). Keep floats other than e.g. 0.5 out of `details`:
 * Python writes `1.0` where JavaScript writes `1`.
 */
import { createHash, verify } from "node:crypto";
import type { PublicKey } from "./tokens.js";

export const GENESIS = "0".repeat(64);
export const EVENT_FIELDS = [
  "agent", "seq", "id", "passport", "fleet", "action", "resource", "jurisdiction",
  "decision", "reason", "occurred_at", "received_at", "details", "prev",
] as const;
export const CHECKPOINT_FIELDS = ["agent", "count", "head", "at"] as const;

/** Compare by code point (JavaScript's default sort compares UTF-16 units). */
function byCodePoint(a: string, b: string): number {
  const left = Array.from(a, (char) => char.codePointAt(0) as number);
  const right = Array.from(b, (char) => char.codePointAt(0) as number);
  for (let i = 0; i < Math.min(left.length, right.length); i++) if (left[i] !== right[i]) return (left[i] as number) - (right[i] as number);
  return left.length - right.length;
}

function sortKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value === null || typeof value !== "object") return value;
  const record = value as Record<string, unknown>;
  return Object.fromEntries(Object.keys(record).sort(byCodePoint).map((key) => [key, sortKeys(record[key])]));
}

/** The canonical text of `document`. */
export function canonical(document: unknown): string {
  return JSON.stringify(sortKeys(document));
}

function pick(source: Record<string, unknown>, fields: readonly string[]): Record<string, unknown> {
  return Object.fromEntries(fields.map((name) => {
    if (!(name in source)) throw new TypeError(`the ${name} field is missing`);
    return [name, source[name]];
  }));
}

/** SHA-256 (hex) of an event's canonical encoding (its EVENT_FIELDS plus `"v": 1`). */
export function eventHash(event: Record<string, unknown>): string {
  return createHash("sha256").update(canonical({ v: 1, ...pick(event, EVENT_FIELDS) }), "utf8").digest("hex");
}

export function checkpointPayload(checkpoint: Record<string, unknown>): string {
  return canonical({ v: 1, type: "checkpoint", ...pick(checkpoint, CHECKPOINT_FIELDS) });
}

/** A problem with a checkpoint's signature, or null if a known key signed it. */
export function verifyCheckpoint(checkpoint: Record<string, unknown>, keys: ReadonlyMap<string, PublicKey>): string | null {
  const name = `checkpoint ${String(checkpoint["agent"])}#${String(checkpoint["count"])}`;
  const key = keys.get(String(checkpoint["kid"] ?? ""));
  if (key === undefined) return `${name} is signed by unknown key ${JSON.stringify(checkpoint["kid"])}`;
  try {
    const signature = Buffer.from(String(checkpoint["signature"]), "base64url");
    if (verify(null, Buffer.from(checkpointPayload(checkpoint), "utf8"), key, signature)) return null;
  } catch {
    // malformed: a bad signature
  }
  return `${name} has a bad signature`;
}

export interface ChainWalk {
  /** Good events before the first bad one. */
  count: number;
  /** Hash of the last good event (GENESIS if none). */
  head: string;
  /** What is wrong with the first bad event, null if all are good. */
  problem: string | null;
}

/** Walk one agent's events in stored order: seq 1, 2, …, each `prev` the hash before, each hash its content's. */
export function verifyChain(agent: string, events: Iterable<Record<string, unknown>>): ChainWalk {
  let head = GENESIS;
  let count = 0;
  for (const event of events) {
    const expectedSeq = count + 1;
    const { seq, id } = event;
    const bad = (what: string): ChainWalk => ({ count, head, problem: `agent ${agent}: ${what}` });
    if (seq !== expectedSeq)
      return bad(Number.isInteger(seq) && (seq as number) > expectedSeq
        ? `event seq ${expectedSeq} is missing (deleted) before event ${String(id)}`
        : `event ${String(id)} has seq ${String(seq)} where ${expectedSeq} was expected (inserted or reordered)`);
    if (event["prev"] !== head)
      return bad(`event ${String(id)} (seq ${String(seq)}) does not follow the previous event (an event was deleted, inserted or reordered before it)`);
    let recomputed: string;
    try {
      recomputed = eventHash(event);
    } catch (error) {
      return bad(`event ${String(id)} is malformed (${(error as Error).message})`);
    }
    if (recomputed !== event["hash"]) return bad(`event ${String(id)} (seq ${String(seq)}) was edited: its content no longer matches its hash`);
    head = recomputed;
    count++;
  }
  return { count, head, problem: null };
}
