"""Pushes revocations to agents through Redis (key layout: README, "Kill-switch protocol").

* ``<prefix>:revocations:epoch`` — the highest epoch published (a string integer).
* ``<prefix>:revocations:stream`` — a stream; each entry has the fields ``entry`` (JSON) and
  ``prev`` (the epoch of the entry before it), so a follower can tell that it missed entries.
* ``<prefix>:revocations:snapshot`` — a hash: ``_epoch``, ``_generation``, ``_v`` (the protocol
  version) and one field ``r:<id>`` per active revocation. Its absence means "state unknown":
  agents fail closed.
* ``<prefix>:revocations:heartbeat`` — a hash stamped every second by :func:`stamp_heartbeat`:
  the highest epoch committed in the database and the Redis server's time. Agents stay fresh
  only while it keeps changing and they have applied that epoch.
* ``<prefix>:revocations:versions`` — server bookkeeping: last epoch applied per revocation id,
  which makes every push idempotent.
"""

import logging
import threading
import time
import uuid

import redis
from celery import shared_task
from django.conf import settings
from django.db import DatabaseError, close_old_connections, connections, transaction
from django.db.models import F, Max
from django.db.models.functions import Coalesce

from agent_passport.protocol import (
    HEARTBEAT_AT_FIELD,
    HEARTBEAT_EPOCH_FIELD,
    PROTOCOL_VERSION,
    SNAPSHOT_ENTRY_PREFIX,
    SNAPSHOT_EPOCH_FIELD,
    SNAPSHOT_GENERATION_FIELD,
    SNAPSHOT_VERSION_FIELD,
    STREAM_ENTRY_FIELD,
    STREAM_PREV_FIELD,
    RevocationChannel,
)
from agent_passport.revocations import RevocationEntry
from killswitch.models import EpochCounter, Revocation
from killswitch.selectors import current_epoch
from registry.redis_connection import redis_client

logger = logging.getLogger(__name__)


def revocation_channel() -> RevocationChannel:
    """This registry's Redis keys, which every passport names in its ``rev`` claim."""
    return RevocationChannel(prefix=settings.REVOCATION_REDIS_PREFIX)


# Applies one entry atomically. Returns 0 if already applied, 1 if applied, 2 if applied to the
# stream but the snapshot is missing or older than what the database knows was pushed (Redis
# was flushed, restarted, or restored from an older copy): the caller reconciles. Writing into
# such a snapshot would give it a current epoch without the entries it lost.
_PUBLISH = """
local known = tonumber(redis.call('HGET', KEYS[4], ARGV[1]) or '0')
local epoch = tonumber(ARGV[2])
if known >= epoch then return 0 end
redis.call('HSET', KEYS[4], ARGV[1], ARGV[2])
local snapshot_epoch = tonumber(redis.call('HGET', KEYS[3], ARGV[7]) or '-1')
local has_snapshot = snapshot_epoch >= tonumber(ARGV[10])
if has_snapshot then
  if ARGV[3] == 'revoke' then
    redis.call('HSET', KEYS[3], ARGV[6] .. ARGV[1], ARGV[4])
  else
    redis.call('HDEL', KEYS[3], ARGV[6] .. ARGV[1])
  end
  if epoch > snapshot_epoch then
    redis.call('HSET', KEYS[3], ARGV[7], ARGV[2])
  end
end
if epoch > tonumber(redis.call('GET', KEYS[1]) or '0') then
  redis.call('SET', KEYS[1], ARGV[2])
end
local prev = 0
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)[1]
if last then
  local fields = last[2]
  for i = 1, #fields, 2 do
    if fields[i] == ARGV[8] then
      local ok, doc = pcall(cjson.decode, fields[i + 1])
      if ok and type(doc) == 'table' and type(doc.epoch) == 'number'
         and doc.epoch == math.floor(doc.epoch) then prev = doc.epoch end
    end
  end
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', ARGV[8], ARGV[4],
           ARGV[9], string.format('%d', prev))
if has_snapshot then return 1 end
return 2
"""

# The heartbeat stamp: the committed epoch and the Redis server's time in milliseconds (its
# own clock, so agents compare it with TIME and neither the agents' nor our clock matters).
# Returns the snapshot's epoch (-1 if it is missing) so the caller can heal a lagging snapshot.
_STAMP = """
local now = redis.call('TIME')
local at = string.format('%d', tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000))
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2], ARGV[3], at)
return tonumber(redis.call('HGET', KEYS[2], ARGV[4]) or '-1')
"""

