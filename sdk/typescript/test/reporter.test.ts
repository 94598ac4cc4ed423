import assert from "node:assert/strict";
import { appendFileSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer, type IncomingMessage, type Server } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { ActionReporter, DENY_SPACING } from "../src/reporter.js";
import { freePort, waitFor } from "./helpers.js";

interface Posted {
  authorization: string | undefined;
  body: { events: Array<Record<string, unknown>>; heartbeat?: Record<string, unknown> };
}

/** An HTTP endpoint on loopback that answers like POST /api/v1/actions, storing each id once. */
async function actionsEndpoint(port: number, status = () => 200): Promise<{ url: string; posts: Posted[]; ids: Set<string>; server: Server }> {
  const posts: Posted[] = [];
  const ids = new Set<string>();
  const server = createServer((request: IncomingMessage, response) => {
    let data = "";
    request.on("data", (chunk) => (data += chunk));
    request.on("end", () => {
      const code = status();
      const body = JSON.parse(data) as Posted["body"];
      posts.push({ authorization: request.headers.authorization, body });
      if (code === 200) for (const event of body.events) ids.add(event["id"] as string);
      response.writeHead(code, { "Content-Type": "application/json" }).end(JSON.stringify({ stored: body.events.length }));
    });
  });
  await new Promise<void>((resolve) => server.listen(port, "127.0.0.1", resolve));
  return { url: `http://127.0.0.1:${port}/api/v1/actions`, posts, ids, server };
}

const close = (server: Server) => new Promise((resolve) => server.close(resolve));
const quiet = () => undefined;
const spillDir = mkdtempSync(join(tmpdir(), "aps-ts-spill-"));
after(() => rmSync(spillDir, { recursive: true, force: true }));
let spills = 0;
const spillPath = () => join(spillDir, `actions-${++spills}.jsonl`);

test("reporter: events are posted in batches with the token and the guard's heartbeat", async () => {
  const registry = await actionsEndpoint(await freePort());
  const heartbeat = { epoch: 41, digest: "a".repeat(64), host: "h", pid: 7 };
  const reporter = new ActionReporter(registry.url, "tok.en.x", { spillPath: spillPath(), batchSize: 2, heartbeat: () => heartbeat, log: quiet });
  try {
    for (let i = 0; i < 5; i++) reporter.record(1767225600 + i, "fs:write", `/w/${i}`, "DE", i % 2 === 0, "why\x00");
    assert.equal(await reporter.flush(5), true);
    assert.equal(reporter.sent, 5);
    assert.equal(registry.ids.size, 5);
    const withEvents = registry.posts.filter((post) => post.body.events.length);
    assert.deepEqual(withEvents.map((post) => post.body.events.length), [2, 2, 1]);
    assert.equal(withEvents[0]?.authorization, "Bearer tok.en.x");
    assert.deepEqual(withEvents[0]?.body.heartbeat, heartbeat);
    const first = withEvents[0]?.body.events[0] as Record<string, unknown>;
    assert.deepEqual({ ...first, id: undefined }, { id: undefined, action: "fs:write", resource: "/w/0", jurisdiction: "DE", decision: "allow", reason: "why\\x00", at: 1767225600 });
  } finally {
    await reporter.close();
    await close(registry.server);
  }
});

test("reporter: while the registry is down events go to the spill file, and are sent once with the same ids later", async () => {
  const port = await freePort();
  const path = spillPath();
  const down = new ActionReporter(`http://127.0.0.1:${port}/api/v1/actions`, "t.o.k", { spillPath: path, flushInterval: 0.05, log: quiet });
  down.start();
  for (let i = 0; i < 3; i++) down.record(1767225600, "tool:shell", null, null, false, "denied");
  await waitFor(() => down.spilled === 3, 5, "the spill");
  await down.close();
  const spilledIds = readFileSync(path, "utf8").trim().split("\n").map((raw) => (JSON.parse(raw) as { id: string }).id);
  assert.equal(spilledIds.length, 3);

  const registry = await actionsEndpoint(port);
  const restarted = new ActionReporter(registry.url, "t.o.k", { spillPath: path, log: quiet });
  try {
    assert.equal(restarted.spilled, 3);
    assert.equal(await restarted.flush(5), true);
    assert.deepEqual([...registry.ids].sort(), [...spilledIds].sort());
    assert.equal(readFileSync(path, "utf8"), "");
  } finally {
    await restarted.close();
    await close(registry.server);
  }
});

test("reporter: a line torn by a crash is cut off and counted as dropped", async () => {
  const path = spillPath();
  appendFileSync(path, JSON.stringify({ id: "e1", action: "a:b", resource: null, jurisdiction: null, decision: "allow", reason: "", at: 1 }) + "\n{\"id\": \"e2\", \"act");
  const reporter = new ActionReporter("http://127.0.0.1:9/none", "t.o.k", { spillPath: path, log: quiet });
  assert.equal(reporter.spilled, 1);
  assert.equal(reporter.dropped, 1);
  assert.equal(readFileSync(path, "utf8").endsWith("\n"), true);
});

test("reporter: a batch the registry refuses for good is dropped, counted and reported", async () => {
  let status = 400;
  const registry = await actionsEndpoint(await freePort(), () => status);
  const reporter = new ActionReporter(registry.url, "t.o.k", { spillPath: spillPath(), flushInterval: 0.05, log: quiet });
  try {
    reporter.record(1, "a:b", null, null, true, "");
    assert.equal(await reporter.flush(5), false);
    assert.equal(reporter.dropped, 1);
    status = 200;
    await waitFor(() => registry.posts.some((post) => post.body.heartbeat?.["dropped"] === 1), 5, "the drop report");
  } finally {
    await reporter.close();
    await close(registry.server);
  }
});

