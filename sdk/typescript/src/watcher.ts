/**
 * Keeps a local copy of the revocation state, following Redis (agent_passport/watcher.py;
 * README, "Kill-switch protocol").
 *
 * Load the snapshot hash, the stream's last entry and the registry's heartbeat stamp in one
 * transaction, then loop: read `_epoch`/`_generation` and the stamp, and block on the stream for
 * at most `blockMs`. A missing snapshot, a new generation, an epoch that went backwards or ahead
 * of what the stream delivered, an entry whose `prev` is not the last entry seen (a gap) or a
 * malformed entry makes the watcher reload. The applied epoch never goes backwards.
 *
 * `lastHeard` is the moment (monotonic seconds) up to which the state is known current: the
 * time of the newest heartbeat stamp, counted only once every epoch that stamp and the snapshot
 * announce is applied. Guards refuse once it is older than their `maxStaleness`.
 *
 * Lifecycle: `start()` starts the loop; `stop()` ends it and closes the Redis connection the
 * watcher opened (never a `client` passed in). A stopped watcher cannot be restarted: make a new
 * one. `status()` tells the host how it is doing. After a failure the watcher reconnects with
 * exponential backoff and jitter (`retryDelay` doubling up to `maxRetryDelay`, each wait a random
 * point in the upper half of its step), reset by the next good round trip, so agents that lost
 * Redis together do not reconnect in lock-step.
 */
import { Redis } from "ioredis";
import { backoffDelay } from "./backoff.js";
import { monotonic } from "./clock.js";
import { pyInt } from "./pytext.js";
import {
  HEARTBEAT_AT_FIELD,
  HEARTBEAT_EPOCH_FIELD,
  RevocationChannel,
  SNAPSHOT_EPOCH_FIELD,
  SNAPSHOT_GENERATION_FIELD,
  SNAPSHOT_VERSION_FIELD,
} from "./protocol.js";
import { type Follower, followPoll, loadSnapshot, RevocationState, SnapshotUnavailable, START, type StreamMessage } from "./revocations.js";

export type Listener = (state: RevocationState) => void;
export type Logger = (message: string) => void;

/** A stream message as ioredis returns it: its id and a flat field/value list. */
type RawMessage = [string, string[]];
type Stamp = [string | null, string | null];

/**
 * Health of a watcher, as the host program sees it: INITIALIZING (started; the state has not
 * been confirmed current yet), VALID (the last round trip confirmed the state up to the newest
 * heartbeat stamp), INTERRUPTED (was valid; now failing and retrying), OFF (not started, or
 * stopped).
 */
export type WatcherState = "INITIALIZING" | "VALID" | "INTERRUPTED" | "OFF";

/** `lastError`: why the state is not known current (null when VALID); `stalenessS`: seconds
 * since it was last known current (Infinity: never). */
export interface WatcherStatus {
  state: WatcherState;
  lastError: string | null;
  stalenessS: number;
}

export interface WatcherOptions {
  channel?: RevocationChannel;
  /** How long one XREAD blocks (ms). */
  blockMs?: number;
  /** Stream entries per read. */
  batch?: number;
  /** Seconds: the first backoff step after a failure. */
  retryDelay?: number;
  /**
   * Seconds: the longest backoff step. Keep it well below the guards' `maxStaleness`, so a
   * recovered Redis is noticed before they refuse for long.
   */
  maxRetryDelay?: number;
  /** A client the caller owns (and closes); else the watcher opens one on its URL. */
  client?: Redis;
  /** Where warnings go (default: console.warn). */
  log?: Logger;
}

/** A stream message with its fields as a record. */
function message([id, flat]: RawMessage): StreamMessage {
  const fields: Record<string, string> = {};
  for (let i = 0; i + 1 < flat.length; i += 2) fields[flat[i] as string] = flat[i + 1] as string;
  return [id, fields];
}

/** Ioredis MULTI/pipeline replies, throwing the first command error. */
function replies(results: Array<[Error | null, unknown]> | null): unknown[] {
  if (results === null) throw new Error("the transaction was aborted");
  return results.map(([error, value]) => {
    if (error) throw error;
    return value;
  });
}

