/**
 * Revocation entries as they travel through Redis, and the agent's local revocation state
 * (agent_passport/revocations.py). Wire format, one JSON per stream entry and snapshot field:
 *
 *     {"id": 12, "epoch": 40, "kind": "revoke", "target": {"type": "agent", "value": "<uuid>"},
 *      "reason": "...", "source": "api", "at": "2026-11-25T10:00:00Z"}
 *     {"id": 12, "epoch": 41, "kind": "lift"}
 */
import { createHash } from "node:crypto";
import {
  SNAPSHOT_ENTRY_PREFIX,
  SNAPSHOT_EPOCH_FIELD,
  SNAPSHOT_GENERATION_FIELD,
  SNAPSHOT_VERSION_FIELD,
  STREAM_ENTRY_FIELD,
  STREAM_PREV_FIELD,
  unsupportedProtocol,
} from "./protocol.js";
import { pyInt } from "./pytext.js";

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

// -- following the channel: the watcher's decisions as pure functions (conformance vectors drive
// them; README, "Kill-switch protocol", steps 1-3) ----------------------------------------------

/** A stream message: its id and its fields. */
export type StreamMessage = readonly [string, Readonly<Record<string, string>>];

/**
 * The snapshot is missing, unreadable, older than the state applied or in a protocol version
 * this SDK does not know: keep what we have, fail closed, and retry. `reason`:
 * `missing_snapshot`, `malformed_snapshot`, `older_snapshot` or `unsupported_protocol`.
 */
export class SnapshotUnavailable extends Error {
  constructor(
    message: string,
    readonly reason: string,
  ) {
    super(message);
    this.name = "SnapshotUnavailable";
  }
}

/** Where an agent stands in the channel: applied state, snapshot generation, last entry consumed. */
export interface Follower {
  readonly state: RevocationState;
  readonly generation: string | null;
  readonly lastId: string;
  readonly position: number;
}

export const START: Follower = { state: RevocationState.empty(), generation: null, lastId: "0-0", position: 0 };

/** One poll's outcome: the follower now and, if it must reload, why (`reload`: a code). */
export interface Poll {
  readonly follower: Follower;
  readonly reload: string;
  readonly detail: string;
}

/** A decimal integer as Redis holds it (digits only), or null. */
function decimal(text: string | null | undefined): number | null {
  return typeof text === "string" && /^[0-9]+$/.test(text) ? Number(text) : null;
}

/** The snapshot's epoch, or SnapshotUnavailable (missing, unknown version, malformed). */
function checkSnapshot(snapshot: Readonly<Record<string, string | null | undefined>>): number {
  const epoch = snapshot[SNAPSHOT_EPOCH_FIELD];
  if (epoch === null || epoch === undefined)
    throw new SnapshotUnavailable("no snapshot in Redis (new, flushed or restarted); waiting for the service", "missing_snapshot");
  const version = snapshot[SNAPSHOT_VERSION_FIELD]; // absent: written before versions, i.e. 1
  const problem = version === null || version === undefined ? null : unsupportedProtocol(decimal(version) ?? version);
  if (problem) throw new SnapshotUnavailable(`the revocation snapshot's ${problem}`, "unsupported_protocol");
  const parsed = decimal(epoch);
  if (parsed === null) throw new SnapshotUnavailable(`malformed snapshot: epoch ${epoch.slice(0, 40)} is not an integer`, "malformed_snapshot");
  return parsed;
}

/**
 * Step 1: the follower after loading `snapshot` (the whole hash) and the stream's last entry.
 * Throws SnapshotUnavailable; never goes back behind `appliedEpoch`.
 */
export function loadSnapshot(snapshot: Readonly<Record<string, string>>, last: StreamMessage | null, appliedEpoch: number): Follower {
  const epoch = checkSnapshot(snapshot);
  let entries: RevocationEntry[];
  try {
    entries = Object.entries(snapshot)
      .filter(([name]) => name.startsWith(SNAPSHOT_ENTRY_PREFIX))
      .map(([, value]) => RevocationEntry.parse(value));
  } catch (error) {
    throw new SnapshotUnavailable(`malformed snapshot: ${(error as Error).message}`, "malformed_snapshot");
  }
  if (epoch < appliedEpoch)
    throw new SnapshotUnavailable(
      `the snapshot (epoch ${epoch}) is older than the state applied (epoch ${appliedEpoch}): Redis was restored ` +
        "from an older copy or lags; keeping the newer state until the service rewrites it",
      "older_snapshot",
    );
  return {
    state: RevocationState.build(entries, epoch),
    generation: snapshot[SNAPSHOT_GENERATION_FIELD] ?? null,
    lastId: last ? last[0] : "0-0",
    position: last ? streamPosition(last[1][STREAM_ENTRY_FIELD]) : 0,
  };
}

/**
 * Steps 2-3: apply one poll's stream `messages` (read with COUNT `batch`), given the snapshot's
 * `_epoch`, `_generation` and `_v` read in the same round trip. Throws SnapshotUnavailable if
 * the snapshot is missing, malformed or in an unknown protocol version.
 */
export function followPoll(
  follower: Follower,
  snapshot: Readonly<Record<string, string | null | undefined>>,
  messages: readonly StreamMessage[],
  batch: number,
): Poll {
  const snapshotEpoch = checkSnapshot(snapshot);
  const entries: RevocationEntry[] = [];
  let { lastId, position } = follower;
  for (const [messageId, fields] of messages) {
    let entry: RevocationEntry;
    let prev: number | null;
    try {
      entry = RevocationEntry.parse(fields[STREAM_ENTRY_FIELD] ?? "");
      prev = pyInt(fields[STREAM_PREV_FIELD]);
      if (prev === null) throw new MalformedEntry(`prev ${String(fields[STREAM_PREV_FIELD])} is not an integer`);
    } catch (error) {
      return { follower, reload: "malformed_entry", detail: `malformed revocation stream entry ${messageId}: ${(error as Error).message}` };
    }
    if (prev !== position) {
      const detail = `revocation stream entry ${messageId} follows epoch ${prev} but the last one seen was epoch ${position}: entries were trimmed or lost`;
      return { follower, reload: "gap", detail };
    }
    lastId = messageId;
    position = entry.epoch;
    entries.push(entry);
  }
  const state = entries.length ? follower.state.apply(entries) : follower.state;
  const next: Follower = { state, generation: follower.generation, lastId, position };
  const result = (reload: string, detail: string): Poll => ({ follower: next, reload, detail });
  if ((snapshot[SNAPSHOT_GENERATION_FIELD] ?? null) !== next.generation) return result("new_generation", "the service rewrote the snapshot");
  if (snapshotEpoch < state.epoch && !entries.length) return result("snapshot_behind", "the snapshot is older than the state applied");
  if (snapshotEpoch > state.epoch && messages.length < batch) return result("snapshot_ahead", "the snapshot knows more than the stream told");
  return result("", "");
}
