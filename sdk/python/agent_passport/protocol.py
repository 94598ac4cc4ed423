"""Names shared by the registry and every agent: token type and the Redis revocation channel.

Defined once here; the server imports them so the publisher and the SDK watcher cannot drift.
"""

from dataclasses import dataclass

TOKEN_TYPE = "agent-passport+jwt"  # noqa: S105 (a JWT "typ", not a secret)
ALGORITHM = "EdDSA"
MAX_TOKEN_BYTES = 16 * 1024
DEFAULT_REDIS_PREFIX = "aps"


@dataclass(frozen=True)
class RevocationChannel:
    """Redis keys through which revocations reach agents (README, "Kill-switch protocol")."""

    prefix: str = DEFAULT_REDIS_PREFIX

    @property
    def epoch_key(self) -> str:
        return f"{self.prefix}:revocations:epoch"

    @property
    def stream_key(self) -> str:
        return f"{self.prefix}:revocations:stream"

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

    @classmethod
    def from_claim(cls, claim: object) -> "RevocationChannel":
        """The channel named by a passport's ``rev`` claim (the default one if absent)."""
        stream = claim.get("stream", "") if isinstance(claim, dict) else ""
        suffix = ":revocations:stream"
        if isinstance(stream, str) and stream.endswith(suffix) and len(stream) > len(suffix):
            return cls(prefix=stream[: -len(suffix)])
        return cls()

    def as_claim(self) -> dict[str, str]:
        """The ``rev`` claim carried in every passport so an agent can find the channel."""
        return {
            "transport": "redis-stream",
            "epoch": self.epoch_key,
            "stream": self.stream_key,
            "snapshot": self.snapshot_key,
        }


# Fields of the snapshot hash that are not revocation entries.
SNAPSHOT_EPOCH_FIELD = "_epoch"
SNAPSHOT_GENERATION_FIELD = "_generation"
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
