import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, test } from "node:test";
import { fileURLToPath } from "node:url";
import { ISSUER, makeSigner, passportClaims, sign, startRedis, TestPublisher, waitFor } from "./helpers.js";

const CLI = resolve(fileURLToPath(import.meta.url), "../../src/cli.js");
const signer = makeSigner();
const dir = mkdtempSync(join(tmpdir(), "aps-ts-cli-"));
after(() => rmSync(dir, { recursive: true, force: true }));
const jwksFile = join(dir, "jwks.json");
writeFileSync(jwksFile, JSON.stringify(signer.jwks));

function run(...args: string[]) {
  const result = spawnSync(process.execPath, [CLI, ...args], { encoding: "utf8" });
  return { code: result.status, out: result.stdout, err: result.stderr };
}

test("cli: verify prints the claims of a valid passport and refuses a bad one", async () => {
  const claims = passportClaims();
  const good = run("verify", await sign(signer, claims), "--jwks-file", jwksFile, "--issuer", ISSUER);
  assert.equal(good.code, 0, good.err);
  assert.equal(JSON.parse(good.out).jti, claims["jti"]);
  assert.match(good.err, /^valid: passport /);
  const expired = run("verify", await sign(signer, passportClaims({ exp: 1000 })), "--jwks-file", jwksFile, "--issuer", ISSUER);
  assert.equal(expired.code, 1);
  assert.match(expired.err, /invalid passport \(expired\)/);
});

test("cli: check answers allowed or denied with the reason; usage errors exit 2", async () => {
  const tokenFile = join(dir, "token");
  writeFileSync(tokenFile, await sign(signer, passportClaims()));
  const allowed = run("check", `@${tokenFile}`, "fs:read:/workspace/a", "--jurisdiction", "DE", "--jwks-file", jwksFile, "--issuer", ISSUER);
  assert.equal(allowed.code, 0, allowed.err);
  assert.equal(allowed.out, "allowed: allowed by rule 'fs:read:/workspace/**' in DE\n");
  const denied = run("check", `@${tokenFile}`, "tool:shell:rm", "--jurisdiction", "DE", "--jwks-file", jwksFile, "--issuer", ISSUER);
  assert.equal(denied.code, 1);
  assert.equal(denied.out, "denied: tool:shell:rm is denied by rule '!tool:shell:rm'\n");
  assert.equal(run("check", `@${tokenFile}`, "tool:shell", "--issuer", ISSUER).code, 2);
  assert.equal(run("check", `@${join(dir, "missing")}`, "tool:shell", "--jwks-file", jwksFile, "--issuer", ISSUER).code, 2);
  assert.equal(run("frobnicate").code, 2);
  assert.equal(run("watch").code, 2);
});

test("cli: watch prints the revocations and the watcher's status whenever it changes", async () => {
  const redis = await startRedis();
  await new TestPublisher(redis.client, "cliwatch").reset();
  const child = spawn(process.execPath, [CLI, "watch", "--prefix", "cliwatch", "--redis", redis.url, "--status-interval", "0.05"], { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  child.stdout.on("data", (chunk) => (out += chunk));
  const exited = new Promise<number | null>((resolve) => child.once("exit", resolve));
  try {
    await waitFor(() => /^status: valid \(confirmed current \d+\.\d s ago\)$/m.test(out), 10, `a valid status in ${JSON.stringify(out)}`);
    assert.match(out, /^epoch 0: 0 active revocation\(s\)$/m);
    await redis.stop();
    await waitFor(() => /^status: interrupted: Redis unreachable \(/m.test(out), 10, `an interrupted status in ${JSON.stringify(out)}`);
    const statuses = out.split("\n").filter((line) => line.startsWith("status: "));
    assert.ok(statuses.every((line, i) => i === 0 || line !== statuses[i - 1]), `a status repeated: ${statuses}`);
  } finally {
    child.kill("SIGTERM");
  }
  assert.equal(await exited, 0);
  assert.equal(run("watch", "--prefix", "p", "--status-interval", "0").code, 2);
});
