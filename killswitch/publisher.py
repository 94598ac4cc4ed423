"""Pushes revocations to agents through Redis (key layout: README, "Kill-switch protocol").

* ``<prefix>:revocations:epoch`` — the highest epoch published (a string integer).
* ``<prefix>:revocations:stream`` — a stream; each entry has one field ``entry`` (JSON).
* ``<prefix>:revocations:snapshot`` — a hash: ``_epoch``, ``_generation`` and one field
  ``r:<id>`` per active revocation. Its absence means "state unknown": agents fail closed.
* ``<prefix>:revocations:versions`` — server bookkeeping: last epoch applied per revocation id,
  which makes every push idempotent.
"""

import logging
import threading
import uuid

import redis
from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.db.models.functions import Coalesce

from agent_passport.protocol import (
    SNAPSHOT_ENTRY_PREFIX,
    SNAPSHOT_EPOCH_FIELD,
    SNAPSHOT_GENERATION_FIELD,
    STREAM_ENTRY_FIELD,
    STREAM_MAXLEN,
)
from agent_passport.revocations import RevocationEntry
from killswitch.models import EpochCounter, Revocation
from killswitch.services import current_epoch
from passports.services import revocation_channel

logger = logging.getLogger(__name__)

# Applies one entry atomically. Returns 0 if already applied, 1 if applied, 2 if applied to the
# stream but the snapshot is missing (Redis was flushed or restarted): the caller reconciles.
_PUBLISH = """
local known = tonumber(redis.call('HGET', KEYS[4], ARGV[1]) or '0')
local epoch = tonumber(ARGV[2])
if known >= epoch then return 0 end
redis.call('HSET', KEYS[4], ARGV[1], ARGV[2])
local has_snapshot = redis.call('EXISTS', KEYS[3]) == 1
if has_snapshot then
  if ARGV[3] == 'revoke' then
    redis.call('HSET', KEYS[3], ARGV[6] .. ARGV[1], ARGV[4])
  else
    redis.call('HDEL', KEYS[3], ARGV[6] .. ARGV[1])
  end
  if epoch > tonumber(redis.call('HGET', KEYS[3], ARGV[7]) or '0') then
    redis.call('HSET', KEYS[3], ARGV[7], ARGV[2])
  end
end
if epoch > tonumber(redis.call('GET', KEYS[1]) or '0') then
  redis.call('SET', KEYS[1], ARGV[2])
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', ARGV[8], ARGV[4])
if has_snapshot then return 1 end
return 2
"""

_clients: dict[str, redis.Redis] = {}
_LATEST_EPOCH = Coalesce(F("lift_epoch"), F("epoch"))


def redis_client() -> redis.Redis:
    """A shared client with short timeouts, so a dead Redis never stalls a request for long."""
    url = settings.REDIS_URL
    if url not in _clients:
        _clients[url] = redis.Redis.from_url(
            url, socket_timeout=1.0, socket_connect_timeout=0.5, decode_responses=True
        )
    return _clients[url]


def entry_for(revocation: Revocation) -> RevocationEntry:
    """The entry describing a revocation's current state (a lift once it has been lifted)."""
    if revocation.lift_epoch:
        return RevocationEntry(id=revocation.pk, epoch=revocation.lift_epoch, kind="lift")
    return RevocationEntry(
        id=revocation.pk,
        epoch=revocation.epoch,
        kind="revoke",
        target_type=revocation.target_type,
        target_value=revocation.target_value,
        reason=revocation.reason,
        source=revocation.source,
        at=revocation.created_at.isoformat(),
    )


def _pending() -> list[Revocation]:
    return list(
        Revocation.objects.annotate(latest=_LATEST_EPOCH)
        .filter(pushed_epoch__lt=F("latest"))
        .order_by("latest")
    )


