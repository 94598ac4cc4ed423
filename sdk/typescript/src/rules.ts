/**
 * The scope and jurisdiction rule engine (a port of agent_passport/rules.py: same grammar,
 * same decisions, same reasons).
 *
 *     entry    := ["!"] domain ":" action [":" resource]
 *     domain   := name | "*"        action := name | "*"     name := [a-z0-9][a-z0-9_.-]*
 *     resource := any non-blank text; "*" within one path segment, "**" across segments
 *
 * Deny entries always win over allows; anything no entry allows is denied. An action's region
 * must lie inside one of the passport's regions; an action with no region is allowed only by
 * a GLOBAL passport. Resources are matched by `Glob` in linear time (never a RegExp).
 */
import { RegionError, RuleError } from "./errors.js";
import { Glob } from "./globs.js";
import { codePointLength, codePointPrefix, pyRepr } from "./pytext.js";
import { GLOBAL, normalizeRegion, regionWithin } from "./regions.js";

export const MAX_RULES = 256;
export const MAX_RULE_LENGTH = 512;
export const MAX_RESOURCE_LENGTH = 1000;
export const MAX_REGIONS = 64;

const NAME = /^(?:\*|[a-z0-9][a-z0-9_.-]*)$/;
const ACTION_NAME = /^[a-z0-9][a-z0-9_.-]*$/;
// Python's \s (Unicode whitespace) plus the C0 controls and DEL.
const FORBIDDEN_CHARS = /[\x00-\x20\x7f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]/;
const DECISION_CACHE_SIZE = 8192;

export class Decision {
  constructor(
    readonly allowed: boolean,
    readonly reason: string,
    readonly rule: string | null = null,
  ) {}
}

const MALFORMED = new Decision(false, "malformed check: action, resource and jurisdiction are text");

export interface Rule {
  readonly text: string;
  readonly deny: boolean;
  readonly domain: string;
  readonly action: string;
  readonly resource: Glob | null;
}

/** Python's `text.split(":", maxsplit)`. */
function splitColon(text: string, maxsplit: number): string[] {
  const parts: string[] = [];
  let start = 0;
  while (parts.length < maxsplit) {
    const colon = text.indexOf(":", start);
    if (colon < 0) break;
    parts.push(text.slice(start, colon));
    start = colon + 1;
  }
  parts.push(text.slice(start));
  return parts;
}

/** Parse one scope entry; a RuleError names the entry if it is malformed. */
export function parseRule(text: unknown): Rule {
  if (typeof text !== "string") throw new RuleError(String(text), "a scope rule must be a string");
  if (!text) throw new RuleError(text, "empty rule");
  if (codePointLength(text, MAX_RULE_LENGTH) > MAX_RULE_LENGTH)
    throw new RuleError(codePointPrefix(text, 40) + "...", `longer than ${MAX_RULE_LENGTH} characters`);
  if (FORBIDDEN_CHARS.test(text)) throw new RuleError(text, "whitespace and control characters are not allowed");
  const deny = text.startsWith("!");
  const parts = splitColon(deny ? text.slice(1) : text, 2);
  if (parts.length < 2) throw new RuleError(text, "expected domain:action[:resource], e.g. tool:shell:exec");
  const [domain, action] = parts as [string, string];
  for (const [label, value] of [
    ["domain", domain],
    ["action", action],
  ] as const) {
    if (!NAME.test(value))
      throw new RuleError(
        text,
        `${label} ${pyRepr(value)} must be '*' or lower-case letters, digits, '_', '.', '-' ` +
          "(wildcards inside a name are not supported)",
      );
  }
  let resource: Glob | null = null;
  if (parts.length === 3) {
    if (parts[2] === "") throw new RuleError(text, "empty resource after ':' (omit it to cover every resource)");
    resource = new Glob(parts[2] as string);
  }
  return { text, deny, domain, action, resource };
}

