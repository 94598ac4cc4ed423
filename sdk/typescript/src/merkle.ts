/**
 * The transparency log's verifiers (agent_passport/merkle.py, RFC 9162 §2.1): leaf and node
 * hashes, roots, inclusion and consistency proofs, signed tree heads and their `prev` chain, and
 * the inclusion promises of receipts. Hashes are hex strings; sizes and indexes are numbers
 * (exact up to 2^53, so arithmetic is used instead of JavaScript's 32-bit shifts).
 */
import { createHash, verify } from "node:crypto";
import { canonical, GENESIS } from "./audit.js";
import type { PublicKey } from "./tokens.js";

export const HEAD_FIELDS = ["tree_size", "root", "at", "prev"] as const;

function sha256(...parts: Buffer[]): Buffer {
  const hash = createHash("sha256");
  for (const part of parts) hash.update(part);
  return hash.digest();
}

const LEAF = Buffer.from([0]);
const NODE = Buffer.from([1]);

/** The leaf of an event: SHA-256(0x00 || event hash). */
export function leafHash(eventHash: string): string {
  return sha256(LEAF, Buffer.from(eventHash, "hex")).toString("hex");
}

function node(left: Buffer, right: Buffer): Buffer {
  return sha256(NODE, left, right);
}

/** The root of a list of leaf hashes (the empty tree's root is SHA-256 of nothing). */
export function treeRoot(leaves: readonly string[]): string {
  const stack: Array<[number, Buffer]> = [];
  for (const leaf of leaves) {
    let level = 0;
    let value: Buffer = Buffer.from(leaf, "hex");
    while (stack.length > 0 && (stack[stack.length - 1] as [number, Buffer])[0] === level) {
      value = node((stack.pop() as [number, Buffer])[1], value);
      level++;
    }
    stack.push([level, value]);
  }
  if (stack.length === 0) return sha256().toString("hex");
  let root = (stack[stack.length - 1] as [number, Buffer])[1];
  for (let i = stack.length - 2; i >= 0; i--) root = node((stack[i] as [number, Buffer])[1], root);
  return root.toString("hex");
}

const odd = (n: number): boolean => n % 2 === 1;
const half = (n: number): number => Math.floor(n / 2);

function hashes(values: readonly string[]): Buffer[] | null {
  if (!values.every((value) => typeof value === "string" && /^[0-9a-f]{64}$/.test(value))) return null;
  return values.map((value) => Buffer.from(value, "hex"));
}

/** RFC 9162 §2.1.3.2: is `leaf` at `index` of the tree of `size` leaves with `root`? */
export function verifyInclusion(leaf: string, index: number, size: number, path: readonly string[], root: string): boolean {
  const proof = hashes(path);
  if (proof === null || !Number.isSafeInteger(index) || !Number.isSafeInteger(size) || index < 0 || index >= size) return false;
  let fn = index;
  let sn = size - 1;
  let r: Buffer = Buffer.from(leaf, "hex");
  for (const p of proof) {
    if (sn === 0) return false;
    if (odd(fn) || fn === sn) {
      r = node(p, r);
      if (!odd(fn)) while (!odd(fn) && fn !== 0) { fn = half(fn); sn = half(sn); }
    } else r = node(r, p);
    fn = half(fn);
    sn = half(sn);
  }
  return sn === 0 && r.toString("hex") === root;
}

/** RFC 9162 §2.1.4.2: is the tree of `first` leaves (`firstRoot`) a prefix of the tree of `second`? */
export function verifyConsistency(first: number, second: number, firstRoot: string, secondRoot: string, proof: readonly string[]): boolean {
  const path = hashes(proof);
  if (path === null || !Number.isSafeInteger(first) || !Number.isSafeInteger(second)) return false;
  if (first === second) return path.length === 0 && firstRoot === secondRoot;
  if (!(first > 0 && first < second) || path.length === 0) return false;
  if (Number.isInteger(Math.log2(first))) path.unshift(Buffer.from(firstRoot, "hex"));
  let fn = first - 1;
  let sn = second - 1;
  while (odd(fn)) { fn = half(fn); sn = half(sn); }
  let fr = path[0] as Buffer;
  let sr = fr;
  for (const c of path.slice(1)) {
    if (sn === 0) return false;
    if (odd(fn) || fn === sn) {
      fr = node(c, fr);
      sr = node(c, sr);
      if (!odd(fn)) while (!odd(fn) && fn !== 0) { fn = half(fn); sn = half(sn); }
    } else sr = node(sr, c);
    fn = half(fn);
    sn = half(sn);
  }
  return sn === 0 && fr.toString("hex") === firstRoot && sr.toString("hex") === secondRoot;
}

/** What the registry signs for a tree head: `{v, type, tree_size, root, at, prev}`, canonical. */
export function headPayload(head: Record<string, unknown>): string {
  return canonical({ v: 1, type: "tree_head", ...Object.fromEntries(HEAD_FIELDS.map((name) => [name, head[name]])) });
}

/** The hash the next head names as `prev`. */
export function headId(head: Record<string, unknown>): string {
  return createHash("sha256").update(headPayload(head), "utf8").digest("hex");
}

function signedBy(payload: string, document: Record<string, unknown>, keys: ReadonlyMap<string, PublicKey>, name: string): string | null {
  const key = keys.get(String(document["kid"] ?? ""));
  if (key === undefined) return `${name} signed by unknown key ${JSON.stringify(document["kid"])}`;
  try {
    if (verify(null, Buffer.from(payload, "utf8"), key, Buffer.from(String(document["signature"]), "base64url"))) return null;
  } catch {
    // malformed: a bad signature
  }
  return `${name} has a bad signature`;
}

/** A problem with a tree head's shape or signature, or null. */
export function verifyHead(head: Record<string, unknown>, keys: ReadonlyMap<string, PublicKey>): string | null {
  const name = `tree head of size ${String(head["tree_size"])}`;
  if (!Number.isSafeInteger(head["tree_size"]) || (head["tree_size"] as number) < 0) return `${name} is malformed (tree_size)`;
  if (typeof head["root"] !== "string" || !/^[0-9a-f]{64}$/.test(head["root"])) return `${name} is malformed (root)`;
  return signedBy(headPayload(head), head, keys, name);
}

/** Heads in order of size: each names the one before (GENESIS for the first) and none shrinks. */
export function verifyHeadChain(heads: ReadonlyArray<Record<string, unknown>>): string | null {
  let previous: Record<string, unknown> | null = null;
  for (const head of heads) {
    if (head["prev"] !== (previous === null ? GENESIS : headId(previous)))
      return `tree head of size ${String(head["tree_size"])} does not follow ${previous === null ? "the first head" : `head ${String(previous["tree_size"])}`} (a head was deleted, inserted or rewritten)`;
    if (previous !== null && (head["tree_size"] as number) < (previous["tree_size"] as number))
      return `tree head of size ${String(head["tree_size"])} is smaller than the one before`;
    previous = head;
  }
  return null;
}

/** What the registry signs in a receipt: `{v, type, leaves: [[index, event hash]...], include_by}`. */
export function promisePayload(promise: Record<string, unknown>): string {
  return canonical({ v: 1, type: "inclusion_promise", leaves: promise["leaves"], include_by: promise["include_by"] });
}

/** A problem with a receipt's inclusion promise, or null. */
export function verifyPromise(promise: Record<string, unknown>, keys: ReadonlyMap<string, PublicKey>): string | null {
  return signedBy(promisePayload(promise), promise, keys, "inclusion promise");
}
