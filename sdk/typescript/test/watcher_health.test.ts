/** The watcher's lifecycle and health: status(), backoff with jitter, and what stop() closes. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { backoffDelay } from "../src/backoff.js";
import { monotonic, sleep } from "../src/clock.js";
import { RevocationStateStale } from "../src/errors.js";
import { Guard } from "../src/guard.js";
import { RevocationChannel } from "../src/protocol.js";
import { RevocationWatcher, type WatcherOptions, type WatcherState } from "../src/watcher.js";
import { ISSUER, makeSigner, passportClaims, type RedisServer, sign, startRedis, TestPublisher, waitFor } from "./helpers.js";

const quiet = () => undefined;
const PREFIX = "health";

/**
 * A private Redis with a published (empty) revocation channel. A watcher may reach a restarted
 * one before the channel is published, fail ("no snapshot") and back off once more.
 */
async function startChannel(port?: number): Promise<RedisServer> {
  const redis = await startRedis(port);
  await new TestPublisher(redis.client, PREFIX).reset();
  return redis;
}

function watcherOn(redis: RedisServer, options: WatcherOptions = {}): RevocationWatcher {
  return new RevocationWatcher(redis.url, { channel: new RevocationChannel(PREFIX), log: quiet, ...options });
}

/** The connections the server has open. */
async function clients(redis: RedisServer): Promise<number> {
  const list = (await redis.client.client("LIST")) as string;
  return list.trim().split("\n").length;
}

test("backoff: each delay is a random point in the upper half of its doubling step, up to the cap", () => {
  for (let failures = 1; failures <= 40; failures++) {
    const step = Math.min(0.5, 0.1 * 2 ** (failures - 1));
    const delays = Array.from({ length: 200 }, () => backoffDelay(failures, 0.1, 0.5));
    assert.ok(delays.every((delay) => delay >= step / 2 && delay <= step), `failures=${failures}: ${Math.min(...delays)}..${Math.max(...delays)} not in [${step / 2}, ${step}]`);
    assert.ok(Math.max(...delays) - Math.min(...delays) > step / 4, `failures=${failures}: no jitter`);
  }
  assert.throws(() => new RevocationWatcher("redis://127.0.0.1:1/0", { retryDelay: 1, maxRetryDelay: 0.5 }), RangeError);
});

