"""Celery wrappers: retrying pushes, the periodic reconciliation and kill-rule webhooks.

All are idempotent."""

import redis
import requests
from celery import shared_task

from killswitch import notifications, publisher, services


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


@shared_task(acks_late=True)
def retire_expired_passport_revocations() -> int:
    return services.retire_expired_passport_revocations()


@shared_task(
    acks_late=True,
    autoretry_for=(requests.RequestException,),
    retry_backoff=2,
    retry_backoff_max=300,
    retry_jitter=True,
    max_retries=5,
)
def notify_webhook(match_id: int) -> bool:
    """POST a kill-rule match to its rule's webhook; retried on network errors and 5xx."""
    return notifications.deliver_webhook(match_id=match_id)