def push_pending() -> int:
    """Publish every revocation change not yet in Redis, oldest first. Idempotent.

    Raises redis.RedisError if Redis is unreachable (nothing is marked pushed then).
    """
    pending = _pending()
    if not pending:
        return 0
    keys = revocation_channel()
    script = redis_client().register_script(_PUBLISH)
    snapshot_missing = False
    for revocation in pending:
        entry = entry_for(revocation)
        result = script(
            keys=[keys.epoch_key, keys.stream_key, keys.snapshot_key, keys.versions_key],
            args=[
                entry.id,
                entry.epoch,
                entry.kind,
                entry.to_json(),
                STREAM_MAXLEN,
                SNAPSHOT_ENTRY_PREFIX,
                SNAPSHOT_EPOCH_FIELD,
                STREAM_ENTRY_FIELD,
            ],
        )
        snapshot_missing = snapshot_missing or result == 2
        Revocation.objects.filter(pk=revocation.pk, pushed_epoch__lt=entry.epoch).update(
            pushed_epoch=entry.epoch
        )
    if snapshot_missing:
        reconcile()
    return len(pending)


def push_pending_or_schedule() -> None:
    """Push right away (the fast path); if Redis is down, leave it to Celery and reconciliation."""
    try:
        push_pending()
    except redis.RedisError as exc:
        logger.error("revocation push failed (%s); scheduling a retry", exc.__class__.__name__)
        # In the background: with the broker on the same dead Redis, enqueueing can block for
        # seconds, and the operator's kill request must answer at once.
        threading.Thread(target=_schedule_retry, name="schedule-push-retry", daemon=True).start()


def _schedule_retry() -> None:
    from killswitch.tasks import push_revocations

    try:
        push_revocations.apply_async(retry=False)
    except Exception as broker_error:  # the broker is usually this same Redis
        logger.error(
            "could not schedule the retry either (%s); the periodic reconciliation will push "
            "it when Redis is back",
            broker_error.__class__.__name__,
        )


def _desired_snapshot() -> tuple[dict[str, str], dict[str, str], int]:
    active = Revocation.objects.filter(lifted_at__isnull=True).order_by("epoch")
    entries = {f"{SNAPSHOT_ENTRY_PREFIX}{r.pk}": entry_for(r).to_json() for r in active}
    versions = {
        str(pk): str(lift_epoch or epoch)
        for pk, epoch, lift_epoch in Revocation.objects.values_list("pk", "epoch", "lift_epoch")
    }
    return entries, versions, current_epoch()


def reconcile() -> bool:
    """Rewrite the Redis snapshot from the database if it differs. Returns True if rewritten.

    Holds the epoch-counter lock, so no revoke or lift commits meanwhile, and WATCHes the
    snapshot, so a publish of an earlier commit racing with us makes us start over.
    """
    keys = revocation_channel()
    client = redis_client()
    for _ in range(10):
        with transaction.atomic(), client.pipeline() as pipe:
            EpochCounter.objects.select_for_update().get_or_create(pk=1)
            try:
                pipe.watch(keys.snapshot_key)
                entries, versions, epoch = _desired_snapshot()
                current = pipe.hgetall(keys.snapshot_key)
                current_entries = {k: v for k, v in current.items() if not k.startswith("_")}
                published_epoch = int(current.get(SNAPSHOT_EPOCH_FIELD) or 0)
                rewrite = not current or current_entries != entries or published_epoch < epoch
                if rewrite:
                    pipe.multi()
                    pipe.delete(keys.snapshot_key, keys.versions_key)
                    pipe.hset(
                        keys.snapshot_key,
                        mapping={
                            **entries,
                            SNAPSHOT_EPOCH_FIELD: str(max(epoch, published_epoch)),
                            SNAPSHOT_GENERATION_FIELD: uuid.uuid4().hex,
                        },
                    )
                    if versions:
                        pipe.hset(keys.versions_key, mapping=versions)
                    pipe.set(keys.epoch_key, max(epoch, published_epoch))
                    pipe.execute()
                else:
                    pipe.unwatch()
            except redis.WatchError:
                continue
            Revocation.objects.filter(pushed_epoch__lt=_LATEST_EPOCH).update(
                pushed_epoch=_LATEST_EPOCH
            )
        if rewrite:
            logger.warning("revocation snapshot rewritten from the database (epoch %s)", epoch)
        return rewrite
    raise redis.RedisError("reconciliation kept racing with publishers; will retry")
