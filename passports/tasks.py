from celery import shared_task

from passports import services, signing


@shared_task(acks_late=True)
def expire_passports() -> int:
    services.stop_overdue_superseded_passports()
    return services.expire_passports()


@shared_task(acks_late=True)
def retire_signing_keys() -> list[str]:
    return signing.retire_signing_keys()
