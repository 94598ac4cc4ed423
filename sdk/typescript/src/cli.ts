#!/usr/bin/env node
/**
 * Command line: `agent-passport-ts verify|check|watch` (the Python CLI's commands of the same
 * names). Exit codes: 0 allowed/valid, 1 denied/refused/invalid, 2 usage or input error.
 */
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { isRefusal, PassportError } from "./errors.js";
import { Guard } from "./guard.js";
import { JWKSClient } from "./jwks.js";
import { RevocationChannel } from "./protocol.js";
import type { RevocationState } from "./revocations.js";
import { decide } from "./rules.js";
import { keysFromJwks, type Keys, verifyToken } from "./tokens.js";
import { RevocationWatcher, type WatcherStatus } from "./watcher.js";

const USAGE = `usage:
  agent-passport-ts verify TOKEN (--registry URL | --jwks-file FILE) [--issuer ISS] [--audience AUD]
  agent-passport-ts check TOKEN ACTION [--resource R] [--jurisdiction J] [--redis URL] (--registry URL | --jwks-file FILE)
  agent-passport-ts watch --prefix P [--redis URL] [--timeout S] [--status-interval S]
TOKEN is the passport, '-' for stdin or @FILE. Exit: 0 allowed/valid, 1 refused/invalid, 2 usage error.`;

class CLIError extends Error {}

const OPTIONS = {
  registry: { type: "string", default: process.env["AGENT_PASSPORT_REGISTRY"] },
  "jwks-file": { type: "string" },
  issuer: { type: "string", default: process.env["AGENT_PASSPORT_ISSUER"] },
  audience: { type: "string", default: "agent-passport" },
  resource: { type: "string" },
  jurisdiction: { type: "string" },
  redis: { type: "string" },
  prefix: { type: "string" },
  timeout: { type: "string", default: "5" },
  "status-interval": { type: "string", default: "1" },
  help: { type: "boolean", short: "h" },
} as const;

type Values = ReturnType<typeof parseArgs<{ options: typeof OPTIONS; allowPositionals: true }>>["values"];

function readToken(value: string | undefined): string {
  if (value === undefined) throw new CLIError("give the passport token (or '-' for stdin, @FILE)");
  try {
    if (value === "-") return readFileSync(0, "utf8").trim();
    if (value.startsWith("@")) return readFileSync(value.slice(1), "utf8").trim();
  } catch (error) {
    throw new CLIError(`cannot read the token from ${value}: ${(error as Error).message}`);
  }
  return value.trim();
}

function keysOf(values: Values): Keys {
  if (values["jwks-file"]) {
    try {
      return keysFromJwks(JSON.parse(readFileSync(values["jwks-file"], "utf8")));
    } catch (error) {
      throw new CLIError(`cannot read JWKS file ${values["jwks-file"]}: ${(error as Error).message}`);
    }
  }
  if (values.registry) return new JWKSClient(values.registry.replace(/\/+$/, "") + "/.well-known/jwks.json").lookup;
  throw new CLIError("give --registry URL (to fetch its JWKS) or --jwks-file FILE");
}

function issuerOf(values: Values): string {
  const issuer = values.issuer ?? values.registry;
  if (!issuer) throw new CLIError("give --issuer (or --registry)");
  return issuer;
}

async function verify(values: Values, positionals: string[]): Promise<number> {
  const claims = await verifyToken(readToken(positionals[0]), keysOf(values), { issuer: issuerOf(values), audience: values.audience as string });
  console.log(JSON.stringify(claims, Object.keys(claims).sort(), 2));
  const remaining = claims.exp - Date.now() / 1000;
  console.error(`valid: passport ${claims.jti} for agent ${claims.sub}, expires in ${remaining.toFixed(0)} s`);
  return 0;
}

