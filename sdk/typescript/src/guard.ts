/**
 * The guard: checks every action against the passport and the live revocation state
 * (agent_passport/guard.py). `check` never touches the network: it reads the parsed passport,
 * the watcher's local state and the clock, then hands the outcome to the reporter's buffer.
 */
import { hostname } from "node:os";
import { monotonic } from "./clock.js";
import { PassportExpired, PassportNotYetValid, PassportRevoked, RevocationStateStale, refusal, ScopeDenied } from "./errors.js";
import { RevocationChannel } from "./protocol.js";
import type { RevocationEntry, RevocationState } from "./revocations.js";
import { type Decision, Policy } from "./rules.js";
import { CLOCK_SKEW_LEEWAY, type Claims, type Keys, verifyToken } from "./tokens.js";
import { type Logger, RevocationWatcher } from "./watcher.js";

export type KillCallback = (entry: RevocationEntry) => void;

/** What the guard reports as this agent's heartbeat (the registry verifies epoch and digest). */
export interface Heartbeat {
  epoch: number;
  digest: string;
  host: string;
  pid: number;
}

/** What the guard needs from an action reporter (see reporter.ts). */
export interface Reporter {
  record(at: number, action: string, resource: string | null, jurisdiction: string | null, allowed: boolean, reason: string): void;
  /** Set by the guard when unset: what to send as the heartbeat. */
  heartbeat?: (() => Heartbeat) | null;
  /** Send the heartbeat at once (called after every change of revocations). */
  heartbeatNow?: () => void;
}

export interface GuardOptions {
  /** kid → public key (pinned keys), or a lookup such as JWKSClient.lookup. */
  keys: Keys;
  issuer: string;
  audience?: string;
  /** A watcher shared by many guards; else one is started on `redisUrl`. */
  watcher?: RevocationWatcher;
  redisUrl?: string;
  /** Seconds since the state was last known current after which checks refuse (default 2). */
  maxStaleness?: number;
  /** Allow (with a logged warning) when the state is stale: only for documented exceptions. */
  failOpen?: boolean;
  /** The default jurisdiction of checks that name none. */
  jurisdiction?: string | null;
  reporter?: Reporter;
  /** Seconds to wait for the watcher's first snapshot. */
  readyTimeout?: number;
  log?: Logger;
}

/** Holds one verified passport and refuses any action it does not allow. */
export class Guard {
  readonly policy: Policy;
  readonly jti: string;
  readonly agentId: string;
  readonly fleet: string | null;
  readonly maxStaleness: number;
  readonly failOpen: boolean;
  readonly jurisdiction: string | null;
  readonly reporter: Reporter | null;
  killEntry: RevocationEntry | null = null;
  private readonly notBefore: number;
  private readonly expires: number;
  private readonly killCallbacks: KillCallback[] = [];
  private readonly killWaiters: Array<(entry: RevocationEntry) => void> = [];
  private readonly log: Logger;
  private lastOpenWarning = 0;

  private constructor(
    readonly token: string,
    readonly claims: Claims,
    readonly watcher: RevocationWatcher,
    private readonly ownsWatcher: boolean,
    options: GuardOptions,
  ) {
    this.policy = Policy.fromClaims(claims);
    this.jti = claims.jti;
    this.agentId = claims.sub;
    this.fleet = claims.fleet || null;
    this.notBefore = claims.nbf - CLOCK_SKEW_LEEWAY;
    this.expires = claims.exp;
    this.maxStaleness = options.maxStaleness ?? 2;
    this.failOpen = options.failOpen ?? false;
    this.jurisdiction = options.jurisdiction ?? null;
    this.reporter = options.reporter ?? null;
    this.log = options.log ?? ((message) => console.warn(`agent-passport: ${message}`));
    if (this.failOpen)
      this.log(`guard for agent ${this.agentId} runs FAIL-OPEN: if the revocation channel is lost, actions continue unchecked against revocations`);
    if (this.reporter && this.reporter.heartbeat === null) this.reporter.heartbeat = () => this.heartbeat();
  }

  /** Verify `token` offline and follow revocations; throws PassportError if it is unusable. */
  static async create(token: string, options: GuardOptions): Promise<Guard> {
    const claims = await verifyToken(token, options.keys, { issuer: options.issuer, audience: options.audience ?? "agent-passport" });
    let watcher = options.watcher;
    if (watcher === undefined) {
      if (options.redisUrl === undefined) throw new Error("give either a shared watcher or redisUrl");
      const channel = RevocationChannel.fromClaim(claims.rev);
      watcher = new RevocationWatcher(options.redisUrl, { channel, ...(options.log ? { log: options.log } : {}) }).start();
    }
    const guard = new Guard(token, claims, watcher, options.watcher === undefined, options);
    watcher.addListener((state) => guard.onState(state));
    if (await watcher.waitUntilReady(options.readyTimeout ?? 5)) guard.onState(watcher.state);
    else {
      const status = watcher.status();
      guard.log(`guard for agent ${guard.agentId} starts without revocation state (${status.state.toLowerCase()}: ${status.lastError}); checks refuse until it is current`);
    }
    return guard;
  }

