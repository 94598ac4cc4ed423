import assert from "node:assert/strict";
import { test } from "node:test";
import { PassportError } from "../src/errors.js";
import { keysFromJwks, verifyToken } from "../src/tokens.js";
import { ISSUER, makeSigner, passportClaims, sign } from "./helpers.js";

const signer = makeSigner();
const options = { issuer: ISSUER, audience: "agent-passport" };

async function reasonOf(token: string, keys = signer.keys, opts: Record<string, unknown> = {}): Promise<string> {
  try {
    await verifyToken(token, keys, { ...options, ...opts });
  } catch (error) {
    assert.ok(error instanceof PassportError, String(error));
    return error.reason;
  }
  return "valid";
}

test("tokens: a passport signed by a known key verifies and its claims are returned", async () => {
  const claims = passportClaims();
  const verified = await verifyToken(await sign(signer, claims), keysFromJwks(signer.jwks), options);
  assert.equal(verified.jti, claims["jti"]);
});

test("tokens: every broken passport is refused with its reason", async () => {
  const now = Math.floor(Date.now() / 1000);
  const good = await sign(signer, passportClaims());
  const [head, body, sig] = good.split(".") as [string, string, string];
  const other = makeSigner("other-key");
  const cases: Array<[string, Promise<string> | string, string]> = [
    ["expired", sign(signer, passportClaims({ exp: now - 1 })), "expired"],
    ["not yet valid", sign(signer, passportClaims({ nbf: now + 400, iat: now + 400 })), "not_yet_valid"],
    ["within leeway", sign(signer, passportClaims({ nbf: now + 200, iat: now + 200 })), "valid"],
    ["wrong typ", sign(signer, passportClaims(), { typ: "JWT" }), "wrong_type"],
    ["crit", sign(signer, passportClaims(), { crit: ["exp"] }), "unsupported_crit"],
    ["jwk header", sign(signer, passportClaims(), { jwk: { kty: "OKP" } }), "malformed"],
    ["unknown kid", sign(other, passportClaims()), "unknown_key"],
    ["wrong issuer", sign(signer, passportClaims({ iss: "https://evil" })), "wrong_issuer"],
    ["wrong audience", sign(signer, passportClaims({ aud: "other" })), "wrong_audience"],
    ["missing jti", sign(signer, passportClaims({ jti: undefined })), "missing_claim"],
    ["bad scope", sign(signer, passportClaims({ scope: ["Tool:x"] })), "malformed"],
    ["bad rev", sign(signer, passportClaims({ rev: { v: 1, stream: 5 } })), "malformed"],
    ["protocol 1", sign(signer, passportClaims({ rev: { v: 1, stream: "aps:revocations:stream" } })), "valid"],
    ["unknown protocol", sign(signer, passportClaims({ rev: { v: 2 } })), "unsupported_protocol"],
    ["protocol as text", sign(signer, passportClaims({ rev: { v: "1" } })), "unsupported_protocol"],
    ["fleet not text", sign(signer, passportClaims({ fleet: 3 })), "malformed"],
    ["tampered", `${head}.${Buffer.from(JSON.stringify(passportClaims())).toString("base64url")}.${sig}`, "bad_signature"],
    ["alg none", `${Buffer.from(JSON.stringify({ alg: "none", typ: "agent-passport+jwt", kid: "test-key" })).toString("base64url")}.${body}.`, "unsupported_algorithm"],
    ["HS256", `${Buffer.from(JSON.stringify({ alg: "HS256", typ: "agent-passport+jwt", kid: "test-key" })).toString("base64url")}.${body}.${sig}`, "unsupported_algorithm"],
    ["two parts", `${head}.${body}`, "malformed"],
    ["garbage header", `%%%.${body}.${sig}`, "malformed"],
    ["too large", `${head}.${"A".repeat(17000)}.${sig}`, "too_large"],
  ];
  for (const [name, token, expected] of cases) assert.equal(await reasonOf(await token), expected, name);
});

test("tokens: a fixed clock decides expiry; leeway applies to exp only when asked", async () => {
  const token = await sign(signer, passportClaims({ iat: 1000, nbf: 1000, exp: 2000 }));
  assert.equal(await reasonOf(token, signer.keys, { now: 1500 }), "valid");
  assert.equal(await reasonOf(token, signer.keys, { now: 2000 }), "expired");
  assert.equal(await reasonOf(token, signer.keys, { now: 2000, leeway: 10 }), "valid");
  assert.equal(await reasonOf(token, signer.keys, { now: 600 }), "not_yet_valid");
});

test("tokens: JWKS keys that are private, unnamed or not Ed25519 are skipped", () => {
  const jwk = signer.jwks.keys[0] as Record<string, string>;
  const keys = keysFromJwks({ keys: [{ ...jwk, kid: "priv", d: "x" }, { ...jwk, kid: undefined }, { kty: "RSA", kid: "rsa" }, jwk, "junk"] });
  assert.deepEqual([...keys.keys()], ["test-key"]);
});