test("reporter: while a post hangs past STALLED_POST, new events go to the spill file, and are sent once after", async () => {
  const registry = await actionsEndpoint(await freePort());
  let hang = true;
  const answered = registry.server.listeners("request")[0] as (request: IncomingMessage, response: unknown) => void;
  registry.server.removeAllListeners("request");
  registry.server.on("request", (request: IncomingMessage, response) => {
    const delay = hang ? 2000 : 0; // the first post: a registry that accepts but does not answer
    hang = false;
    setTimeout(() => answered(request, response), delay);
  });
  const reporter = new ActionReporter(registry.url, "t.o.k", { spillPath: spillPath(), flushInterval: 0.05, log: quiet });
  try {
    reporter.record(1, "a:first", null, null, true, "");
    reporter.start();
    await waitFor(() => !hang, 5, "the first post");
    reporter.record(2, "a:second", null, null, true, "");
    reporter.record(3, "a:third", null, null, true, "");
    await waitFor(() => reporter.spilled === 2, 1.5, "the events after the stalled post on disk");
    assert.equal(reporter.buffered, 0);
    assert.equal(await reporter.flush(5), true);
    assert.equal(registry.ids.size, 3);
    assert.equal(reporter.sent, 3);
  } finally {
    await reporter.close();
    await close(registry.server);
  }
});

const pause = (seconds: number) => new Promise((resolve) => setTimeout(resolve, seconds * 1000));
const withEvents = (posts: Posted[]) => posts.filter((post) => post.body.events.length);

/** A started reporter past its first cycles: its loop waits for the flush timer. */
async function idleReporter(url: string, options: { flushInterval: number }): Promise<ActionReporter> {
  const reporter = new ActionReporter(url, "t.o.k", { spillPath: spillPath(), log: quiet, ...options }).start();
  assert.equal(await reporter.flush(5), true);
  await pause(0.3);
  return reporter;
}

test("reporter: a deny is sent at once while allows wait for the flush timer", async () => {
  const registry = await actionsEndpoint(await freePort());
  const reporter = await idleReporter(registry.url, { flushInterval: 30 });
  try {
    reporter.record(1767225600, "fs:read", "/w/a", null, true, "allowed");
    await pause(1);
    assert.equal(withEvents(registry.posts).length, 0, "an allow waits for the 30 s timer");
    reporter.record(1767225601, "fs:write", "/etc/passwd", null, false, "not in scope");
    await waitFor(() => registry.ids.size === 2, 5, "the deny, and the allow with it");
    assert.deepEqual(withEvents(registry.posts)[0]?.body.events.map((event) => event["decision"]), ["allow", "deny"]);
  } finally {
    await reporter.close();
    await close(registry.server);
  }
});

test("reporter: a burst of denies goes out in a few posts", async () => {
  const registry = await actionsEndpoint(await freePort());
  const reporter = await idleReporter(registry.url, { flushInterval: 30 });
  try {
    for (let i = 0; i < 1000; i++) reporter.record(1767225600, "fs:write", `/etc/${i}`, null, false, "not in scope");
    await waitFor(() => registry.ids.size === 1000, 10, "the burst");
    assert.ok(withEvents(registry.posts).length <= 5, `${withEvents(registry.posts).length} posts`);
  } finally {
    await reporter.close();
    await close(registry.server);
  }
});

test("reporter: a stream of denies is posted at most every DENY_SPACING", async () => {
  const registry = await actionsEndpoint(await freePort());
  const reporter = await idleReporter(registry.url, { flushInterval: 30 });
  try {
    const started = performance.now();
    for (let i = 0; performance.now() - started < 1000; i++) {
      reporter.record(1767225600, "fs:write", `/etc/${i}`, null, false, "not in scope");
      await pause(0.001);
    }
    await waitFor(() => reporter.buffered === 0 && registry.ids.size === reporter.sent, 5, "the stream");
    const posts = withEvents(registry.posts).length;
    assert.ok(posts >= 2 && posts <= 1 / DENY_SPACING + 3, `${posts} posts`);
  } finally {
    await reporter.close();
    await close(registry.server);
  }
});

test("reporter: a deny does not cut the backoff short, heartbeatNow does", async () => {
  const registry = await actionsEndpoint(await freePort(), () => 503);
  // The first retry waits 2-4 s (two flush intervals, the upper half of the step).
  const reporter = new ActionReporter(registry.url, "t.o.k", { spillPath: spillPath(), flushInterval: 2, log: quiet });
  try {
    reporter.record(1767225600, "fs:read", "/w/a", null, true, "allowed");
    reporter.start();
    await waitFor(() => registry.posts.length === 1, 5, "the first post");
    for (let i = 0; i < 50; i++) reporter.record(1767225600, "fs:write", `/etc/${i}`, null, false, "not in scope");
    await pause(1);
    assert.equal(registry.posts.length, 1, "the denies waited for the retry");
    await waitFor(() => reporter.spilled === 51, 5, "the denies on disk");
    reporter.heartbeatNow();
    await waitFor(() => registry.posts.length === 2, 0.9, "the explicit request");
  } finally {
    await reporter.close();
    await close(registry.server);
  }
});
