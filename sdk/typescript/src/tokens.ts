/**
 * Offline verification of passport tokens (JWS compact, EdDSA over Ed25519; RFC 7515/7519),
 * with the policy of agent_passport/tokens.py: only EdDSA, our `typ`, a known `kid`, no `crit`
 * (we implement no extension, RFC 7515 §4.1.11), no key-carrying headers, required claims of the
 * right types, a 16 KiB cap. The signature check is `jose`'s. Every way a token can be
 * malformed ends as PassportInvalid (or PassportExpired / PassportNotYetValid). A passport in a
 * protocol version this SDK does not know (`rev.v`) is refused (`unsupported_protocol`).
 */
import { createPublicKey, type KeyObject } from "node:crypto";
import { compactVerify, errors as joseErrors } from "jose";
import { PassportExpired, PassportInvalid, PassportNotYetValid, RuleError } from "./errors.js";
import { ALGORITHM, MAX_TOKEN_BYTES, TOKEN_TYPE, unsupportedProtocol } from "./protocol.js";
import { pyRepr } from "./pytext.js";
import { parseJurisdiction, parseScope } from "./rules.js";

export const REQUIRED_CLAIMS = ["iss", "sub", "aud", "jti", "iat", "nbf", "exp", "scope", "jurisdiction"] as const;
const TIME_CLAIMS = ["iat", "nbf", "exp"] as const;
const OPTIONAL_TEXT_CLAIMS = ["fleet", "agent_name"] as const;
const KEY_CARRYING_HEADERS = ["jku", "jwk", "x5u", "x5c"] as const;
const MAX_NUMERIC_DATE = 253402300799;

/**
 * How far an agent's clock may lag the registry's: a passport is usable this many seconds
 * before its nbf/iat, never after its exp.
 */
export const CLOCK_SKEW_LEEWAY = 300;

export type Claims = Record<string, unknown> & {
  iss: string;
  sub: string;
  jti: string;
  iat: number;
  nbf: number;
  exp: number;
  scope: string[];
  jurisdiction: string[];
  fleet?: string;
  rev?: Record<string, string>;
};

export type PublicKey = KeyObject;
export type KeyLookup = (kid: string) => PublicKey | undefined | Promise<PublicKey | undefined>;
export type Keys = KeyLookup | ReadonlyMap<string, PublicKey>;

export interface VerifyOptions {
  issuer: string;
  audience: string;
  /** Seconds an expired passport is still accepted (0: a guard never runs on one). */
  leeway?: number;
  /** The current time in seconds (default: the system clock). */
  now?: number;
}

/** `{kid: public key}` from a JWKS document, skipping keys that are not public Ed25519 keys. */
export function keysFromJwks(jwks: unknown): Map<string, PublicKey> {
  const keys = new Map<string, PublicKey>();
  const list = jwks !== null && typeof jwks === "object" ? (jwks as { keys?: unknown }).keys : undefined;
  for (const jwk of Array.isArray(list) ? list : []) {
    if (jwk === null || typeof jwk !== "object") continue;
    const { kty, crv, kid, x, d } = jwk as Record<string, unknown>;
    if (kty !== "OKP" || crv !== "Ed25519" || d !== undefined || typeof kid !== "string" || typeof x !== "string")
      continue; // never accept private material or unnamed keys as verification keys
    try {
      keys.set(kid, createPublicKey({ key: { kty, crv, x }, format: "jwk" }));
    } catch {
      continue;
    }
  }
  return keys;
}

function decodeSegment(segment: string, what: string): Record<string, unknown> {
  let value: unknown;
  try {
    if (!/^[A-Za-z0-9_-]*$/.test(segment)) throw new Error("not base64url");
    value = JSON.parse(Buffer.from(segment, "base64url").toString("utf8"));
  } catch {
    throw new PassportInvalid(`the token ${what} is not base64url JSON`, "malformed");
  }
  if (value === null || typeof value !== "object" || Array.isArray(value))
    throw new PassportInvalid(`the token ${what} is not a JSON object`, "malformed");
  return value as Record<string, unknown>;
}

const show = (value: unknown): string => (typeof value === "string" ? pyRepr(value) : value === undefined ? "None" : JSON.stringify(value));

/** The unverified header after the cheap structural checks. */
export function readHeader(token: unknown): Record<string, unknown> & { kid: string } {
  if (typeof token !== "string" || !token) throw new PassportInvalid("the token is empty or not a string", "malformed");
  if (token.length > MAX_TOKEN_BYTES) throw new PassportInvalid(`the token is larger than ${MAX_TOKEN_BYTES} bytes`, "too_large");
  if (token.split(".").length !== 3) throw new PassportInvalid("the token is not a JWS compact serialization", "malformed");
  const header = decodeSegment(token.slice(0, token.indexOf(".")), "header");
  if ("crit" in header)
    throw new PassportInvalid("the token requires header extensions ('crit'); none are supported", "unsupported_crit");
  if (header["alg"] !== ALGORITHM)
    throw new PassportInvalid(`algorithm ${show(header["alg"])} is not accepted; passports are signed with EdDSA`, "unsupported_algorithm");
  if (header["typ"] !== TOKEN_TYPE) throw new PassportInvalid(`token type ${show(header["typ"])} is not ${pyRepr(TOKEN_TYPE)}`, "wrong_type");
  if (typeof header["kid"] !== "string" || !header["kid"])
    throw new PassportInvalid("the token header names no signing key (kid)", "unknown_key");
  const carried = KEY_CARRYING_HEADERS.filter((name) => name in header);
  if (carried.length)
    throw new PassportInvalid(`the token header carries key material (${carried.join(", ")}); keys are chosen by kid only`, "malformed");
  return header as Record<string, unknown> & { kid: string };
}

