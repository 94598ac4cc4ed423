import assert from "node:assert/strict";
import { test } from "node:test";
import { conformanceDir, runAll } from "./conformance.js";

test("conformance: every vector of every file in conformance/ passes", async (context) => {
  const results = await runAll();
  const vectors = results.reduce((sum, result) => sum + result.vectors, 0);
  assert.ok(vectors > 0, `no conformance vectors in ${conformanceDir()}`);
  const passed = results.reduce((sum, result) => sum + result.passed, 0);
  for (const result of results) context.diagnostic(`${result.kind}: ${result.passed}/${result.vectors} passed`);
  context.diagnostic(`conformance: ${results.length} files, ${passed}/${vectors} vectors passed`);
  assert.deepEqual(results.flatMap((result) => result.failures).slice(0, 20), []);
  assert.equal(passed, vectors);
});
