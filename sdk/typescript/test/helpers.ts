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
  url: string;
  client: Redis;
  stop(): Promise<void>;
}

/** An empty, non-persistent redis-server on 127.0.0.1, stopped (whole process group) by stop(). */
export async function startRedis(): Promise<RedisServer> {
  const port = await freePort();
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
    url,
    client,
    async stop() {
      client.disconnect();
      if (child.pid !== undefined) process.kill(-child.pid, "SIGTERM");
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
