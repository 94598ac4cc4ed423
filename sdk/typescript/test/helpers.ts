/** Test helpers: a private redis-server on loopback, and passports signed like the registry's. */
import { type ChildProcess, spawn } from "node:child_process";
import { generateKeyPairSync, type KeyObject, randomUUID, sign as signBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Redis } from "ioredis";
import { sleep } from "../src/clock.js";

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => (typeof address === "object" && address ? resolve(address.port) : reject(new Error("no port"))));
    });
  });
}

export interface RedisServer {
  port: number;
  url: string;
  client: Redis;
  stop(): Promise<void>;
}

/**
 * An empty, non-persistent redis-server on 127.0.0.1 (on `port`, e.g. to restart one that was
 * stopped; else a free one), stopped (whole process group) by stop().
 */
export async function startRedis(port?: number): Promise<RedisServer> {
  port ??= await freePort();
  const dir = mkdtempSync(join(tmpdir(), "aps-ts-redis-"));
  const child: ChildProcess = spawn("redis-server", ["--bind", "127.0.0.1", "--port", String(port), "--save", "", "--appendonly", "no", "--dir", dir], {
    stdio: "ignore",
    detached: true,
  });
  const url = `redis://127.0.0.1:${port}/0`;
  const client = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  client.on("error", () => undefined);
  for (let attempt = 0; ; attempt++) {
    try {
      await client.connect();
      await client.ping();
      break;
    } catch (error) {
      if (attempt > 100) throw error;
      await sleep(0.05);
    }
  }
  return {
    port,
    url,
    client,
    async stop() {
      client.disconnect();
      if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) process.kill(-child.pid, "SIGTERM"); // stopping twice is harmless
      await new Promise((resolve) => (child.exitCode !== null ? resolve(null) : child.once("exit", resolve)));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export interface Signer {
  kid: string;
  privateKey: KeyObject;
  keys: Map<string, KeyObject>;
  jwks: { keys: Array<Record<string, string>> };
}

export function makeSigner(kid = "test-key"): Signer {
  const { publicKey, privateKey } = generateKeyPairSync("ed25519");
  const jwk = publicKey.export({ format: "jwk" }) as Record<string, string>;
  return { kid, privateKey, keys: new Map([[kid, publicKey]]), jwks: { keys: [{ ...jwk, kid, alg: "EdDSA", use: "sig" }] } };
}

export const ISSUER = "https://registry.test";

/** Claims as the registry issues them, with overrides. */
export function passportClaims(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  const now = Math.floor(Date.now() / 1000);
  return {
    iss: ISSUER,
    sub: randomUUID(),
    aud: "agent-passport",
    jti: randomUUID(),
    iat: now,
    nbf: now,
    exp: now + 3600,
    scope: ["fs:read:/workspace/**", "tool:shell", "!tool:shell:rm"],
    jurisdiction: ["EU"],
    fleet: "gpu-a",
    rev: { transport: "redis-stream", stream: "aps:revocations:stream" },
    ...overrides,
  };
}

/** A JWS signed with Ed25519 by hand (jose refuses to sign some of the headers tests need). */
export async function sign(signer: Signer, claims: Record<string, unknown>, header: Record<string, unknown> = {}): Promise<string> {
  const encode = (value: unknown) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const input = `${encode({ alg: "EdDSA", typ: "agent-passport+jwt", kid: signer.kid, ...header })}.${encode(claims)}`;
  return `${input}.${signBytes(null, Buffer.from(input), signer.privateKey).toString("base64url")}`;
}

/** Writes the revocation channel as the registry does (README, "Kill-switch protocol"). */
export class TestPublisher {
  epoch = 0;
  private position = 0;
  constructor(
    readonly client: Redis,
    readonly prefix = "aps",
  ) {}

  async reset(generation = "g1"): Promise<void> {
    await this.client.del(`${this.prefix}:revocations:snapshot`, `${this.prefix}:revocations:stream`, `${this.prefix}:revocations:heartbeat`);
    await this.client.hset(`${this.prefix}:revocations:snapshot`, "_epoch", String(this.epoch), "_generation", generation);
    await this.stamp();
  }

  /** The registry's heartbeat: the committed epoch and Redis's TIME in ms. */
  async stamp(epoch = this.epoch): Promise<void> {
    const [seconds, micros] = (await this.client.time()) as unknown as [string, string];
    const at = Number(seconds) * 1000 + Math.floor(Number(micros) / 1000);
    await this.client.hset(`${this.prefix}:revocations:heartbeat`, "epoch", String(epoch), "at", String(at));
  }

  async revoke(id: number, type: string, value: string, options: { stream?: boolean } = {}): Promise<number> {
    this.epoch += 1;
    const entry = { id, epoch: this.epoch, kind: "revoke", target: { type, value }, reason: "test", source: "api", at: "2026-12-01T00:00:00Z" };
    await this.push(id, entry, options.stream ?? true);
    return this.epoch;
  }

  async lift(id: number): Promise<number> {
    this.epoch += 1;
    await this.push(id, { id, epoch: this.epoch, kind: "lift" }, true);
    return this.epoch;
  }

  private async push(id: number, entry: Record<string, unknown>, stream: boolean): Promise<void> {
    const snapshot = `${this.prefix}:revocations:snapshot`;
    const multi = this.client.multi();
    if (entry["kind"] === "revoke") multi.hset(snapshot, `r:${id}`, JSON.stringify(entry));
    else multi.hdel(snapshot, `r:${id}`);
    multi.hset(snapshot, "_epoch", String(this.epoch));
    if (stream) multi.xadd(`${this.prefix}:revocations:stream`, "*", "entry", JSON.stringify(entry), "prev", String(this.position));
    await multi.exec();
    this.position = this.epoch; // an entry left out of the stream is a lost one: a gap
  }
}

/** Poll `condition` every 5 ms until it holds (throws after `timeout` seconds). */
export async function waitFor(condition: () => boolean, timeout = 5, what = "condition"): Promise<void> {
  const deadline = performance.now() + timeout * 1000;
  while (!condition()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(0.005);
  }
}
