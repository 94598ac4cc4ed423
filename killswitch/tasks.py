"""Celery entry points of the periodic work: reconciliation and retirement. Both idempotent.

The tasks that a module enqueues itself live beside their work: the retried push in
:mod:`killswitch.publisher`, kill-rule webhooks in :mod:`killswitch.notifications`.
"""

import redis
from celery import shared_task

from killswitch import publisher, services


@shared_task(acks_late=True, autoretry_for=(redis.RedisError,), max_retries=3, retry_backoff=1)
def reconcile_revocations() -> bool:
    publisher.push_pending()
    return publisher.reconcile()


@shared_task(acks_late=True)
def retire_expired_passport_revocations() -> int:
    return services.retire_expired_passport_revocations()
