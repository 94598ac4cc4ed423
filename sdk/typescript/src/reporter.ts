/**
 * Reports an agent's action decisions to the registry in batches (agent_passport/reporter.py):
 * `POST /api/v1/actions` with `Authorization: Bearer <passport token>` and
 *
 *     {"events": [{"id": "<uuid4>", "action": "fs:write", "resource": "/workspace/a",
 *                  "jurisdiction": "DE", "decision": "allow", "reason": "...", "at": 1767225600.0}],
 *      "heartbeat": {"epoch": 41, "digest": "<sha-256 hex>", "host": "trainer-1", "pid": 4242}}
 *
 * `record()` only appends to an in-memory buffer; the loop posts every `flushInterval`, and at
 * once after a deny (kill rules act on denies), taking everything buffered, so a burst of denies
 * goes out in a few posts; posts woken by denies start at least DENY_SPACING apart, and while the
 * loop backs off from an unreachable registry a deny waits for the next retry like any event.
 * Each event gets its id once, before its first delivery attempt, so a retried batch is stored
 * once (the registry deduplicates by id).
 * While the registry is unreachable (network error, 5xx, 429, 401, 3xx, 409 with Retry-After)
 * or a post has been in flight for STALLED_POST (a registry that accepts connections but does not
 * answer), the buffer is appended to a spill file (JSON lines, fsync'd) every SPILL_INTERVAL, and the
 * spill file is sent again, oldest first, before anything new. Other 4xx answers drop the batch
 * (it would be refused again); every drop is counted and reported in the next heartbeat. The
 * token is never logged.
 */
