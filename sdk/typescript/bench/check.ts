/**
 * The TypeScript half of bench/bench_sdk_check.py: `Guard.check` throughput on the passport and
 * the check mix it sends (JSON on stdin), against its Redis; prints the figures as JSON.
 * Per-call timings first (hrtime around each call), then timed batches of 1,000 calls; the
 * naive path builds the Policy again for every check (no index, no cache). Between batches
 * (untimed) the loop yields to the event loop so the watcher keeps the state current.
 */
import { readFileSync } from "node:fs";
import { Guard, type Reporter } from "../src/guard.js";
import { RevocationChannel } from "../src/protocol.js";
import { Policy } from "../src/rules.js";
import { keysFromJwks } from "../src/tokens.js";
import { RevocationWatcher } from "../src/watcher.js";

interface Config {
  token: string;
  jwks: unknown;
  issuer: string;
  redis_url: string;
  prefix: string;
  queries: Array<[string, string | null, string]>;
  seconds: number;
  sample_calls: number;
}

/** Appends to an array, as the reporter's record() appends to its buffer. */
class SinkReporter implements Reporter {
  readonly events: unknown[] = [];
  heartbeat = undefined;
  record(...event: unknown[]): void {
    this.events.push(event);
  }
}

const percentile = (sorted: number[], q: number) => sorted[Math.min(sorted.length - 1, Math.max(0, Math.round((q / 100) * sorted.length) - 1))] ?? 0;

/** Lets the watcher run (untimed): Node has one thread, and a loop that never yields would see its checks fail closed as stale. */
const yieldToWatcher = () => new Promise((resolve) => setImmediate(resolve));

async function measure(op: (i: number) => void, sampleCalls: number, batch: number, seconds: number, between?: () => void) {
  const now = process.hrtime.bigint;
  const samples: number[] = [];
  let i = 0;
  while (samples.length < sampleCalls) {
    for (let j = 0; j < batch; j++, i++) {
      const start = now();
      op(i);
      samples.push(Number(now() - start));
    }
    between?.();
    await yieldToWatcher();
  }
  const batches: number[] = [];
  const end = now() + BigInt(Math.round(seconds * 1e9));
  while (now() < end) {
    const start = now();
    for (let j = i; j < i + batch; j++) op(j);
    batches.push(Number(now() - start));
    i += batch;
    between?.();
    await yieldToWatcher();
  }
  samples.sort((a, b) => a - b);
  const total = batches.reduce((sum, ns) => sum + ns, 0);
  return {
    sampled_calls: samples.length,
    throughput_calls: batches.length * batch,
    per_s: Math.round((batches.length * batch) / (total / 1e9)),
    p50_us: percentile(samples, 50) / 1e3,
    p99_us: percentile(samples, 99) / 1e3,
    max_us: (samples.at(-1) ?? 0) / 1e3,
  };
}

const config = JSON.parse(readFileSync(0, "utf8")) as Config;
const watcher = new RevocationWatcher(config.redis_url, { channel: new RevocationChannel(config.prefix) }).start();
if (!(await watcher.waitUntilReady(15))) throw new Error("no revocation snapshot");
const guard = await Guard.create(config.token, { keys: keysFromJwks(config.jwks), issuer: config.issuer, watcher, reporter: new SinkReporter() });
const queries = config.queries;
const n = queries.length;
let allowed = 0;
for (const [action, resource, region] of queries) {
  try {
    guard.check(action, resource, region);
    allowed++;
  } catch (error) {
    if ((error as Error).name !== "ScopeDenied") throw error;
  }
}
const check = (i: number) => {
  const [action, resource, region] = queries[i % n] as [string, string | null, string];
  try {
    guard.check(action, resource, region);
  } catch (error) {
    if ((error as Error).name !== "ScopeDenied") throw error;
  }
};
const swapReporter = () => {
  (guard as { reporter: Reporter }).reporter = new SinkReporter();
};
const naive = (i: number) => {
  const [action, resource, region] = queries[i % n] as [string, string | null, string];
  Policy.fromClaims(guard.claims).decide(action, resource, region);
};
const rows = {
  guard_with_reporter: await measure(check, config.sample_calls, 1000, config.seconds, swapReporter),
  naive_policy_per_check: await measure(naive, Math.max(1000, config.sample_calls / 100), 100, config.seconds / 2),
};
await watcher.stop();
process.stdout.write(JSON.stringify({ node: process.version, rules: guard.policy.rules.length, distinct_checks: n, allowed_in_mix: allowed, rows }) + "\n");
