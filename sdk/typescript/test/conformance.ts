/**
 * Runs the language-neutral conformance vectors (conformance/README.md at the repository top)
 * against this SDK. Every `*.json` file found is run; a file of a kind or format this runner does
 * not know fails all its vectors (so a new kind cannot be silently skipped).
 */
import { readdirSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { RegionError, RuleError } from "../src/errors.js";
import { COUNTRIES, GROUPINGS, normalizeRegion, regionWithin } from "../src/regions.js";
import { revocationsDigest } from "../src/revocations.js";
import { parseJurisdiction, parseRule, parseScope, Policy } from "../src/rules.js";

type Vector = Record<string, unknown>;
type Check = (vector: Vector, file: Record<string, unknown>) => void;

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
};

const FORMAT = 1;

export function runFile(path: string): FileResult {
  const file = JSON.parse(readFileSync(path, "utf8")) as Record<string, unknown>;
  const kind = String(file["kind"]);
  const vectors = Array.isArray(file["vectors"]) ? (file["vectors"] as Vector[]) : [];
  const result: FileResult = { file: path, kind, vectors: vectors.length, passed: 0, failures: [] };
  const check = CHECKS[kind];
  vectors.forEach((vector, i) => {
    try {
      if (file["format"] !== FORMAT) throw new Error(`format ${String(file["format"])} is not known to this runner`);
      if (!check) throw new Error(`kind ${kind} is not known to this runner`);
      check(vector, file);
      result.passed++;
    } catch (error) {
      result.failures.push(`${kind}[${i}] ${JSON.stringify(vector).slice(0, 200)}: ${(error as Error).message}`);
    }
  });
  return result;
}

/** Every `*.json` vector file in `dir`, run. */
export function runAll(dir = conformanceDir()): FileResult[] {
  let names: string[];
  try {
    names = readdirSync(dir).filter((name) => name.endsWith(".json")).sort();
  } catch {
    return [];
  }
  return names.map((name) => runFile(join(dir, name)));
}