/** Refuse a passport written in a protocol version this SDK does not know (fail closed). */
function checkProtocol(claims: Record<string, unknown>): void {
  const rev = claims["rev"];
  if (rev === null || typeof rev !== "object" || Array.isArray(rev) || !("v" in rev)) return; // version 1
  const problem = unsupportedProtocol((rev as Record<string, unknown>)["v"]);
  if (problem) throw new PassportInvalid(`the passport's ${problem}`, "unsupported_protocol");
}

function checkRegisteredClaims(claims: Record<string, unknown>, issuer: string, audience: string): void {
  for (const name of REQUIRED_CLAIMS)
    if (claims[name] === undefined || claims[name] === null)
      throw new PassportInvalid(`the passport lacks the ${pyRepr(name)} claim`, "missing_claim");
  if (claims["iss"] !== issuer) throw new PassportInvalid(`the passport was not issued by ${pyRepr(issuer)}`, "wrong_issuer");
  const aud = claims["aud"];
  if (aud !== audience && !(Array.isArray(aud) && aud.includes(audience)))
    throw new PassportInvalid(`the passport is not meant for audience ${pyRepr(audience)}`, "wrong_audience");
}

/** `nbf`/`iat` may be up to CLOCK_SKEW_LEEWAY (or `leeway`) ahead of `now`; `exp` must be later than `now - leeway`. */
function checkTimes(claims: Record<string, unknown>, now: number, leeway: number): void {
  for (const name of TIME_CLAIMS) {
    const value = claims[name];
    if (typeof value !== "number" || !(value >= 0 && value <= MAX_NUMERIC_DATE))
      throw new PassportInvalid(`the ${pyRepr(name)} claim is not a time in seconds`, "malformed");
  }
  const early = Math.max(leeway, CLOCK_SKEW_LEEWAY);
  if ((claims["iat"] as number) > now + early || (claims["nbf"] as number) > now + early)
    throw new PassportNotYetValid(
      `the passport is not valid yet (nbf/iat more than ${CLOCK_SKEW_LEEWAY} s ahead of this machine's clock: check this machine's clock)`,
    );
  if ((claims["exp"] as number) <= now - leeway) throw new PassportExpired("the passport has expired");
}

/** What the guard and the registry read from the claims must have the type they expect. */
function checkClaimTypes(claims: Record<string, unknown>): void {
  for (const name of ["sub", "jti"])
    if (typeof claims[name] !== "string") throw new PassportInvalid(`the ${pyRepr(name)} claim is not a string`, "malformed");
  for (const name of OPTIONAL_TEXT_CLAIMS)
    if (name in claims && typeof claims[name] !== "string")
      throw new PassportInvalid(`the ${pyRepr(name)} claim is not a string`, "malformed");
  const rev = claims["rev"] ?? {};
  if (rev === null || typeof rev !== "object" || Array.isArray(rev) || Object.entries(rev).some(([name, value]) => name !== "v" && typeof value !== "string"))
    throw new PassportInvalid("the 'rev' claim is not an object of strings", "malformed");
  for (const name of ["scope", "jurisdiction"]) {
    const value = claims[name];
    if (!Array.isArray(value) || value.some((item) => typeof item !== "string"))
      throw new PassportInvalid(`the ${pyRepr(name)} claim is not a list of strings`, "malformed");
  }
  try {
    parseScope(claims["scope"]);
    parseJurisdiction(claims["jurisdiction"]);
  } catch (error) {
    if (error instanceof RuleError) throw new PassportInvalid(`the passport's rules are malformed (${error.message})`, "malformed");
    throw error;
  }
}

/**
 * Verify `token` and return its claims, or throw a PassportError subclass. Checked in this
 * order (conformance/README.md, tokens.json): the header, the key, the signature, the protocol
 * version, the required claims, issuer, audience, the times against `now`, the other types.
 */
export async function verifyToken(token: string, keys: Keys, options: VerifyOptions): Promise<Claims> {
  const header = readHeader(token);
  const key = keys instanceof Map ? keys.get(header.kid) : await (keys as KeyLookup)(header.kid);
  if (key === undefined) throw new PassportInvalid(`signing key ${pyRepr(header.kid)} is not known`, "unknown_key");
  let payload: Uint8Array;
  try {
    ({ payload } = await compactVerify(token, key, { algorithms: [ALGORITHM] }));
  } catch (error) {
    if (error instanceof joseErrors.JWSSignatureVerificationFailed)
      throw new PassportInvalid("the signature does not match the token", "bad_signature");
    throw new PassportInvalid(`the token is malformed (${(error as Error).message})`, "malformed");
  }
  let claims: unknown;
  try {
    claims = JSON.parse(Buffer.from(payload).toString("utf8"));
  } catch {
    claims = undefined;
  }
  if (claims === null || typeof claims !== "object" || Array.isArray(claims))
    throw new PassportInvalid("the token is malformed (the payload is not a JSON object)", "malformed");
  const record = claims as Record<string, unknown>;
  checkProtocol(record);
  checkRegisteredClaims(record, options.issuer, options.audience);
  checkTimes(record, options.now ?? Date.now() / 1000, options.leeway ?? 0);
  checkClaimTypes(record);
  return record as Claims;
}