test("status: INITIALIZING, VALID, INTERRUPTED while Redis is down, VALID again, OFF", async () => {
  let redis = await startChannel();
  const watcher = watcherOn(redis, { retryDelay: 0.1, maxRetryDelay: 3 });
  assert.equal(watcher.status().state, "OFF");
  watcher.start();
  assert.deepEqual(watcher.status(), { state: "INITIALIZING", lastError: "not loaded yet", stalenessS: Infinity });
  const seen: WatcherState[] = [];
  const sampler = setInterval(() => seen.push(watcher.status().state), 2);
  try {
    await waitFor(() => watcher.status().state === "VALID", 5, "VALID");
    assert.deepEqual(watcher.status().lastError, null);
    assert.ok(watcher.status().stalenessS < 2);

    await redis.stop(); // an outage long enough for the backoff to reach its cap
    await waitFor(() => watcher.status().state === "INTERRUPTED", 5, "INTERRUPTED");
    assert.match(watcher.status().lastError ?? "", /^Redis unreachable/);
    await waitFor(() => /^Redis unreachable \(Error: connect ECONNREFUSED /.test(watcher.status().lastError ?? ""), 5, "the cause of the failed reconnect");
    await sleep(4);
    assert.ok(watcher.status().stalenessS > 3.5);
    redis = await startChannel(redis.port);
    await waitFor(() => watcher.status().state === "VALID", 5, "VALID after the restart");

    // The backoff was reset by the good round trip: after a second, short failure (the snapshot
    // gone for 0.3 s) the watcher retries within its first steps (0.1 s, 0.2 s, 0.4 s), not
    // after the 1.5-3 s step the first outage had reached.
    await redis.client.del(`${PREFIX}:revocations:snapshot`);
    await waitFor(() => watcher.status().state === "INTERRUPTED", 5, "INTERRUPTED again");
    await sleep(0.3);
    await new TestPublisher(redis.client, PREFIX).reset();
    const restored = monotonic();
    await waitFor(() => watcher.status().state === "VALID", 5, "VALID after the snapshot is back");
    const recovery = monotonic() - restored;
    assert.ok(recovery < 1, `recovered ${recovery.toFixed(2)} s after the snapshot was back: the backoff was not reset`);
  } finally {
    await watcher.stop();
    clearInterval(sampler);
    await redis.stop();
  }
  assert.equal(watcher.status().state, "OFF");
  assert.equal(watcher.status().lastError, "stopped");
  assert.ok(!seen.slice(seen.indexOf("VALID")).includes("INITIALIZING"), "INITIALIZING again after VALID");
});

test("status: a guard refuses a stale state naming the watcher's state and error", async () => {
  const redis = await startChannel();
  const signer = makeSigner();
  const claims = passportClaims({ rev: { stream: `${PREFIX}:revocations:stream` } });
  const guard = await Guard.create(await sign(signer, claims), { keys: signer.keys, issuer: ISSUER, redisUrl: redis.url, maxStaleness: 0.3, log: quiet });
  try {
    await waitFor(() => guard.watcher.status().state === "VALID", 5, "VALID");
    assert.equal(guard.check("tool:shell", null, "DE").allowed, true);
    await redis.stop();
    await waitFor(() => guard.watcher.staleness() > 0.4, 5, "a stale state");
    assert.throws(
      () => guard.check("tool:shell", null, "DE"),
      (error: unknown) => error instanceof RevocationStateStale && / \(watcher interrupted: Redis unreachable \(/.test(error.message),
    );
  } finally {
    await guard.close();
    await redis.stop();
  }
});

test("status: a guard that starts without revocation state says so, naming the watcher's status", async () => {
  const redis = await startRedis(); // no channel published
  const signer = makeSigner();
  const claims = passportClaims({ rev: { stream: `${PREFIX}:revocations:stream` } });
  const logged: string[] = [];
  const guard = await Guard.create(await sign(signer, claims), { keys: signer.keys, issuer: ISSUER, redisUrl: redis.url, readyTimeout: 0.3, log: (message) => logged.push(message) });
  try {
    assert.ok(
      logged.some((message) => message.startsWith(`guard for agent ${claims["sub"]} starts without revocation state (initializing: revocation state unavailable: no snapshot in Redis`)),
      JSON.stringify(logged),
    );
    assert.throws(() => guard.check("tool:shell", null, "DE"), RevocationStateStale);
  } finally {
    await guard.close();
    await redis.stop();
  }
});

test("backoff: watchers that lost Redis together reconnect at moments spread over the step", async (t) => {
  let redis = await startChannel();
  const count = 20;
  const watchers = Array.from({ length: count }, () => watcherOn(redis, { retryDelay: 0.2, maxRetryDelay: 1 }).start());
  try {
    await waitFor(() => watchers.every((watcher) => watcher.status().state === "VALID"), 10, "all VALID");
    await redis.stop();
    await waitFor(() => watchers.every((watcher) => watcher.status().state === "INTERRUPTED"), 5, "all INTERRUPTED");
    await sleep(3); // every watcher's backoff at its 1 s cap
    redis = await startChannel(redis.port);
    const recovered = new Map<RevocationWatcher, number>();
    await waitFor(
      () => {
        for (const watcher of watchers) if (!recovered.has(watcher) && watcher.status().state === "VALID") recovered.set(watcher, monotonic());
        return recovered.size === count;
      },
      10,
      "all VALID again",
    );
    const moments = [...recovered.values()];
    const spread = Math.max(...moments) - Math.min(...moments);
    t.diagnostic(`${count} watchers (steps 0.2 s doubling to 1 s) reconnected within ${spread.toFixed(3)} s of each other`);
    assert.ok(spread > 0.3, `${count} watchers reconnected within ${spread.toFixed(3)} s: in lock-step`);
  } finally {
    await Promise.all(watchers.map((watcher) => watcher.stop()));
    await redis.stop();
  }
});

test("stop: closes the connection the watcher opened, never a client passed in", async () => {
  const redis = await startChannel();
  try {
    const before = await clients(redis);
    const own = watcherOn(redis).start();
    assert.equal(await own.waitUntilReady(5), true);
    assert.equal(await clients(redis), before + 1);
    await own.stop();
    await waitFor(() => own.status().state === "OFF", 1, "OFF");
    const start = monotonic();
    while ((await clients(redis)) !== before && monotonic() - start < 2) await sleep(0.01);
    assert.equal(await clients(redis), before, "the watcher's own connection is still open after stop()");

    const borrowed = redis.client.duplicate();
    await borrowed.ping();
    const shared = watcherOn(redis, { client: borrowed }).start();
    assert.equal(await shared.waitUntilReady(5), true);
    await shared.stop();
    assert.equal(await borrowed.ping(), "PONG");
    assert.equal(await clients(redis), before + 1);
    borrowed.disconnect();
    assert.throws(() => shared.start(), /cannot be restarted/);
  } finally {
    await redis.stop();
  }
});
