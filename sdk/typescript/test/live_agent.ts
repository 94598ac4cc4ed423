/**
 * An agent for the live kill-switch test (tests/sdk_typescript/test_live.py): a TypeScript
 * Guard on a passport issued by the real registry, with its reporter, following the registry's
 * Redis. After every change of revocations it checks `ACTION` and prints the outcome when it
 * changed: `<outcome> <Date.now() ms> <applied epoch>` (outcome: allowed or the error's name).
 * Closing stdin flushes the reporter and exits.
 *
 * Environment: APS_TOKEN, APS_REGISTRY (base URL, also the issuer), APS_REDIS, APS_ACTION.
 */
import { Guard } from "../src/guard.js";
import { JWKSClient } from "../src/jwks.js";
import { ActionReporter } from "../src/reporter.js";

const env = (name: string): string => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};

const [token, registry, action] = [env("APS_TOKEN"), env("APS_REGISTRY"), env("APS_ACTION")];
const reporter = new ActionReporter(`${registry}/api/v1/actions`, token, { flushInterval: 0.2 }).start();
const guard = await Guard.create(token, {
  keys: new JWKSClient(`${registry}/.well-known/jwks.json`).lookup,
  issuer: registry,
  redisUrl: env("APS_REDIS"),
  reporter,
});

let last = "";
function report(): void {
  let outcome = "allowed";
  try {
    guard.check(action);
  } catch (error) {
    outcome = (error as Error).name;
  }
  if (outcome !== last) {
    last = outcome;
    process.stdout.write(`${outcome} ${Date.now()} ${guard.watcher.state.epoch}\n`);
  }
}

guard.watcher.addListener(report); // after the guard's own listener: the guard is up to date
const ready = setInterval(() => {
  if (guard.watcher.problem === "") {
    clearInterval(ready);
    report();
  }
}, 5);
process.stdin.resume();
process.stdin.on("end", async () => {
  await reporter.flush(10);
  await reporter.close();
  await guard.close();
  process.exit(0);
});
