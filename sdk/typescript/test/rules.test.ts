import assert from "node:assert/strict";
import { test } from "node:test";
import { RegionError, RuleError } from "../src/errors.js";
import { Glob } from "../src/globs.js";
import { normalizeRegion, regionWithin } from "../src/regions.js";
import { decide, parseRule, Policy } from "../src/rules.js";

test("globs: * stays within a segment, ** crosses segments", () => {
  const cases: Array<[string, string, boolean]> = [
    ["/workspace/*", "/workspace/a", true],
    ["/workspace/*", "/workspace/a/b", false],
    ["/workspace/**", "/workspace/a/b", true],
    ["/workspace/**", "/workspace/", true],
    ["/workspace/**", "/workspac", false],
    ["a*b*c", "axxbyyc", true],
    ["a*b*c", "ax/bc", false],
    ["**/x/**/y", "a/b/x/c/d/y", true],
    ["**/x/**/y", "a/b/x/c/d/z", false],
    ["*.txt", "notes.txt", true],
    ["*.txt", "dir/notes.txt", false],
    ["**.txt", "dir/notes.txt", true],
    ["a***b", "a/x/b", true],
    ["", "", true],
    ["literal", "literal", true],
    ["literal", "literally", false],
  ];
  for (const [pattern, resource, expected] of cases)
    assert.equal(new Glob(pattern).matches(resource), expected, `${pattern} vs ${resource}`);
});

test("globs: a hostile pattern is matched in linear time", () => {
  const glob = new Glob("*a*a*a*a*a*a*a*a*a*a*b");
  const started = performance.now();
  assert.equal(glob.matches("a".repeat(100_000)), false);
  assert.ok(performance.now() - started < 2000);
});

test("rules: malformed entries are refused with the entry named", () => {
  for (const [text, message] of [
    ["", "empty rule"],
    ["tool", "expected domain:action[:resource]"],
    ["Tool:shell", "domain 'Tool' must be"],
    ["tool:sh*", "action 'sh*' must be"],
    ["tool:shell:", "empty resource"],
    ["tool:shell:a b", "whitespace and control characters"],
    ["x".repeat(513), "longer than 512 characters"],
  ] as const) {
    assert.throws(() => parseRule(text), (error: unknown) => error instanceof RuleError && error.message.includes(message), text);
  }
  assert.throws(() => new Policy(Array(257).fill("tool:shell"), ["GLOBAL"]), /at most 256 scope rules/);
});

test("rules: deny wins, first rule in scope order decides, reasons as in Python", () => {
  const policy = new Policy(["fs:read:/workspace/**", "tool:shell", "!tool:shell:rm", "*:use"], ["EU", "US-CA"]);
  assert.deepEqual({ ...policy.decide("fs:read", "/workspace/a/b", "DE") }, { allowed: true, reason: "allowed by rule 'fs:read:/workspace/**' in DE", rule: "fs:read:/workspace/**" });
  assert.equal(policy.decide("tool:shell:rm", null, "DE").reason, "tool:shell:rm is denied by rule '!tool:shell:rm'");
  assert.equal(policy.decide("fs:write", "/workspace/a", "DE").reason, "fs:write:/workspace/a is not in the passport's scope");
  assert.equal(policy.decide("gpu:use", null, "US").reason, "gpu:use in US is outside the passport's jurisdiction (EU, US-CA)");
  assert.equal(policy.decide("gpu:use", null, "US-CA").allowed, true);
  assert.equal(policy.decide("gpu:use").reason, "gpu:use names no jurisdiction and the passport is limited to EU, US-CA");
  assert.equal(policy.decide("GPU:use", null, "DE").reason, "malformed action 'GPU:use': expected domain:action[:resource] with lower-case names");
  assert.equal(policy.decide("fs:read:/a", "/b", "DE").reason, "malformed action 'fs:read:/a': resource given twice");
  assert.equal(policy.decide("fs:read", "/workspace/" + "x".repeat(1000), "DE").reason, "the resource is longer than 1000 characters");
  assert.equal(policy.decide("gpu:use", null, "XX").reason.startsWith("invalid region 'XX': not a region"), true);
  assert.equal(policy.decide(42 as unknown as string).reason, "malformed check: action, resource and jurisdiction are text");
  assert.equal(decide({ scope: ["*:*"], jurisdiction: ["GLOBAL"] }, "net:connect", "example.org").allowed, true);
});

test("rules: resources count code points like Python", () => {
  const policy = new Policy(["fs:read"], ["GLOBAL"]);
  assert.equal(policy.decide("fs:read", "😀".repeat(1000)).allowed, true);
  assert.equal(policy.decide("fs:read", "😀".repeat(1001)).allowed, false);
});

test("regions: normalization and containment", () => {
  assert.equal(normalizeRegion(" de "), "DE");
  assert.equal(normalizeRegion("us-ca"), "US-CA");
  assert.throws(() => normalizeRegion("ß"), RegionError);
  assert.throws(() => normalizeRegion("XX-1"), /unknown country 'XX'/);
  assert.equal(regionWithin("DE", "EU"), true);
  assert.equal(regionWithin("EU", "EEA"), true);
  assert.equal(regionWithin("EEA", "EU"), false);
  assert.equal(regionWithin("US-CA", "US"), true);
  assert.equal(regionWithin("US", "US-CA"), false);
  assert.equal(regionWithin("CH", "GLOBAL"), true);
});

/** The obvious quadratic matcher (dynamic programming), as the reference for small inputs. */
function referenceMatch(pattern: string, text: string): boolean {
  const tokens: string[] = [];
  for (let i = 0; i < pattern.length; i++) {
    if (pattern[i] === "*" && pattern[i + 1] === "*") {
      tokens.push("**");
      i++;
      while (pattern[i + 1] === "*") i++; // "***" is "**" followed by "*", which adds nothing
    } else tokens.push(pattern[i] as string);
  }
  let reach = new Set([0]);
  for (const token of tokens) {
    const next = new Set<number>();
    for (const at of reach) {
      if (token === "**") for (let end = at; end <= text.length; end++) next.add(end);
      else if (token === "*") for (let end = at; end <= text.length && (end === at || text[end - 1] !== "/"); end++) next.add(end);
      else if (text[at] === token) next.add(at + 1);
    }
    reach = next;
  }
  return reach.has(text.length);
}

test("globs: agree with the reference matcher on random patterns", () => {
  let seed = 42;
  const random = (n: number) => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed % n;
  };
  const draw = (alphabet: string, max: number) => Array.from({ length: random(max + 1) }, () => alphabet[random(alphabet.length)]).join("");
  for (let i = 0; i < 20_000; i++) {
    const pattern = draw("ab/*", 8);
    const text = draw("ab/", 10);
    assert.equal(new Glob(pattern).matches(text), referenceMatch(pattern, text), `${pattern} vs ${text}`);
  }
});
