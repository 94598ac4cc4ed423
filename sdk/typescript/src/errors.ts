/** Errors raised by the SDK (mirroring agent_passport/errors.py). Messages are for people. */
import { pyRepr } from "./pytext.js";

/** A scope rule is malformed. `rule` names the offending entry. */
export class RuleError extends Error {
  readonly kind: string = "rule";
  constructor(
    readonly rule: string,
    readonly detail: string,
    kind = "rule",
  ) {
    super(`invalid ${kind} ${pyRepr(rule)}: ${detail}`);
    this.kind = kind;
    this.name = "RuleError";
  }
}

/** A jurisdiction (a list of regions) or one region code in it is malformed or unknown. */
export class RegionError extends RuleError {
  constructor(rule: string, detail: string) {
    super(rule, detail, "region");
    this.name = "RegionError";
  }
}

/** Why a passport token cannot be used; `reason` is a machine-readable code. */
export class PassportError extends Error {
  constructor(
    message: string,
    readonly reason: string = "invalid",
  ) {
    super(message);
    this.name = "PassportError";
  }
}

/** Malformed, badly signed, signed by an unknown key or meant for someone else. */
export class PassportInvalid extends PassportError {
  constructor(message: string, reason = "invalid") {
    super(message, reason);
    this.name = "PassportInvalid";
  }
}

export class PassportExpired extends PassportError {
  readonly guardError = true;
  constructor(message: string) {
    super(message, "expired");
    this.name = "PassportExpired";
  }
}

export class PassportNotYetValid extends PassportError {
  readonly guardError = true;
  constructor(message: string) {
    super(message, "not_yet_valid");
    this.name = "PassportNotYetValid";
  }
}

/** Base class of every reason the guard refuses an action (besides expiry and not-before). */
export class GuardError extends Error {
  readonly guardError = true;
  constructor(message: string) {
    super(message);
    this.name = "GuardError";
  }
}

/** The action is outside the passport's scope or jurisdiction. */
export class ScopeDenied extends GuardError {
  constructor(message: string) {
    super(message);
    this.name = "ScopeDenied";
  }
}

/** The passport, its agent, its fleet or every agent has been revoked (the kill switch). */
export class PassportRevoked extends GuardError {
  constructor(message: string) {
    super(message);
    this.name = "PassportRevoked";
  }
}

/** The guard cannot tell whether the passport is revoked, so it fails closed. */
export class RevocationStateStale extends GuardError {
  constructor(message: string) {
    super(message);
    this.name = "RevocationStateStale";
  }
}

/** True for every refusal of `Guard.check` (GuardError, PassportExpired, PassportNotYetValid). */
export function isRefusal(error: unknown): error is Error {
  return error instanceof Error && (error as { guardError?: boolean }).guardError === true;
}

/**
 * A refusal of `Guard.check`, made without capturing a stack trace: a refusal is the guard's
 * answer, not a bug to debug, and V8's stack capture made a denied check cost ~8 µs instead of
 * ~0.5 µs (bench/bench_sdk_check.py). `error.stack` is then just "Name: message".
 */
export function refusal<E extends Error>(Kind: new (message: string) => E, message: string): E {
  const limit = Error.stackTraceLimit;
  Error.stackTraceLimit = 0;
  try {
    return new Kind(message);
  } finally {
    Error.stackTraceLimit = limit;
  }
}
