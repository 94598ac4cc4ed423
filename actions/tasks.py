from celery import shared_task

from actions import audit


@shared_task(acks_late=True)
def create_checkpoints() -> int:
    return audit.create_checkpoints()
