"""Celery wrappers: retrying pushes and the periodic reconciliation. Both are idempotent."""

import redis
from celery import shared_task

from killswitch import publisher


@shared_task(
    acks_late=True,
    autoretry_for=(redis.RedisError,),
    retry_backoff=0.5,
    retry_backoff_max=10,
    max_retries=30,
)
def push_revocations() -> int:
    return publisher.push_pending()


@shared_task(acks_late=True, autoretry_for=(redis.RedisError,), max_retries=3, retry_backoff=1)
def reconcile_revocations() -> bool:
    publisher.push_pending()
    return publisher.reconcile()
