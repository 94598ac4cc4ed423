import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { PassportRevoked, RevocationStateStale, ScopeDenied } from "../src/errors.js";
import { Guard } from "../src/guard.js";
import { RevocationChannel } from "../src/protocol.js";
import { revocationsDigest } from "../src/revocations.js";
import { RevocationWatcher } from "../src/watcher.js";
import { ISSUER, makeSigner, passportClaims, type RedisServer, sign, startRedis, TestPublisher, waitFor } from "./helpers.js";

let redis: RedisServer;
const signer = makeSigner();
const quiet = () => undefined;

before(async () => {
  redis = await startRedis();
});
after(async () => {
  await redis.stop();
});

async function freshChannel(prefix: string): Promise<TestPublisher> {
  const publisher = new TestPublisher(redis.client, prefix);
  await publisher.reset();
  return publisher;
}

function watch(publisher: TestPublisher): RevocationWatcher {
  return new RevocationWatcher(redis.url, { channel: new RevocationChannel(publisher.prefix), log: quiet });
}

test("watcher: a revoke in the stream stops the guard, a lift lets it run again", async () => {
  const publisher = await freshChannel("t1");
  const claims = passportClaims({ rev: { stream: "t1:revocations:stream" } });
  const guard = await Guard.create(await sign(signer, claims), { keys: signer.keys, issuer: ISSUER, redisUrl: redis.url, log: quiet });
  try {
    await waitFor(() => guard.watcher.staleness() < 2, 5, "a confirmed state");
    assert.equal(guard.check("fs:read", "/workspace/a", "DE").allowed, true);
    assert.throws(() => guard.check("fs:read", "/etc/passwd", "DE"), ScopeDenied);
    const killed = guard.waitForKill(5);
    const kills: number[] = [];
    guard.onKill((entry) => kills.push(entry.id));
    await publisher.revoke(7, "agent", claims["sub"] as string);
    assert.equal((await killed)?.id, 7);
    assert.deepEqual(kills, [7]);
    assert.throws(() => guard.check("fs:read", "/workspace/a", "DE"), PassportRevoked);
    await publisher.lift(7);
    await waitFor(() => !guard.killed, 5, "the lift");
    await publisher.stamp();
    await waitFor(() => guard.watcher.problem === "", 5, "the stamp");
    assert.equal(guard.check("fs:read", "/workspace/a", "DE").allowed, true);
    assert.deepEqual(guard.heartbeat().epoch, 2);
    assert.equal(guard.heartbeat().digest, revocationsDigest([]));
  } finally {
    await guard.close();
  }
});

test("watcher: fleet and all revocations stop the guard; other targets do not", async () => {
  const publisher = await freshChannel("t2");
  const claims = passportClaims({ rev: { stream: "t2:revocations:stream" } });
  const guard = await Guard.create(await sign(signer, claims), { keys: signer.keys, issuer: ISSUER, redisUrl: redis.url, log: quiet });
  try {
    await publisher.revoke(1, "agent", "someone-else");
    await publisher.revoke(2, "fleet", "gpu-b");
    await waitFor(() => guard.watcher.state.epoch === 2, 5, "epoch 2");
    assert.equal(guard.killed, false);
    await publisher.revoke(3, "fleet", "gpu-a");
    await waitFor(() => guard.killed, 5, "the fleet kill");
    assert.equal(guard.killEntry?.id, 3);
    await publisher.lift(3);
    await waitFor(() => !guard.killed, 5, "the lift");
    await publisher.revoke(4, "all", "*");
    await waitFor(() => guard.killed, 5, "the kill of all agents");
    assert.equal(guard.heartbeat().digest, revocationsDigest([1, 2, 4]));
  } finally {
    await guard.close();
  }
});

test("watcher: a gap in the stream (prev chain) makes it reload the snapshot", async () => {
  const publisher = await freshChannel("t3");
  const watcher = watch(publisher).start();
  try {
    assert.equal(await watcher.waitUntilReady(5), true);
    await publisher.revoke(1, "agent", "a", { stream: false }); // lost: only in the snapshot
    await publisher.revoke(2, "agent", "b"); // its prev (1) is not the last entry seen (none)
    await publisher.revoke(3, "agent", "c");
    await waitFor(() => watcher.state.epoch === 3, 5, "epoch 3");
    assert.deepEqual([...watcher.state.active.keys()].sort(), [1, 2, 3]);
  } finally {
    await watcher.stop();
  }
});

test("watcher: the state is fresh only once the stamp's epoch is applied; a stale state fails closed", async () => {
  const publisher = await freshChannel("t4");
  const claims = passportClaims({ rev: { stream: "t4:revocations:stream" } });
  const guard = await Guard.create(await sign(signer, claims), { keys: signer.keys, issuer: ISSUER, redisUrl: redis.url, maxStaleness: 0.5, log: quiet });
  try {
    await waitFor(() => guard.watcher.problem === "", 5, "a confirmed state");
    assert.equal(guard.check("tool:shell", null, "DE").allowed, true);
    await publisher.stamp(publisher.epoch + 5); // committed epochs this agent cannot see
    await waitFor(() => guard.watcher.problem.startsWith("catching up"), 5, "catching up");
    await waitFor(() => guard.watcher.staleness() > 0.5, 5, "staleness");
    assert.throws(() => guard.check("tool:shell", null, "DE"), (error: unknown) => error instanceof RevocationStateStale && /catching up: epoch 0 applied, 5 committed/.test(error.message));
  } finally {
    await guard.close();
  }
});

test("watcher: an older snapshot is refused and the applied epoch never goes backwards", async () => {
  const publisher = await freshChannel("t5");
  const watcher = watch(publisher).start();
  try {
    await watcher.waitUntilReady(5);
    await publisher.revoke(1, "agent", "a");
    await waitFor(() => watcher.state.epoch === 1, 5, "epoch 1");
    publisher.epoch = 0; // Redis restored from an older copy
    await publisher.reset("g2");
    await waitFor(() => watcher.problem.includes("older than the state applied"), 5, "the refusal");
    assert.equal(watcher.state.epoch, 1);
    assert.deepEqual([...watcher.state.active.keys()], [1]);
  } finally {
    await watcher.stop();
  }
});

test("watcher: a snapshot in an unknown protocol version makes guards refuse at once", async () => {
  const publisher = await freshChannel("t7");
  const watcher = watch(publisher).start();
  try {
    await watcher.waitUntilReady(5);
    assert.ok(watcher.staleness() < 2);
    await redis.client.hset("t7:revocations:snapshot", "_v", "2"); // read on every poll
    await waitFor(() => watcher.problem.includes("protocol version"), 5, "the refusal");
    assert.equal(watcher.staleness(), Infinity);
  } finally {
    await watcher.stop();
  }
});

test("watcher: no snapshot at all is never trusted", async () => {
  await redis.client.del("t6:revocations:snapshot");
  const watcher = new RevocationWatcher(redis.url, { channel: new RevocationChannel("t6"), log: quiet }).start();
  try {
    assert.equal(await watcher.waitUntilReady(0.5), false);
    assert.match(watcher.problem, /no snapshot in Redis/);
    assert.equal(watcher.staleness(), Infinity);
  } finally {
    await watcher.stop();
  }
});
