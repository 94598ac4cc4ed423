/**
 * Names shared by the registry and every agent (agent_passport/protocol.py): the token type and
 * the Redis revocation channel (README, "Kill-switch protocol").
 */
/**
 * The wire protocol's version: in every passport (`rev.v`) and the revocation snapshot (`_v`).
 * An SDK refuses a version it does not know; none written means version 1.
 */
export const PROTOCOL_VERSION = 1;
export const SUPPORTED_PROTOCOL_VERSIONS: readonly number[] = [1];

/** Why a protocol version (an integer) cannot be read, null if it can. */
export function unsupportedProtocol(version: unknown): string | null {
  if (typeof version === "number" && Number.isInteger(version) && SUPPORTED_PROTOCOL_VERSIONS.includes(version)) return null;
  const shown = typeof version === "string" ? `'${version}'` : JSON.stringify(version) ?? String(version);
  return `protocol version ${shown} is not supported (this SDK knows ${SUPPORTED_PROTOCOL_VERSIONS.join(", ")}): upgrade it`;
}

export const TOKEN_TYPE = "agent-passport+jwt";
export const ALGORITHM = "EdDSA";
export const MAX_TOKEN_BYTES = 16 * 1024;
export const DEFAULT_REDIS_PREFIX = "aps";

export const SNAPSHOT_EPOCH_FIELD = "_epoch";
export const SNAPSHOT_GENERATION_FIELD = "_generation";
export const SNAPSHOT_VERSION_FIELD = "_v";
export const SNAPSHOT_ENTRY_PREFIX = "r:";
export const STREAM_ENTRY_FIELD = "entry";
/** Each stream entry carries the epoch of the entry before it ("0" for the first). */
export const STREAM_PREV_FIELD = "prev";
export const HEARTBEAT_EPOCH_FIELD = "epoch";
export const HEARTBEAT_AT_FIELD = "at";

const STREAM_SUFFIX = ":revocations:stream";

/** Redis keys through which revocations reach agents. */
export class RevocationChannel {
  constructor(readonly prefix: string = DEFAULT_REDIS_PREFIX) {}

  get epochKey(): string {
    return `${this.prefix}:revocations:epoch`;
  }
  get streamKey(): string {
    return `${this.prefix}${STREAM_SUFFIX}`;
  }
  get snapshotKey(): string {
    return `${this.prefix}:revocations:snapshot`;
  }
  /** The registry's stamp: proof, every second, that the side committing kills is alive. */
  get heartbeatKey(): string {
    return `${this.prefix}:revocations:heartbeat`;
  }

  /** The channel named by a passport's `rev` claim (the default one if absent). */
  static fromClaim(claim: unknown): RevocationChannel {
    const stream =
      claim !== null && typeof claim === "object" && !Array.isArray(claim)
        ? (claim as Record<string, unknown>)["stream"]
        : "";
    if (typeof stream === "string" && stream.endsWith(STREAM_SUFFIX) && stream.length > STREAM_SUFFIX.length)
      return new RevocationChannel(stream.slice(0, -STREAM_SUFFIX.length));
    return new RevocationChannel();
  }
}
