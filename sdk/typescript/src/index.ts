/** Agent Passport SDK for Node: the same surface as the Python SDK in agent_passport/. */
export * from "./errors.js";
export { Glob } from "./globs.js";
export { type GuardOptions, Guard, type Heartbeat, type KillCallback, type Reporter } from "./guard.js";
export { JWKSClient } from "./jwks.js";
export { RevocationChannel, TOKEN_TYPE } from "./protocol.js";
export { GLOBAL, normalizeRegion, regionWithin } from "./regions.js";
export { ActionReporter, type ReporterOptions } from "./reporter.js";
export { RevocationEntry, RevocationState, revocationsDigest } from "./revocations.js";
export { Decision, decide, MAX_RESOURCE_LENGTH, MAX_RULES, parseJurisdiction, parseRule, parseScope, Policy } from "./rules.js";
export { CLOCK_SKEW_LEEWAY, type Claims, type Keys, keysFromJwks, type KeyLookup, verifyToken } from "./tokens.js";
export { RevocationWatcher, type WatcherOptions } from "./watcher.js";