_LATEST_EPOCH = Coalesce(F("lift_epoch"), F("epoch"))


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
    # The snapshot must already hold everything marked pushed; if not, it was lost or restored
    # from an older copy, and only a full rewrite (reconcile) may bring it forward.
    floor = Revocation.objects.aggregate(floor=Max("pushed_epoch"))["floor"] or 0
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
                settings.REVOCATION_STREAM_MAXLEN,
                SNAPSHOT_ENTRY_PREFIX,
                SNAPSHOT_EPOCH_FIELD,
                STREAM_ENTRY_FIELD,
                STREAM_PREV_FIELD,
                floor,
            ],
        )
        snapshot_missing = snapshot_missing or result == 2
        Revocation.objects.filter(pk=revocation.pk, pushed_epoch__lt=entry.epoch).update(
            pushed_epoch=entry.epoch
        )
    if snapshot_missing:
        reconcile()
    return len(pending)


def stamp_heartbeat() -> tuple[int, int]:
    """Stamp the highest committed epoch into Redis, with Redis's own time.

    Returns (the epoch stamped, the snapshot's epoch or -1 if it is missing). Raises
    redis.RedisError when Redis refuses writes or is down: no stamp, and agents fail closed,
    as they must when kills cannot reach them.
    """
    epoch = current_epoch()
    keys = revocation_channel()
    snapshot_epoch = redis_client().register_script(_STAMP)(
        keys=[keys.heartbeat_key, keys.snapshot_key],
        args=[HEARTBEAT_EPOCH_FIELD, epoch, HEARTBEAT_AT_FIELD, SNAPSHOT_EPOCH_FIELD],
    )
    return epoch, snapshot_epoch


def run_heartbeat(stop: threading.Event, interval: float) -> None:
    """Stamp every ``interval`` seconds until ``stop`` is set (``manage.py revocation_heartbeat``).

    When the snapshot is still behind the epoch stamped one beat earlier, the fast path failed
    (Redis refused the push) or Redis lost state (flushed, restored from an older copy): push
    what is pending and reconcile. Failures are logged once per kind and survived.
    """
    announced = -1  # the epoch stamped on the previous beat
    problem = ""
    try:
        while True:
            started = time.monotonic()
            close_old_connections()
            try:
                epoch, snapshot_epoch = stamp_heartbeat()
                if snapshot_epoch < announced:
                    push_pending()
                    reconcile()
                announced = epoch
                if problem:
                    logger.warning("revocation heartbeat stamping again")
                problem = ""
            except (redis.RedisError, DatabaseError) as exc:
                if exc.__class__.__name__ != problem:
                    logger.error(
                        "revocation heartbeat failed (%s: %s); agents fail closed until it is back",
                        exc.__class__.__name__,
                        exc,
                    )
                problem = exc.__class__.__name__
            if stop.wait(max(0.0, interval - (time.monotonic() - started))):
                return
    finally:
        connections.close_all()  # this thread's connections


def push_pending_or_schedule() -> None:
    """Push right away (the fast path); if Redis is down, leave it to Celery and reconciliation."""
    try:
        push_pending()
    except redis.RedisError as exc:
        logger.error("revocation push failed (%s); scheduling a retry", exc.__class__.__name__)
        # In the background: with the broker on the same dead Redis, enqueueing can block for
        # seconds, and the operator's kill request must answer at once.
        threading.Thread(target=_schedule_retry, name="schedule-push-retry", daemon=True).start()


@shared_task(
    name="killswitch.tasks.push_revocations",  # the established name, which queued messages carry
    acks_late=True,
    autoretry_for=(redis.RedisError,),
    retry_backoff=0.5,
    retry_backoff_max=10,
    max_retries=30,
)
def push_revocations() -> int:
    """The retried push, for when Redis was down at commit time."""
    return push_pending()


def _schedule_retry() -> None:
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
                # redis-py's types cannot tell that decode_responses=True gives str, and they
                # take mappings keyed by Mapping[EncodableT, ...], which no dict[str, str] fits.
                current: dict[str, str] = pipe.hgetall(keys.snapshot_key)  # type: ignore[assignment]
                current_entries = {k: v for k, v in current.items() if not k.startswith("_")}
                published_epoch = int(current.get(SNAPSHOT_EPOCH_FIELD) or 0)
                rewrite = (
                    not current
                    or current_entries != entries
                    or published_epoch < epoch
                    or current.get(SNAPSHOT_VERSION_FIELD) != str(PROTOCOL_VERSION)
                )
                if rewrite:
                    pipe.multi()
                    pipe.delete(keys.snapshot_key, keys.versions_key)
                    pipe.hset(
                        keys.snapshot_key,
                        mapping={
                            **entries,  # type: ignore[dict-item]
                            SNAPSHOT_EPOCH_FIELD: str(max(epoch, published_epoch)),
                            SNAPSHOT_GENERATION_FIELD: uuid.uuid4().hex,
                            SNAPSHOT_VERSION_FIELD: str(PROTOCOL_VERSION),
                        },
                    )
                    if versions:
                        pipe.hset(keys.versions_key, mapping=versions)  # type: ignore[arg-type]
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
