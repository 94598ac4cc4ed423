"""Names shared by the registry and every agent: protocol version, token type, revocation channel.

Defined once here; the server imports them so the publisher and the SDK watcher cannot drift.
"""

from dataclasses import dataclass

# The version of the wire protocol (README, "Protocol version"): the registry writes it in every
# passport (``rev.v``) and in the revocation snapshot (``_v``); an SDK refuses any version it does
# not know, since it cannot tell what such a passport or revocation state means.
PROTOCOL_VERSION = 1
SUPPORTED_PROTOCOL_VERSIONS = (1,)
TOKEN_TYPE = "agent-passport+jwt"  # noqa: S105 (a JWT "typ", not a secret)
ALGORITHM = "EdDSA"
MAX_TOKEN_BYTES = 16 * 1024
DEFAULT_REDIS_PREFIX = "aps"
_STREAM_SUFFIX = ":revocations:stream"


@dataclass(frozen=True)
class RevocationChannel:
    """Redis keys through which revocations reach agents (README, "Kill-switch protocol")."""

    prefix: str = DEFAULT_REDIS_PREFIX

    @property
    def epoch_key(self) -> str:
        return f"{self.prefix}:revocations:epoch"

    @property
    def stream_key(self) -> str:
        return self.prefix + _STREAM_SUFFIX

    @property
    def snapshot_key(self) -> str:
        return f"{self.prefix}:revocations:snapshot"

    @property
    def heartbeat_key(self) -> str:
        """The registry's stamp: proof, every second, that the side committing kills is alive."""
        return f"{self.prefix}:revocations:heartbeat"

    @property
    def versions_key(self) -> str:
        """Server-side bookkeeping: the last epoch applied per revocation id (idempotent pushes)."""
        return f"{self.prefix}:revocations:versions"

    @property
    def audit_head_key(self) -> str:
        """The newest signed tree head of the action log, published next to the revocations
        (a witness copy agents can read without asking the registry)."""
        return f"{self.prefix}:audit:head"

    @property
    def audit_heads_channel(self) -> str:
        """Pub/sub channel on which every newly signed tree head is published."""
        return f"{self.prefix}:audit:heads"

    @classmethod
    def from_claim(cls, claim: object) -> "RevocationChannel":
        """The channel named by a passport's ``rev`` claim (the default one if absent)."""
        stream = claim.get("stream", "") if isinstance(claim, dict) else ""
        if (
            isinstance(stream, str)
            and stream.endswith(_STREAM_SUFFIX)
            and len(stream) > len(_STREAM_SUFFIX)
        ):
            return cls(prefix=stream.removesuffix(_STREAM_SUFFIX))
        return cls()

    def as_claim(self) -> dict[str, str | int]:
        """The ``rev`` claim carried in every passport so an agent can find the channel."""
        return {
            "v": PROTOCOL_VERSION,
            "transport": "redis-stream",
            "epoch": self.epoch_key,
            "stream": self.stream_key,
            "snapshot": self.snapshot_key,
        }


def unsupported_protocol(version: object) -> str | None:
    """Why a protocol version (an integer) cannot be read, None if it can. A passport or snapshot
    without a version counts as version 1, the one in use before versions were written, so that
    what an older registry wrote keeps working during an upgrade (README, "Protocol version")."""
    if type(version) is int and version in SUPPORTED_PROTOCOL_VERSIONS:
        return None
    known = ", ".join(str(v) for v in SUPPORTED_PROTOCOL_VERSIONS)
    return f"protocol version {version!r} is not supported (this SDK knows {known}): upgrade it"


# Fields of the snapshot hash that are not revocation entries.
SNAPSHOT_EPOCH_FIELD = "_epoch"
SNAPSHOT_GENERATION_FIELD = "_generation"
SNAPSHOT_VERSION_FIELD = "_v"  # PROTOCOL_VERSION in decimal
SNAPSHOT_ENTRY_PREFIX = "r:"
STREAM_ENTRY_FIELD = "entry"
# Each stream entry also carries the epoch of the entry before it in the stream ("0" for the
# first): a follower whose last entry's epoch differs has missed entries (trimmed or lost).
STREAM_PREV_FIELD = "prev"
STREAM_MAXLEN = 100_000
# Fields of the heartbeat hash: the highest epoch committed in the registry's database, and the
# moment of the stamp in milliseconds on the Redis server's own clock (TIME).
HEARTBEAT_EPOCH_FIELD = "epoch"
HEARTBEAT_AT_FIELD = "at"