import { randomUUID } from "node:crypto";
import { closeSync, fsyncSync, ftruncateSync, mkdirSync, openSync, readSync, constants as fsConstants, statSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { backoffDelay } from "./backoff.js";
import type { Heartbeat } from "./guard.js";
import { codePointLength, codePointPrefix } from "./pytext.js";
import { DIGEST_LENGTH } from "./revocations.js";
import { MAX_RESOURCE_LENGTH } from "./rules.js";
import type { Logger } from "./watcher.js";

export const MAX_BATCH_EVENTS = 1000;
export const MAX_REASON_LENGTH = 500;
export const MAX_HOST_LENGTH = 200;
export const MAX_BODY_BYTES = 2_000_000;
export const HEARTBEAT_INTERVAL = 2.0;
export const MAX_BACKOFF = 5.0;
export const MAX_RETRY_AFTER = 60.0;
export const SPILL_INTERVAL = 0.005;
/** Seconds a post may be in flight before it counts as an outage: the events after it go to disk. */
export const STALLED_POST = 0.5;
export const MAX_SPILL_BYTES = 256 * 2 ** 20;
/**
 * Seconds between the starts of posts woken by denies: an agent looping on refused checks posts at
 * most 10 times a second (the registry's default ACTIONS_RATE_LIMIT is 600/minute per passport).
 */
export const DENY_SPACING = 0.1;
const WARNING_INTERVAL = 10.0;
const NOFOLLOW = fsConstants.O_NOFOLLOW ?? 0;

type Outcome = "delivered" | "rejected" | "retry" | "too_large";
type RecordTuple = [number, string, string | null, string | null, boolean, string];

export interface WireEvent {
  id: string;
  action: string;
  resource: string | null;
  jurisdiction: string | null;
  decision: "allow" | "deny";
  reason: string;
  at: number;
}

export interface ReporterOptions {
  /** Where events wait while the registry is unreachable (default: one file per passport in tmp). */
  spillPath?: string;
  /** Seconds between deliveries. */
  flushInterval?: number;
  batchSize?: number;
  /** Events held in memory at most; more are dropped (and counted). */
  maxBuffer?: number;
  /** Seconds a post may take. */
  timeout?: number;
  /** What to send as the heartbeat (a Guard sets its own when this is null). */
  heartbeat?: (() => Heartbeat) | null;
  maxSpillBytes?: number;
  log?: Logger;
}

/** The token's jti (read without verification, only to name a file), else a digest-free fallback. */
function tokenId(token: string): string {
  try {
    const claims = JSON.parse(Buffer.from(token.split(".")[1] ?? "", "base64url").toString("utf8")) as { jti?: unknown };
    const jti = String(claims.jti ?? "").replace(/[^A-Za-z0-9_-]/g, "").slice(0, 64);
    if (jti) return jti;
  } catch {
    // fall through
  }
  return "unnamed";
}

export function defaultSpillPath(token: string): string {
  return join(tmpdir(), `agent-passport-actions-${tokenId(token)}.jsonl`);
}

/** Text the registry can store: lone surrogates and NUL escaped (as Python's backslashreplace), cut to `limit`. */
function text(value: unknown, limit?: number): string {
  let result = (typeof value === "string" ? value : String(value))
    .replace(/[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g, (unit) => `\\u${unit.charCodeAt(0).toString(16)}`)
    .replaceAll("\x00", "\\x00");
  if (limit !== undefined && codePointLength(result, limit) > limit) result = codePointPrefix(result, limit - 1) + "…";
  return result;
}

function toWire([at, action, resource, jurisdiction, allowed, reason]: RecordTuple): WireEvent | null {
  if (typeof at !== "number" || !Number.isFinite(at)) return null;
  return {
    id: randomUUID(),
    action: text(action),
    resource: resource === null || resource === undefined ? null : text(resource, MAX_RESOURCE_LENGTH),
    jurisdiction: jurisdiction === null || jurisdiction === undefined ? null : text(jurisdiction),
    decision: allowed ? "allow" : "deny",
    reason: reason === null || reason === undefined ? "" : text(reason, MAX_REASON_LENGTH),
    at,
  };
}

const line = (event: WireEvent): Buffer => Buffer.from(JSON.stringify(event) + "\n");

function parseLine(raw: string): WireEvent | null {
  try {
    const event = JSON.parse(raw) as unknown;
    return event !== null && typeof event === "object" && typeof (event as WireEvent).id === "string" ? (event as WireEvent) : null;
  } catch {
    return null;
  }
}

/** Buffers action decisions and delivers them to the registry in the background. */
export class ActionReporter {
  url: string;
  token: string;
  readonly spillPath: string;
  readonly flushInterval: number;
  readonly batchSize: number;
  readonly maxBuffer: number;
  readonly timeout: number;
  readonly maxSpillBytes: number;
  heartbeat: (() => Heartbeat) | null;
  sent = 0;
  spilled = 0;
  dropped = 0;
  private readonly log: Logger;
  private buffer: RecordTuple[] = [];
  private pending = 0;
  private droppedReported = 0;
  private droppedAtFlush = 0;
  private spillOffset = 0;
  private spillSize = 0;
  private failures = 0;
  private retryAfter = 0;
  private lastPostAt = -Infinity;
  private running = false;
  private loop: Promise<void> | null = null;
  /** Ends the wait between cycles (flush, heartbeatNow, close). */
  private wake: (() => void) | null = null;
  /** Brings the end of the wait forward, for a deny. */
  private hurry: (() => void) | null = null;
  private denies = 0; // denies recorded so far
  private deniesTaken = 0; // `denies` when the last cycle took the buffer
  private hurriedAt = -Infinity; // when the last post woken by a deny was due
  private spillTimer: NodeJS.Timeout | null = null;
  private outage = false;
  private stalled = false;
  private readonly warnedAt = new Map<string, number>();

  constructor(url: string, token: string, options: ReporterOptions = {}) {
    this.url = url;
    this.token = token;
    this.spillPath = options.spillPath ?? defaultSpillPath(token);
    this.flushInterval = options.flushInterval ?? 0.5;
    this.batchSize = options.batchSize ?? MAX_BATCH_EVENTS;
    this.maxBuffer = options.maxBuffer ?? 100_000;
    this.timeout = options.timeout ?? 5;
    this.maxSpillBytes = options.maxSpillBytes ?? MAX_SPILL_BYTES;
    this.heartbeat = options.heartbeat ?? null;
    this.log = options.log ?? ((message) => console.warn(`agent-passport: ${message}`));
    if (!(this.batchSize >= 1 && this.batchSize <= MAX_BATCH_EVENTS)) throw new RangeError(`batchSize must be between 1 and ${MAX_BATCH_EVENTS}`);
    if (!(Math.min(this.maxBuffer, this.flushInterval, this.timeout, this.maxSpillBytes) > 0))
      throw new RangeError("maxBuffer, flushInterval, timeout and maxSpillBytes must be > 0");
    this.recoverSpill();
  }

  get buffered(): number {
    return this.buffer.length;
  }

  /** Queue one decision. Never blocks; when the buffer is full the event is dropped. A deny wakes the delivery loop. */
  record(at: number, action: string, resource: string | null, jurisdiction: string | null, allowed: boolean, reason: string): void {
    if (this.buffer.length >= this.maxBuffer) return this.drop(1, "the buffer is full");
    this.buffer.push([at, action, resource, jurisdiction, allowed, reason]);
    if (!allowed) {
      this.denies++;
      this.hurry?.();
    }
  }

  /** Send the heartbeat at once (e.g. right after a revocation was applied). */
  heartbeatNow(): void {
    this.lastPostAt = -Infinity;
    this.wake?.();
  }

  start(): this {
    if (!this.running) {
      this.running = true;
      this.loop = this.run();
    }
    return this;
  }

  /**
   * Wait until the buffer and the spill file are empty. False on timeout, or if events were
   * dropped since the previous flush (`dropped` says how many in all).
   */
  async flush(timeout = 10): Promise<boolean> {
    this.start();
    this.failures = 0;
    this.wake?.();
    const deadline = performance.now() + timeout * 1000;
    while (this.buffer.length || this.pending || this.spilled) {
      if (performance.now() >= deadline) return false;
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    const previous = this.droppedAtFlush;
    this.droppedAtFlush = this.dropped;
    return this.droppedAtFlush === previous;
  }

  /** Deliver what can be delivered (the rest goes to the spill file), then stop. */
  async close(): Promise<void> {
    if (this.running) {
      this.running = false;
      this.wake?.();
      await this.loop;
    } else await this.safeCycle();
    this.setOutage(false);
    if (this.buffer.length) this.spill(this.take(this.buffer.length));
  }

  // --- the delivery loop -------------------------------------------------------------------

  private async run(): Promise<void> {
    while (this.running) {
      let delay: number;
      if (await this.safeCycle()) {
        this.failures = 0;
        delay = this.heartbeat ? Math.min(this.flushInterval, HEARTBEAT_INTERVAL) : this.flushInterval;
      } else {
        this.failures++;
        // Steps of 2, 4, 8 … flush intervals up to MAX_BACKOFF, each wait drawn in the upper
        // half of its step: agents cut off together do not retry together.
        delay = backoffDelay(this.failures, 2 * this.flushInterval, MAX_BACKOFF);
      }
      delay = Math.max(delay, this.retryAfter);
      this.retryAfter = 0;
      if (this.running) await this.idle(delay, this.failures > 0);
    }
    await this.safeCycle();
  }

  /**
   * Wait `delay` seconds between cycles. flush(), heartbeatNow() and close() end the wait; so
   * does a deny (one recorded during the last cycle too), but no sooner than DENY_SPACING after
   * the previous post a deny woke, and not at all while backing off: a deny must not defeat the
   * backoff.
   */
  private idle(delay: number, backingOff: boolean): Promise<void> {
    const now = () => performance.now() / 1000;
    return new Promise<void>((resolve) => {
      let deadline = now() + delay;
      let timer = setTimeout(() => this.wake?.(), delay * 1000);
      this.wake = () => {
        clearTimeout(timer);
        this.wake = this.hurry = null;
        resolve();
      };
      if (backingOff) return;
      this.hurry = () => {
        this.hurry = null; // once per wait: a stream of denies does not keep rescheduling it
        deadline = this.hurriedAt = Math.min(deadline, Math.max(now(), this.hurriedAt + DENY_SPACING));
        clearTimeout(timer);
        timer = setTimeout(() => this.wake?.(), Math.max(0, deadline - now()) * 1000);
      };
      if (this.denies !== this.deniesTaken) this.hurry();
    });
  }

  private async safeCycle(): Promise<boolean> {
    try {
      return await this.cycle();
    } catch (error) {
      this.warn("cycle", `action reporter cycle failed: ${(error as Error).message}`);
      return false;
    } finally {
      this.pending = 0;
    }
  }

  /** Spilled events first, then new ones; false when the registry is unreachable. */
  private async cycle(): Promise<boolean> {
    if (!(await this.resendSpill())) return this.unreachable();
    this.setOutage(false);
    this.deniesTaken = this.denies; // these denies are in the buffer taken below
    let remaining = this.buffer.length;
    while (remaining > 0) {
      const count = Math.min(this.batchSize, remaining);
      remaining -= count;
      this.pending = count;
      const undelivered = await this.deliver(this.take(count));
      if (undelivered.length) {
        this.spill(undelivered);
        return this.unreachable();
      }
      this.pending = 0;
    }
    if (this.heartbeatDue() && (await this.post([])) === "retry") return this.unreachable();
    return true;
  }

  private unreachable(): boolean {
    this.setOutage(true);
    return false;
  }

  private setOutage(outage: boolean): void {
    this.outage = outage;
    this.updateSpilling();
  }

  private setStalled(stalled: boolean): void {
    this.stalled = stalled;
    this.updateSpilling();
  }

  /** While the registry is unreachable or a post is stalled, the buffer goes to the spill file every SPILL_INTERVAL. */
  private updateSpilling(): void {
    const spilling = this.outage || this.stalled;
    if (spilling && this.spillTimer === null) {
      this.spillTimer = setInterval(() => {
        if (this.buffer.length) this.spill(this.take(this.buffer.length));
      }, SPILL_INTERVAL * 1000);
      this.spillTimer.unref();
    } else if (!spilling && this.spillTimer !== null) {
      clearInterval(this.spillTimer);
      this.spillTimer = null;
    }
  }

  private heartbeatDue(): boolean {
    if (this.dropped > this.droppedReported) return true;
    return this.heartbeat !== null && performance.now() / 1000 - this.lastPostAt >= HEARTBEAT_INTERVAL;
  }

  private take(count: number): WireEvent[] {
    const events: WireEvent[] = [];
    for (const record of this.buffer.splice(0, count)) {
      const event = toWire(record);
      if (event === null) this.drop(1, "its time is not a number");
      else events.push(event);
    }
    return events;
  }

  // --- the registry ------------------------------------------------------------------------

  /** Post `events`, halving while too large; returns the events to retry later. */
  private async deliver(events: WireEvent[]): Promise<WireEvent[]> {
    if (!events.length) return [];
    const outcome = await this.post(events);
    if (outcome === "too_large" && events.length > 1) {
      const middle = Math.floor(events.length / 2);
      const rest = await this.deliver(events.slice(0, middle));
      if (rest.length) return [...rest, ...events.slice(middle)];
      return this.deliver(events.slice(middle));
    }
    if (outcome === "too_large") this.drop(1, "a single event is larger than the registry accepts");
    return outcome === "retry" ? events : [];
  }

  private async post(events: WireEvent[]): Promise<Outcome> {
    const document: Record<string, unknown> = { events };
    let heartbeat = this.heartbeatBody();
    const unreported = this.dropped - this.droppedReported;
    if (unreported) heartbeat = { ...(heartbeat ?? {}), dropped: unreported };
    if (heartbeat !== null) document["heartbeat"] = heartbeat;
    const body = JSON.stringify(document);
    if (Buffer.byteLength(body) > MAX_BODY_BYTES && events.length > 1) return "too_large";
    let response: Response;
    let answer: string;
    try {
      [response, answer] = await this.exchange(body);
    } catch (error) {
      const why = String((error as Error).cause ?? (error as Error).message).replaceAll(this.token, "<token>");
      this.warn("unreachable", `cannot reach the registry at ${this.url} (${why})`);
      return "retry";
    }
    const status = response.status;
    if (status === 413) return "too_large";
    if (status === 401 || status === 429 || status >= 500 || (status >= 300 && status < 400) || (status === 409 && response.headers.has("retry-after"))) {
      const seconds = Number(response.headers.get("retry-after") ?? 0);
      this.retryAfter = Number.isFinite(seconds) && seconds > 0 ? Math.min(MAX_RETRY_AFTER, seconds) : 0;
      this.warn(`http-${status}`, `the registry answered ${status}: ${answer.slice(0, 200)}`);
      return "retry";
    }
    if (status >= 400) {
      this.log(`the registry rejected a batch of ${events.length} events (HTTP ${status}): ${answer.slice(0, 500)}`);
      this.drop(events.length, `the registry answered HTTP ${status}`);
      return "rejected";
    }
    this.lastPostAt = performance.now() / 1000;
    this.droppedReported += unreported;
    const rejected = this.countRejected(events, answer);
    this.sent += events.length - rejected;
    return "delivered";
  }

  /** The POST and its answer. While it is in flight past STALLED_POST, new events go to disk. */
  private async exchange(body: string): Promise<[Response, string]> {
    const stall = setTimeout(() => this.setStalled(true), STALLED_POST * 1000);
    try {
      const response = await fetch(this.url, {
        method: "POST",
        body,
        headers: { Authorization: `Bearer ${this.token}`, "Content-Type": "application/json" },
        redirect: "manual",
        signal: AbortSignal.timeout(this.timeout * 1000),
      });
      return [response, await response.text().catch(() => "")];
    } finally {
      clearTimeout(stall);
      this.setStalled(false);
    }
  }

  /** Log the events the registry refused one by one; returns how many. */
  private countRejected(events: WireEvent[], answer: string): number {
    let errors: unknown;
    try {
      errors = (JSON.parse(answer) as { errors?: unknown }).errors;
    } catch {
      return 0;
    }
    if (errors === null || typeof errors !== "object" || Array.isArray(errors)) return 0;
    const entries = Object.entries(errors);
    for (const [index, messages] of entries)
      this.log(`the registry rejected action event ${events[Number(index)]?.id ?? "?"}: ${JSON.stringify(messages)}`);
    if (entries.length) this.drop(entries.length, "the registry rejected them");
    return entries.length;
  }

  /** The heartbeat callable's answer, reduced to fields of the right type. */
  private heartbeatBody(): Record<string, unknown> | null {
    if (this.heartbeat === null) return null;
    let raw: Partial<Heartbeat>;
    try {
      raw = this.heartbeat();
    } catch (error) {
      this.warn("heartbeat", `the heartbeat callable failed: ${(error as Error).message}`);
      return {};
    }
    const body: Record<string, unknown> = {};
    if (Number.isInteger(raw.epoch) && (raw.epoch as number) >= 0) body["epoch"] = raw.epoch;
    if (typeof raw.host === "string") body["host"] = text(raw.host, MAX_HOST_LENGTH);
    if (Number.isInteger(raw.pid) && (raw.pid as number) >= 0) body["pid"] = raw.pid;
    if (typeof raw.digest === "string" && raw.digest.length === DIGEST_LENGTH) body["digest"] = raw.digest;
    return body;
  }

  // --- the spill file ----------------------------------------------------------------------

  /** Count the lines a previous run left; cut off a line torn by a crash mid-write. */
  private recoverSpill(): void {
    let descriptor: number;
    try {
      descriptor = openSync(this.spillPath, fsConstants.O_RDWR | NOFOLLOW);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "ENOENT") this.warn("spill-read", `cannot use the spill file ${this.spillPath} (${(error as Error).message})`);
      return;
    }
    try {
      const data = this.readAll(descriptor);
      const complete = data.lastIndexOf(0x0a) + 1;
      if (complete < data.length) {
        ftruncateSync(descriptor, complete);
        this.drop(1, "the spill file ended in a line cut short by a crash");
      }
      let lines = 0;
      for (let i = 0; i < complete; i++) if (data[i] === 0x0a) lines++;
      this.spillSize = complete;
      this.spilled = lines;
    } finally {
      closeSync(descriptor);
    }
  }

  private readAll(descriptor: number, from = 0, limit = Infinity): Buffer {
    const size = Math.min(statSync(this.spillPath).size - from, limit);
    const data = Buffer.alloc(Math.max(0, size));
    let read = 0;
    while (read < data.length) {
      const count = readSync(descriptor, data, read, data.length - read, from + read);
      if (count === 0) break;
      read += count;
    }
    return data.subarray(0, read);
  }

  /** Append `events` (with their ids) and fsync; what does not fit is dropped (oldest evidence kept). */
  private spill(events: WireEvent[]): void {
    if (!events.length) return;
    const lines = events.map(line);
    let room = this.maxSpillBytes - this.spillSize;
    let kept = 0;
    while (kept < lines.length && (lines[kept] as Buffer).length <= room) room -= (lines[kept++] as Buffer).length;
    const data = Buffer.concat(lines.slice(0, kept));
    let failure = `the spill file is full (${this.maxSpillBytes} bytes)`;
    try {
      if (data.length) {
        mkdirSync(dirname(this.spillPath), { recursive: true });
        const descriptor = openSync(this.spillPath, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_APPEND | NOFOLLOW, 0o600);
        try {
          writeSync(descriptor, data);
          fsyncSync(descriptor);
        } finally {
          closeSync(descriptor);
        }
      }
      this.spillSize += data.length;
      this.spilled += kept;
    } catch (error) {
      failure = `the spill file cannot be written (${(error as Error).message})`;
      kept = 0;
    }
    if (kept < events.length) this.drop(events.length - kept, failure);
  }

  /** Send spilled events, oldest first; true once the spill file is empty. */
  private async resendSpill(): Promise<boolean> {
    for (;;) {
      if (this.spillSize === 0) return true;
      let data: Buffer;
      try {
        const descriptor = openSync(this.spillPath, fsConstants.O_RDONLY | NOFOLLOW);
        try {
          data = this.readAll(descriptor, this.spillOffset, 4 * 2 ** 20);
        } finally {
          closeSync(descriptor);
        }
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === "ENOENT") {
          this.spillOffset = this.spillSize = this.spilled = 0;
          return true;
        }
        this.warn("spill-read", `cannot read the spill file ${this.spillPath} (${(error as Error).message})`);
        return false;
      }
      const events: WireEvent[] = [];
      const ends: number[] = [];
      let start = 0;
      let consumedLines = 0;
      let corrupt = 0;
      while (events.length < this.batchSize) {
        const end = data.indexOf(0x0a, start);
        if (end < 0) break;
        const raw = data.subarray(start, end).toString("utf8");
        start = end + 1;
        consumedLines++;
        const event = parseLine(raw);
        if (event !== null) {
          events.push(event);
          ends.push(start);
        } else if (raw.trim()) corrupt++;
      }
      if (consumedLines === 0) {
        this.emptySpill();
        return true;
      }
      const undelivered = await this.deliver(events);
      const delivered = events.length - undelivered.length;
      const resume = undelivered.length ? (delivered ? (ends[delivered - 1] as number) : 0) : start;
      if (corrupt && !undelivered.length) this.drop(corrupt, "a spilled line is corrupt");
      this.spillOffset += resume;
      this.spilled = Math.max(0, this.spilled - (undelivered.length ? delivered : consumedLines));
      if (undelivered.length) return false;
      if (this.spillOffset >= this.spillSize) {
        this.emptySpill();
        return true;
      }
    }
  }

  private emptySpill(): void {
    try {
      const descriptor = openSync(this.spillPath, fsConstants.O_WRONLY | NOFOLLOW);
      try {
        ftruncateSync(descriptor, 0);
      } finally {
        closeSync(descriptor);
      }
    } catch {
      // removed meanwhile: nothing to empty
    }
    this.spillOffset = this.spillSize = this.spilled = 0;
  }

  // --- bookkeeping -------------------------------------------------------------------------

  private drop(count: number, why: string): void {
    this.dropped += count;
    this.warn("dropped", `dropped ${count} action event(s): ${why} (${this.dropped} in total)`);
  }

  /** Log `message` unless the same kind of warning was logged in the last 10 seconds. */
  private warn(key: string, message: string): void {
    const now = performance.now() / 1000;
    if (now - (this.warnedAt.get(key) ?? -Infinity) < WARNING_INTERVAL) return;
    this.warnedAt.set(key, now);
    this.log(message);
  }
}