export function parseScope(entries: unknown): Rule[] {
  if (!Array.isArray(entries)) throw new RuleError(String(entries), "scope must be a list of rule strings");
  const rules = entries.map(parseRule);
  if (rules.length > MAX_RULES) throw new RuleError(`${rules.length} rules`, `at most ${MAX_RULES} scope rules are allowed`);
  return rules;
}

export function parseJurisdiction(regions: unknown): string[] {
  if (!Array.isArray(regions)) throw new RegionError(String(regions), "jurisdiction must be a list of region codes");
  const normalized = [...new Set(regions.map(normalizeRegion))];
  if (normalized.length === 0) throw new RegionError("[]", "at least one region is required (use GLOBAL for anywhere)");
  if (normalized.length > MAX_REGIONS) throw new RegionError(`${normalized.length} regions`, `at most ${MAX_REGIONS} regions`);
  return normalized;
}

/** Split `domain:action[:resource]` (resource may be passed separately); throws for a malformed action. */
export function splitAction(action: string, resource?: string | null): [string, string, string] {
  const parts = splitColon(action, 2);
  if (parts.length < 2 || !ACTION_NAME.test(parts[0] as string) || !ACTION_NAME.test(parts[1] as string))
    throw new Error(`malformed action ${pyRepr(action)}: expected domain:action[:resource] with lower-case names`);
  if (parts.length === 3) {
    if (resource !== undefined && resource !== null)
      throw new Error(`malformed action ${pyRepr(action)}: resource given twice`);
    resource = parts[2];
  }
  return [parts[0] as string, parts[1] as string, resource || ""];
}

/**
 * Rules of one kind (allow or deny) for one `domain:action` key, in scope order, indexed so the
 * usual shapes cost no loop: a rule without resource, exact resources, `prefix**` rules.
 */
class RuleIndex {
  private readonly coversAll: number;
  private readonly exact = new Map<string, number>();
  private readonly prefixed: Array<[number, string]> = [];
  private readonly others: Array<[number, Glob]> = [];

  constructor(private readonly rules: readonly Rule[]) {
    const all = rules.findIndex((rule) => rule.resource === null);
    this.coversAll = all < 0 ? rules.length : all;
    rules.forEach((rule, i) => {
      const glob = rule.resource;
      if (glob === null) return;
      if (glob.literal !== null) {
        if (!this.exact.has(glob.literal)) this.exact.set(glob.literal, i);
      } else if (glob.prefix !== null) this.prefixed.push([i, glob.prefix]);
      else this.others.push([i, glob]);
    });
  }

  /** The first rule (in scope order) that matches `resource`. */
  firstMatch(resource: string): Rule | null {
    let best = Math.min(this.coversAll, this.exact.get(resource) ?? this.rules.length);
    for (const [i, prefix] of this.prefixed) {
      if (i >= best) break;
      if (resource.startsWith(prefix)) {
        best = i;
        break;
      }
    }
    for (const [i, glob] of this.others) {
      if (i >= best) break;
      if (glob.matches(resource)) {
        best = i;
        break;
      }
    }
    return this.rules[best] ?? null;
  }
}

type Index = Map<string, RuleIndex>;

function buildIndex(rules: readonly Rule[]): Index {
  const byKey = new Map<string, Rule[]>();
  for (const rule of rules) {
    const key = `${rule.domain}:${rule.action}`; // names hold no ':'
    const group = byKey.get(key);
    if (group) group.push(rule);
    else byKey.set(key, [rule]);
  }
  return new Map([...byKey].map(([key, group]) => [key, new RuleIndex(group)]));
}

function firstMatch(index: Index, domain: string, verb: string, resource: string): Rule | null {
  for (const key of [`${domain}:${verb}`, `${domain}:*`, `*:${verb}`, "*:*"]) {
    const rule = index.get(key)?.firstMatch(resource) ?? null;
    if (rule !== null) return rule;
  }
  return null;
}