export class RevocationWatcher {
  readonly channel: RevocationChannel;
  readonly blockMs: number;
  readonly batch: number;
  readonly retryDelay: number;
  readonly maxRetryDelay: number;
  state: RevocationState = RevocationState.empty();
  /** See the module comment. */
  lastHeard = -Infinity;
  /** Why the state is not known current ("" when it is). */
  problem = "not loaded yet";
  private readonly client: Redis;
  private readonly ownsClient: boolean;
  /** Why the last connection attempt of the watcher's own client failed. */
  private connectionError: Error | null = null;
  private readonly log: Logger;
  private follower: Follower = START;
  private stamp: string | null = null;
  private stampAt = -Infinity;
  private stampEpoch = 0;
  private readonly listeners: Listener[] = [];
  private running: Promise<void> | null = null;
  private stopped = false;
  private loggedProblem = "";
  /** Consecutive failed rounds: the backoff step. */
  private failures = 0;
  /** INTERRUPTED rather than INITIALIZING once it has been VALID. */
  private wasValid = false;
  /** Ends the current backoff wait early (on stop). */
  private wake: (() => void) | null = null;
  private readyResolve!: () => void;
  private readonly ready = new Promise<void>((resolve) => (this.readyResolve = resolve));

  constructor(redisUrl = "redis://127.0.0.1:6379/0", options: WatcherOptions = {}) {
    this.channel = options.channel ?? new RevocationChannel();
    this.blockMs = options.blockMs ?? 100;
    this.batch = options.batch ?? 1000;
    this.retryDelay = options.retryDelay ?? 0.1;
    this.maxRetryDelay = options.maxRetryDelay ?? 0.5;
    if (!(this.retryDelay > 0 && this.retryDelay <= this.maxRetryDelay)) throw new RangeError("need 0 < retryDelay <= maxRetryDelay");
    this.log = options.log ?? ((message) => console.warn(`agent-passport: ${message}`));
    this.ownsClient = options.client === undefined;
    this.client =
      options.client ??
      new Redis(redisUrl, {
        lazyConnect: true,
        connectTimeout: 1000,
        commandTimeout: this.blockMs + 1000,
        maxRetriesPerRequest: 0,
        enableOfflineQueue: true,
        retryStrategy: () => null, // the loop reconnects, with backoff and jitter
      });
    // Reported by the loop, not as unhandled events; connect() itself only says "Connection is closed."
    if (this.ownsClient) this.client.on("error", (error: Error) => (this.connectionError = error));
  }

  /** Start following (once; calling it again while running is harmless). */
  start(): this {
    if (this.stopped) throw new Error("a stopped RevocationWatcher cannot be restarted; make a new one");
    this.running ??= this.run();
    return this;
  }

  /**
   * Stop following and close the Redis connection the watcher opened (never a `client` passed
   * in). Guards that use it refuse once the state is older than their `maxStaleness`.
   */
  async stop(): Promise<void> {
    this.stopped = true;
    this.wake?.();
    await this.running;
    this.problem = "stopped";
    if (this.ownsClient) this.client.disconnect();
  }

  /** How the watcher is doing, for the host program to show and alert on. */
  status(): WatcherStatus {
    let state: WatcherState;
    if (this.running === null || this.stopped) state = "OFF";
    else if (!this.problem) state = "VALID";
    else state = this.wasValid ? "INTERRUPTED" : "INITIALIZING";
    return { state, lastError: this.problem || null, stalenessS: this.staleness() };
  }

  /** Call `listener(state)` after every change of the active revocations. */
  addListener(listener: Listener): void {
    this.listeners.push(listener);
  }