  /**
   * Allow the action or throw ScopeDenied, PassportRevoked, PassportExpired,
   * PassportNotYetValid or RevocationStateStale. Every outcome is reported.
   */
  check(action: string, resource: string | null = null, jurisdiction: string | null = null): Decision {
    const now = Date.now() / 1000;
    const region = jurisdiction ?? this.jurisdiction;
    let decision: Decision;
    try {
      decision = this.decide(now, action, resource, region);
    } catch (error) {
      this.reporter?.record(now, action, resource, region, false, (error as Error).message);
      throw error;
    }
    this.reporter?.record(now, action, resource, region, true, decision.reason);
    return decision;
  }

  private decide(now: number, action: string, resource: string | null, region: string | null): Decision {
    if (now >= this.expires) throw refusal(PassportExpired, `passport ${this.jti} expired; ask the registry for a new one`);
    if (now < this.notBefore) throw refusal(PassportNotYetValid, `passport ${this.jti} is not valid yet`);
    const watcher = this.watcher;
    const heard = watcher.lastHeard; // before the state: see the README's step 5
    const blocking = watcher.state.blocking(this.jti, this.agentId, this.fleet);
    if (blocking !== null) throw refusal(PassportRevoked, `${action} refused: ${blocking.describe()}`);
    const staleness = monotonic() - heard;
    if (staleness > this.maxStaleness) {
      const status = watcher.status();
      const why = status.lastError ? ` (watcher ${status.state.toLowerCase()}: ${status.lastError})` : "";
      const confirmed = staleness === Infinity ? "never confirmed current" : `last confirmed current ${staleness.toFixed(1)} s ago`;
      const message = `${action} refused: the revocation state was ${confirmed} (limit ${this.maxStaleness} s)${why}, so revocations cannot be ruled out`;
      if (!this.failOpen) throw refusal(RevocationStateStale, message);
      if (now - this.lastOpenWarning > 5) {
        this.log(`FAIL-OPEN: ${message}; allowing anyway`);
        this.lastOpenWarning = now;
      }
    }
    const decision = this.policy.decide(action, resource, region);
    if (!decision.allowed) throw refusal(ScopeDenied, decision.reason);
    return decision;
  }

  /** Wrap `fn` so that every call is checked first: `guard.requires("tool:shell:exec", run)`. */
  requires<A extends unknown[], R>(action: string, fn: (...args: A) => R, resource: string | null = null, jurisdiction: string | null = null): (...args: A) => R {
    return (...args: A): R => {
      this.check(action, resource, jurisdiction);
      return fn(...args);
    };
  }

  /** Run `callback(entry)` once when this passport is revoked (at once if it already is). */
  onKill(callback: KillCallback): void {
    this.killCallbacks.push(callback);
    if (this.killEntry !== null) callback(this.killEntry);
  }

  get killed(): boolean {
    return this.killEntry !== null;
  }

  /** Resolves with the revocation once this passport is revoked (null after `timeout` s). */
  waitForKill(timeout?: number): Promise<RevocationEntry | null> {
    if (this.killEntry !== null) return Promise.resolve(this.killEntry);
    return new Promise((resolve) => {
      const timer = timeout === undefined ? undefined : setTimeout(() => resolve(null), timeout * 1000);
      this.killWaiters.push((entry) => {
        clearTimeout(timer);
        resolve(entry);
      });
    });
  }

  private onState(state: RevocationState): void {
    this.reporter?.heartbeatNow?.(); // tell the registry which epoch we now apply
    const blocking = state.blocking(this.jti, this.agentId, this.fleet);
    if (blocking === null) {
      this.killEntry = null; // lifted: the agent may run again
      return;
    }
    if (this.killEntry !== null) return;
    this.killEntry = blocking;
    this.log(`passport ${this.jti} stopped: ${blocking.describe()}`);
    for (const waiter of this.killWaiters.splice(0)) waiter(blocking);
    for (const callback of [...this.killCallbacks]) {
      try {
        callback(blocking);
      } catch (error) {
        this.log(`kill callback failed: ${(error as Error).stack ?? error}`);
      }
    }
  }

  /** The revocation epoch applied and the digest of the revocations held (the heartbeat). */
  heartbeat(): Heartbeat {
    const state = this.watcher.state;
    return { epoch: state.epoch, digest: state.digest, host: hostname(), pid: process.pid };
  }

  async close(): Promise<void> {
    if (this.ownsWatcher) await this.watcher.stop();
  }
}
