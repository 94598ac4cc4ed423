/**
 * Revocation entries as they travel through Redis, and the agent's local revocation state
 * (agent_passport/revocations.py). Wire format, one JSON per stream entry and snapshot field:
 *
 *     {"id": 12, "epoch": 40, "kind": "revoke", "target": {"type": "agent", "value": "<uuid>"},
 *      "reason": "...", "source": "api", "at": "2026-11-25T10:00:00Z"}
 *     {"id": 12, "epoch": 41, "kind": "lift"}
 */
import { createHash } from "node:crypto";

export const TARGET_TYPES = ["passport", "agent", "fleet", "all"] as const;
export const DIGEST_LENGTH = 64;

/** What a revocation stops, for people: `all agents` or e.g. `fleet gpu-a`. */
export function describeTarget(targetType: string, targetValue: string): string {
  return targetType === "all" ? "all agents" : `${targetType} ${targetValue}`;
}

/** SHA-256 (hex) of the active revocation ids, ascending, in decimal, joined by ",". */
export function revocationsDigest(activeIds: Iterable<number>): string {
  const text = [...activeIds].sort((a, b) => a - b).join(",");
  return createHash("sha256").update(text, "ascii").digest("hex");
}

function parseJson(raw: string): unknown {
  try {
    return JSON.parse(raw);
  } catch {
    return undefined;
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

/** The epoch a stream entry stands for in the `prev` chain: its integer `epoch`, else 0. */
export function streamPosition(raw: string | null | undefined): number {
  const data = parseJson(raw ?? "");
  const epoch = isObject(data) ? data["epoch"] : undefined;
  return Number.isInteger(epoch) ? (epoch as number) : 0;
}

/** A stream entry or snapshot field that does not follow the wire format. */
export class MalformedEntry extends Error {
  constructor(message: string) {
    super(message);
    this.name = "MalformedEntry";
  }
}

export class RevocationEntry {
  constructor(
    readonly id: number,
    readonly epoch: number,
    readonly kind: "revoke" | "lift",
    readonly targetType = "",
    readonly targetValue = "",
    readonly reason = "",
    readonly source = "",
    readonly at = "",
  ) {}

  static parse(raw: string): RevocationEntry {
    const data = parseJson(raw);
    const shown = raw.slice(0, 200);
    if (!isObject(data)) throw new MalformedEntry(`cannot parse revocation entry ${shown}`);
    const { kind, id, epoch } = data;
    if ((kind !== "revoke" && kind !== "lift") || !Number.isInteger(id) || !Number.isInteger(epoch))
      throw new MalformedEntry(`bad kind, id or epoch in ${shown}`);
    if (kind === "lift") return new RevocationEntry(id as number, epoch as number, kind);
    const target = data["target"];
    if (!isObject(target) || !(TARGET_TYPES as readonly unknown[]).includes(target["type"]) || typeof target["value"] !== "string")
      throw new MalformedEntry(`bad target in ${shown}`);
    const text = (name: string): string => (data[name] === undefined ? "" : String(data[name]));
    return new RevocationEntry(
      id as number,
      epoch as number,
      kind,
      target["type"] as string,
      target["value"],
      text("reason"),
      text("source"),
      text("at"),
    );
  }

  describe(): string {
    const who = describeTarget(this.targetType, this.targetValue);
    return `revocation #${this.id} of ${who} (epoch ${this.epoch}, ${this.source}): ${this.reason}`;
  }
}

/** The set of active revocations, indexed for O(1) lookups. Immutable: swap, don't mutate. */
export class RevocationState {
  private readonly index = new Map<string, RevocationEntry>();
  private digestCache: string | null = null;

  private constructor(
    readonly active: ReadonlyMap<number, RevocationEntry>,
    readonly versions: ReadonlyMap<number, number>,
    readonly epoch: number,
  ) {
    const byEpoch = [...active.values()].sort((a, b) => a.epoch - b.epoch);
    for (const entry of byEpoch) {
      const key = `${entry.targetType}\u0000${entry.targetValue}`;
      if (!this.index.has(key)) this.index.set(key, entry);
    }
  }

  static empty(): RevocationState {
    return new RevocationState(new Map(), new Map(), 0);
  }

  static build(entries: Iterable<RevocationEntry>, epoch: number, versions?: ReadonlyMap<number, number>): RevocationState {
    const active = new Map<number, RevocationEntry>();
    for (const entry of entries) if (entry.kind === "revoke") active.set(entry.id, entry);
    const known = new Map(versions ?? []);
    for (const entry of active.values()) known.set(entry.id, Math.max(known.get(entry.id) ?? 0, entry.epoch));
    return new RevocationState(active, known, epoch);
  }

  /** Apply stream entries; older or repeated entries for a revocation are ignored. */
  apply(entries: Iterable<RevocationEntry>): RevocationState {
    const active = new Map(this.active);
    const versions = new Map(this.versions);
    let epoch = this.epoch;
    for (const entry of entries) {
      epoch = Math.max(epoch, entry.epoch);
      if ((versions.get(entry.id) ?? 0) >= entry.epoch) continue;
      versions.set(entry.id, entry.epoch);
      if (entry.kind === "revoke") active.set(entry.id, entry);
      else active.delete(entry.id);
    }
    return RevocationState.build(active.values(), epoch, versions);
  }

  /** The revocation that stops this passport, if any (most specific first). */
  blocking(jti: string, agent: string, fleet: string | null): RevocationEntry | null {
    const get = (type: string, value: string) => this.index.get(`${type}\u0000${value}`);
    return get("passport", jti) ?? get("agent", agent) ?? (fleet ? get("fleet", fleet) : undefined) ?? get("all", "*") ?? null;
  }

  /** revocationsDigest of the active set (computed once per state). */
  get digest(): string {
    this.digestCache ??= revocationsDigest(this.active.keys());
    return this.digestCache;
  }

  /** Whether `other` holds the same active entries (an entry's epoch names its version). */
  sameActive(other: RevocationState): boolean {
    if (other.active.size !== this.active.size) return false;
    for (const [id, entry] of this.active) if (other.active.get(id)?.epoch !== entry.epoch) return false;
    return true;
  }
}