async function check(values: Values, positionals: string[]): Promise<number> {
  const action = positionals[1];
  if (!action) throw new CLIError("give the action, e.g. net:connect:1.2.3.4:22");
  const token = readToken(positionals[0]);
  const options = { keys: keysOf(values), issuer: issuerOf(values), audience: values.audience as string };
  if (values.redis) {
    const guard = await Guard.create(token, { ...options, redisUrl: values.redis, jurisdiction: values.jurisdiction ?? null });
    try {
      const decision = guard.check(action, values.resource ?? null);
      console.log(`allowed: ${decision.reason}`);
      return 0;
    } catch (error) {
      if (!isRefusal(error)) throw error;
      console.log(`refused: ${error.message}`);
      return 1;
    } finally {
      await guard.close();
    }
  }
  const claims = await verifyToken(token, options.keys, options);
  const decision = decide(claims, action, values.resource ?? null, values.jurisdiction ?? null);
  if (!decision.allowed) {
    console.log(`denied: ${decision.reason}`);
    return 1;
  }
  console.error("(scope only: give --redis URL to check revocations too)");
  console.log(`allowed: ${decision.reason}`);
  return 0;
}

/** `status: valid (confirmed current 0.1 s ago)`, or the state and why (as the Python CLI). */
function describeStatus(status: WatcherStatus): string {
  const state = status.state.toLowerCase();
  if (status.lastError === null) return `status: ${state} (confirmed current ${status.stalenessS.toFixed(1)} s ago)`;
  return `status: ${state}: ${status.lastError}`;
}

/** Print the active revocations whenever they change, and the watcher's status whenever it
 * changes (checked every --status-interval seconds), until SIGINT or SIGTERM. */
async function watch(values: Values): Promise<number> {
  if (!values.prefix) throw new CLIError("give --prefix: the registry's REVOCATION_REDIS_PREFIX (also in every passport's rev claim)");
  const timeout = Number(values.timeout);
  if (!(timeout > 0)) throw new CLIError(`--timeout must be a positive number of seconds, not ${values.timeout}`);
  const statusInterval = Number(values["status-interval"]);
  if (!(statusInterval > 0)) throw new CLIError(`--status-interval must be a positive number of seconds, not ${values["status-interval"]}`);
  const redis = values.redis ?? process.env["REDIS_URL"] ?? "redis://127.0.0.1:6379/0";
  const watcher = new RevocationWatcher(redis, { channel: new RevocationChannel(values.prefix) });
  const show = (state: RevocationState) => {
    console.log(`epoch ${state.epoch}: ${state.active.size} active revocation(s)`);
    for (const entry of [...state.active.values()].sort((a, b) => a.epoch - b.epoch)) console.log(`  - ${entry.describe()}`);
  };
  watcher.addListener(show);
  watcher.start();
  if (await watcher.waitUntilReady(timeout)) show(watcher.state);
  else console.error(`no revocation snapshot at ${redis} (prefix '${values.prefix}') yet; waiting…`);
  let shown = "";
  const showStatus = () => {
    const status = watcher.status();
    const key = `${status.state} ${status.lastError}`;
    if (key !== shown) console.log(describeStatus(status));
    shown = key;
  };
  showStatus();
  const timer = setInterval(showStatus, statusInterval * 1000);
  await new Promise<void>((resolve) => process.once("SIGINT", resolve).once("SIGTERM", resolve));
  clearInterval(timer);
  await watcher.stop();
  return 0;
}

export async function main(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true });
  } catch (error) {
    console.error(`error: ${(error as Error).message}\n${USAGE}`);
    return 2;
  }
  const [command, ...rest] = parsed.positionals;
  if (parsed.values.help || !command) {
    console.error(USAGE);
    return parsed.values.help ? 0 : 2;
  }
  try {
    if (command === "verify") return await verify(parsed.values, rest);
    if (command === "check") return await check(parsed.values, rest);
    if (command === "watch") return await watch(parsed.values);
    throw new CLIError(`unknown command ${command}`);
  } catch (error) {
    if (error instanceof PassportError) {
      console.error(`invalid passport (${error.reason}): ${error.message}`);
      return 1;
    }
    if (error instanceof CLIError) {
      console.error(`error: ${error.message}`);
      return 2;
    }
    throw error;
  }
}

main(process.argv.slice(2)).then((code) => process.exit(code));
