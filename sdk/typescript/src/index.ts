/** Agent Passport SDK for Node: the same surface as the Python SDK in agent_passport/. */
export { canonical, checkpointPayload, eventHash, GENESIS, verifyChain, verifyCheckpoint } from "./audit.js";
export * from "./errors.js";
export { Glob } from "./globs.js";
export { type GuardOptions, Guard, type Heartbeat, type KillCallback, type Reporter } from "./guard.js";
export { JWKSClient } from "./jwks.js";
export { headId, headPayload, leafHash, promisePayload, treeRoot, verifyConsistency, verifyHead, verifyHeadChain, verifyInclusion, verifyPromise } from "./merkle.js";
export { PROTOCOL_VERSION, RevocationChannel, TOKEN_TYPE } from "./protocol.js";
export { GLOBAL, normalizeRegion, regionWithin } from "./regions.js";
export { ActionReporter, type ReporterOptions } from "./reporter.js";
export { type Follower, followPoll, loadSnapshot, RevocationEntry, RevocationState, revocationsDigest, SnapshotUnavailable } from "./revocations.js";
export { Decision, decide, MAX_RESOURCE_LENGTH, MAX_RULES, parseJurisdiction, parseRule, parseScope, Policy } from "./rules.js";
export { CLOCK_SKEW_LEEWAY, type Claims, type Keys, keysFromJwks, type KeyLookup, verifyToken } from "./tokens.js";
export { RevocationWatcher, type WatcherOptions, type WatcherState, type WatcherStatus } from "./watcher.js";