  /** Resolves true once the first snapshot has loaded, false after `timeout` seconds. */
  async waitUntilReady(timeout = 5): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    const expired = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), timeout * 1000)));
    const result = await Promise.race([this.ready.then(() => true), expired]);
    clearTimeout(timer);
    return result;
  }

  /** Seconds since the state was last known current. */
  staleness(): number {
    return monotonic() - this.lastHeard;
  }

  private async run(): Promise<void> {
    let needLoad = true;
    while (!this.stopped) {
      try {
        if (this.ownsClient && (this.client.status === "wait" || this.client.status === "end")) await this.connect();
        if (needLoad) {
          await this.load();
          needLoad = false;
        }
        needLoad = !(await this.follow());
        this.failures = 0; // a good round trip
      } catch (error) {
        if (error instanceof SnapshotUnavailable && error.reason === "unsupported_protocol") {
          this.lastHeard = -Infinity; // a channel it cannot read: guards refuse at once
        }
        const message =
          error instanceof SnapshotUnavailable
            ? `revocation state unavailable: ${error.message}`
            : `Redis unreachable (${(error as Error).name}: ${(error as Error).message})`;
        this.setProblem(message, true);
        needLoad = true;
        this.failures++;
        await this.pause(backoffDelay(this.failures, this.retryDelay, this.maxRetryDelay));
      }
    }
  }

  /** (Re)connect the watcher's own client; the error names the cause (e.g. ECONNREFUSED). */
  private async connect(): Promise<void> {
    this.connectionError = null;
    await this.client.connect().catch((error: unknown) => {
      throw this.connectionError ?? error;
    });
  }

  /** Wait `seconds`, or until stop(). */
  private async pause(seconds: number): Promise<void> {
    if (this.stopped) return;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, seconds * 1000);
      this.wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
    this.wake = null;
  }

  private setProblem(message: string, log = false): void {
    this.problem = message;
    if (log && message !== this.loggedProblem) {
      this.log(`${message}; guards fail closed once the state is stale`);
      this.loggedProblem = message;
    }
  }

  private async load(): Promise<void> {
    const keys = this.channel;
    const sentAt = monotonic();
    const [snapshot, last, stamp, redisNow] = replies(
      await this.client
        .multi()
        .hgetall(keys.snapshotKey)
        .xrevrange(keys.streamKey, "+", "-", "COUNT", 1)
        .hmget(keys.heartbeatKey, HEARTBEAT_EPOCH_FIELD, HEARTBEAT_AT_FIELD)
        .time()
        .exec(),
    ) as [Record<string, string>, RawMessage[], Stamp, [string, string]];
    const newest = last[0];
    this.follower = loadSnapshot(snapshot, newest ? message(newest) : null, this.state.epoch);
    this.setState(this.follower.state);
    this.confirm(this.state.epoch, stamp, redisNow, sentAt);
    this.readyResolve();
  }

  /** One poll. Returns false when the state must be reloaded. */
  private async follow(): Promise<boolean> {
    const keys = this.channel;
    const sentAt = monotonic();
    const [[epoch, generation, version], stamp, redisNow, streams] = replies(
      await this.client
        .pipeline()
        .hmget(keys.snapshotKey, SNAPSHOT_EPOCH_FIELD, SNAPSHOT_GENERATION_FIELD, SNAPSHOT_VERSION_FIELD)
        .hmget(keys.heartbeatKey, HEARTBEAT_EPOCH_FIELD, HEARTBEAT_AT_FIELD)
        .time()
        .xread("COUNT", this.batch, "BLOCK", this.blockMs, "STREAMS", keys.streamKey, this.follower.lastId)
        .exec(),
    ) as [Array<string | null>, Stamp, [string, string], Array<[string, RawMessage[]]> | null];
    const snapshot = { [SNAPSHOT_EPOCH_FIELD]: epoch, [SNAPSHOT_GENERATION_FIELD]: generation, [SNAPSHOT_VERSION_FIELD]: version };
    const messages = (streams ?? []).flatMap(([, batch]) => batch.map(message));
    const poll = followPoll(this.follower, snapshot, messages, this.batch);
    this.follower = poll.follower;
    this.setState(poll.follower.state);
    if (poll.reload) {
      if (poll.reload === "gap" || poll.reload === "malformed_entry") this.log(`${poll.detail}; reloading the snapshot`);
      return false;
    }
    this.confirm(Number(epoch), stamp, redisNow, sentAt);
    return true;
  }

  /**
   * Advance `lastHeard` to the newest heartbeat stamp if every epoch it and the snapshot
   * announce has been applied. The stamp's age is measured on Redis's clock (TIME), and an
   * unchanged stamp keeps its moment, so it never looks newer.
   */
  private confirm(snapshotEpoch: number, stamp: Stamp, redisNow: [string, string], sentAt: number): void {
    const [epochRaw, atRaw] = stamp;
    if (epochRaw === null || atRaw === null) {
      this.setProblem("no heartbeat stamp from the registry in Redis", true);
      return;
    }
    const seen = `${epochRaw} ${atRaw}`;
    if (seen !== this.stamp) {
      const stampEpoch = pyInt(epochRaw);
      const stampMs = pyInt(atRaw);
      if (stampEpoch === null || stampMs === null) {
        this.setProblem(`malformed heartbeat stamp ${JSON.stringify(stamp).slice(0, 100)}`, true);
        return;
      }
      const nowMs = Number(redisNow[0]) * 1000 + Math.floor(Number(redisNow[1]) / 1000);
      this.stamp = seen;
      this.stampEpoch = stampEpoch;
      this.stampAt = sentAt - Math.max(0, nowMs - stampMs) / 1000;
    }
    const target = Math.max(snapshotEpoch, this.stampEpoch);
    if (this.state.epoch < target) {
      this.setProblem(`catching up: epoch ${this.state.epoch} applied, ${target} committed`);
      return;
    }
    this.lastHeard = this.stampAt;
    this.wasValid = true;
    if (this.loggedProblem) {
      this.log(`revocation channel healthy again (epoch ${this.state.epoch})`);
      this.loggedProblem = "";
    }
    this.problem = "";
  }

  private setState(state: RevocationState): void {
    const changed = !state.sameActive(this.state);
    this.state = state;
    if (!changed) return;
    for (const listener of this.listeners) {
      try {
        listener(state);
      } catch (error) {
        this.log(`revocation listener failed: ${(error as Error).stack ?? error}`);
      }
    }
  }
}