/** A parsed passport scope and jurisdiction. Immutable; caches decisions. */
export class Policy {
  readonly rules: readonly Rule[];
  readonly jurisdiction: readonly string[];
  private readonly denies: Index;
  private readonly allows: Index;
  private readonly cache = new Map<string, Decision>();

  constructor(scope: unknown, jurisdiction: unknown) {
    this.rules = parseScope(scope);
    this.jurisdiction = parseJurisdiction(jurisdiction);
    this.denies = buildIndex(this.rules.filter((rule) => rule.deny));
    this.allows = buildIndex(this.rules.filter((rule) => !rule.deny));
  }

  static fromClaims(claims: Record<string, unknown>): Policy {
    return new Policy(claims["scope"] || [], claims["jurisdiction"] || []);
  }

  /** Allow or deny + reason; never throws for bad input (a malformed action is denied). */
  decide(action: string, resource?: string | null, jurisdiction?: string | null): Decision {
    if (
      typeof action !== "string" ||
      (resource != null && typeof resource !== "string") ||
      (jurisdiction != null && typeof jurisdiction !== "string")
    )
      return MALFORMED;
    // Length-prefixed parts: no two different checks share a key.
    const key = `${action.length}:${action}${resource == null ? "|" : `${resource.length}:${resource}`}${jurisdiction == null ? "|" : `${jurisdiction.length}:${jurisdiction}`}`;
    const cached = this.cache.get(key);
    if (cached !== undefined) return cached;
    const decision = this.decideUncached(action, resource ?? null, jurisdiction ?? null);
    if (this.cache.size >= DECISION_CACHE_SIZE) this.cache.clear();
    this.cache.set(key, decision);
    return decision;
  }

  private decideUncached(action: string, resourceArg: string | null, jurisdiction: string | null): Decision {
    let domain: string, verb: string, resource: string;
    try {
      [domain, verb, resource] = splitAction(action, resourceArg);
    } catch (error) {
      return new Decision(false, (error as Error).message);
    }
    if (codePointLength(resource, MAX_RESOURCE_LENGTH) > MAX_RESOURCE_LENGTH)
      return new Decision(false, `the resource is longer than ${MAX_RESOURCE_LENGTH} characters`);
    const described = `${domain}:${verb}` + (resource ? `:${resource}` : "");
    const deniedBy = firstMatch(this.denies, domain, verb, resource);
    if (deniedBy !== null)
      return new Decision(false, `${described} is denied by rule ${pyRepr(deniedBy.text)}`, deniedBy.text);
    const allowedBy = firstMatch(this.allows, domain, verb, resource);
    if (allowedBy === null) return new Decision(false, `${described} is not in the passport's scope`);
    return this.decideJurisdiction(described, jurisdiction, allowedBy);
  }

  private decideJurisdiction(described: string, jurisdiction: string | null, rule: Rule): Decision {
    const allowedIn = this.jurisdiction.join(", ");
    if (jurisdiction === null) {
      if (this.jurisdiction.includes(GLOBAL)) return new Decision(true, `allowed by rule ${pyRepr(rule.text)}`, rule.text);
      return new Decision(false, `${described} names no jurisdiction and the passport is limited to ${allowedIn}`);
    }
    let region: string;
    try {
      region = normalizeRegion(jurisdiction);
    } catch (error) {
      return new Decision(false, (error as Error).message);
    }
    if (this.jurisdiction.some((outer) => regionWithin(region, outer)))
      return new Decision(true, `allowed by rule ${pyRepr(rule.text)} in ${region}`, rule.text);
    return new Decision(false, `${described} in ${region} is outside the passport's jurisdiction (${allowedIn})`);
  }
}

/** Decide `(passport, action, resource, jurisdiction)`; `passport` is a Policy or claims. */
export function decide(
  passport: Policy | Record<string, unknown>,
  action: string,
  resource?: string | null,
  jurisdiction?: string | null,
): Decision {
  const policy = passport instanceof Policy ? passport : Policy.fromClaims(passport);
  return policy.decide(action, resource, jurisdiction);
}
