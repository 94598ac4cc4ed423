/**
 * Runs the language-neutral conformance vectors (conformance/README.md at the repository top)
 * against this SDK. Every `*.json` file found is run; a file of a kind or format this runner does
 * not know fails all its vectors (so a new kind cannot be silently skipped).
 */
import { readdirSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { canonical, checkpointPayload, eventHash, verifyChain, verifyCheckpoint } from "../src/audit.js";
import { RegionError, RuleError } from "../src/errors.js";
import { headId, headPayload, leafHash, promisePayload, treeRoot, verifyConsistency, verifyHead, verifyHeadChain, verifyInclusion, verifyPromise } from "../src/merkle.js";
import { COUNTRIES, GROUPINGS, normalizeRegion, regionWithin } from "../src/regions.js";
import { PassportError } from "../src/errors.js";
import { type Follower, followPoll, loadSnapshot, revocationsDigest, SnapshotUnavailable, START, type StreamMessage } from "../src/revocations.js";
import { parseJurisdiction, parseRule, parseScope, Policy } from "../src/rules.js";
import { keysFromJwks, verifyToken } from "../src/tokens.js";

type Vector = Record<string, unknown>;
type Check = (vector: Vector, file: Record<string, unknown>) => void | Promise<void>;

export interface FileResult {
  file: string;
  kind: string;
  vectors: number;
  passed: number;
  failures: string[];
}

/** `../../conformance` from sdk/typescript (CONFORMANCE_DIR overrides it). */
export function conformanceDir(): string {
  const packageRoot = resolve(fileURLToPath(import.meta.url), "../../..");
  return process.env["CONFORMANCE_DIR"] ?? resolve(packageRoot, "../../conformance");
}

function same(actual: unknown, expected: unknown, what: string): void {
  if (JSON.stringify(actual) !== JSON.stringify(expected))
    throw new Error(`${what}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`);
}

/** The error kind ("rule" or "region") `run` throws, or null if it does not throw. */
function errorKind(run: () => unknown): string | null {
  try {
    run();
    return null;
  } catch (error) {
    if (error instanceof RegionError) return "region";
    if (error instanceof RuleError) return "rule";
    throw error;
  }
}

const CHECKS: Record<string, Check> = {
  rules(vector) {
    const value = vector["value"];
    const parse = { rule: () => parseRule(value), scope: () => parseScope(value), jurisdiction: () => parseJurisdiction(value) }[vector["input"] as string];
    if (!parse) throw new Error(`unknown input ${String(vector["input"])}`);
    if (!vector["valid"]) return same(errorKind(parse), vector["error"], "error kind");
    const result = parse();
    if (vector["input"] === "rule") {
      const rule = result as ReturnType<typeof parseRule>;
      same({ deny: rule.deny, domain: rule.domain, action: rule.action, resource: rule.resource?.text ?? null }, vector["parsed"], "parsed");
    } else if (vector["input"] === "jurisdiction") same(result, vector["normalized"], "normalized");
  },
  decisions(vector) {
    const policy = new Policy(vector["scope"], vector["jurisdiction"]);
    const decision = policy.decide(vector["action"] as string, vector["resource"] as string | null, vector["region"] as string | null);
    same({ allowed: decision.allowed, rule: decision.rule }, { allowed: vector["allowed"], rule: vector["rule"] }, "decision");
  },
  regions(vector, file) {
    const tables = file["tables"] as Record<string, string[]>;
    same([...COUNTRIES].sort(), [...(tables["countries"] ?? [])].sort(), "countries table");
    for (const group of ["EU", "EEA", "EFTA"]) same([...(GROUPINGS.get(group) ?? [])].sort(), [...(tables[group] ?? [])].sort(), `${group} table`);
    if (vector["test"] === "normalize") {
      if ("error" in vector) return same(errorKind(() => normalizeRegion(vector["code"])), vector["error"], "error kind");
      return same(normalizeRegion(vector["code"]), vector["normalized"], "normalized");
    }
    if (vector["test"] === "within") return same(regionWithin(vector["inner"] as string, vector["outer"] as string), vector["within"], "within");
    throw new Error(`unknown test ${String(vector["test"])}`);
  },
  digest(vector) {
    same(revocationsDigest(vector["ids"] as number[]), vector["digest"], "digest");
  },
  audit(vector, file) {
    if (vector["test"] === "event") {
      const event = vector["event"] as Record<string, unknown>;
      same(canonical({ v: 1, ...Object.fromEntries(Object.entries(event).filter(([name]) => name !== "hash")) }), vector["canonical"], "canonical");
      return same(eventHash(event), event["hash"], "hash");
    }
    if (vector["test"] === "checkpoint") {
      const checkpoint = vector["checkpoint"] as Record<string, unknown>;
      same(checkpointPayload(checkpoint), vector["payload"], "payload");
      return same(verifyCheckpoint(checkpoint, keysFromJwks(file["jwks"])) === null, vector["valid"], "valid");
    }
    if (vector["test"] === "chain") {
      const walk = verifyChain(vector["agent"] as string, vector["events"] as Array<Record<string, unknown>>);
      same(file["genesis"], "0".repeat(64), "genesis");
      return same({ count: walk.count, head: walk.head, ok: walk.problem === null }, { count: vector["count"], head: vector["head"], ok: vector["ok"] }, "walk");
    }
    throw new Error(`unknown test ${String(vector["test"])}`);
  },
  merkle(vector, file) {
    const keys = keysFromJwks(file["jwks"]);
    const hex = (name: string): string => vector[name] as string;
    const number = (name: string): number => vector[name] as number;
    switch (vector["test"]) {
      case "leaf": return same(leafHash(hex("event_hash")), vector["leaf"], "leaf");
      case "root": return same(treeRoot(vector["leaves"] as string[]), vector["root"], "root");
      case "inclusion": return same(verifyInclusion(hex("leaf"), number("index"), number("size"), vector["path"] as string[], hex("root")), vector["valid"], "valid");
      case "consistency": return same(verifyConsistency(number("first"), number("second"), hex("first_root"), hex("second_root"), vector["proof"] as string[]), vector["valid"], "valid");
      case "head": {
        const head = vector["head"] as Record<string, unknown>;
        same(headPayload(head), vector["payload"], "payload");
        same(headId(head), vector["id"], "id");
        return same(verifyHead(head, keys) === null, vector["valid"], "valid");
      }
      case "head_chain": return same(verifyHeadChain(vector["heads"] as Array<Record<string, unknown>>) === null, vector["ok"], "ok");
      case "promise": {
        const promise = vector["promise"] as Record<string, unknown>;
        same(promisePayload(promise), vector["payload"], "payload");
        return same(verifyPromise(promise, keys) === null, vector["valid"], "valid");
      }
      default: throw new Error(`unknown test ${String(vector["test"])}`);
    }
  },
  async tokens(vector, file) {
    const options = { issuer: vector["issuer"] as string, audience: vector["audience"] as string, leeway: vector["leeway"] as number, now: vector["now"] as number };
    let outcome: Record<string, unknown>;
    try {
      outcome = { valid: true, claims: await verifyToken(vector["token"] as string, keysFromJwks(file["jwks"]), options) };
    } catch (error) {
      if (!(error instanceof PassportError)) throw error;
      outcome = { valid: false, error: error.name, reason: error.reason };
    }
    same(outcome, vector["expect"], "outcome");
  },
  revocations(vector, file) {
    const stops = file["stops"] as Array<{ jti: string; agent: string; fleet: string | null }>;
    let follower: Follower = START;
    (vector["steps"] as Vector[]).forEach((step, i) => {
      const expect = step["expect"] as Record<string, unknown>;
      const outcome: Record<string, unknown> = {};
      const toMessage = (raw: Vector): StreamMessage => [raw["id"] as string, raw["fields"] as Record<string, string>];
      try {
        if (step["op"] === "load") {
          const last = step["last"] as Vector | null;
          follower = loadSnapshot(step["snapshot"] as Record<string, string>, last ? toMessage(last) : null, follower.state.epoch);
          outcome["error"] = null;
        } else {
          const poll = followPoll(follower, step["snapshot"] as Record<string, string | null>, (step["messages"] as Vector[]).map(toMessage), step["batch"] as number);
          follower = poll.follower;
          outcome["reload"] = poll.reload || null;
        }
      } catch (error) {
        if (!(error instanceof SnapshotUnavailable)) throw error;
        outcome[step["op"] === "load" ? "error" : "reload"] = error.reason;
      }
      const state = follower.state;
      Object.assign(outcome, {
        epoch: state.epoch,
        active: [...state.active.keys()].sort((a, b) => a - b),
        digest: state.digest,
        generation: follower.generation,
        last_id: follower.lastId,
        position: follower.position,
        stopped_by: stops.map((stop) => state.blocking(stop.jti, stop.agent, stop.fleet)?.id ?? null),
      });
      same(Object.fromEntries(Object.keys(expect).map((key) => [key, outcome[key]])), expect, `step ${i} (${String(step["op"])})`);
      same(Object.keys(outcome).sort(), Object.keys(expect).sort(), `step ${i} fields`);
    });
  },
};

const FORMAT = 1;

export async function runFile(path: string): Promise<FileResult> {
  const file = JSON.parse(readFileSync(path, "utf8")) as Record<string, unknown>;
  const kind = String(file["kind"]);
  const vectors = Array.isArray(file["vectors"]) ? (file["vectors"] as Vector[]) : [];
  const result: FileResult = { file: path, kind, vectors: vectors.length, passed: 0, failures: [] };
  const check = CHECKS[kind];
  for (const [i, vector] of vectors.entries()) {
    try {
      if (file["format"] !== FORMAT) throw new Error(`format ${String(file["format"])} is not known to this runner`);
      if (!check) throw new Error(`kind ${kind} is not known to this runner`);
      await check(vector, file);
      result.passed++;
    } catch (error) {
      result.failures.push(`${kind}[${i}] ${JSON.stringify(vector).slice(0, 200)}: ${(error as Error).message}`);
    }
  }
  return result;
}

/** Every `*.json` vector file in `dir`, run. */
export async function runAll(dir = conformanceDir()): Promise<FileResult[]> {
  const names = readdirSync(dir).filter((name) => name.endsWith(".json")).sort();
  const results: FileResult[] = [];
  for (const name of names) results.push(await runFile(join(dir, name)));
  return results;
}
