from celery import shared_task

from actions import audit, services


@shared_task(acks_late=True)
def create_checkpoints() -> int:
    return audit.create_checkpoints()


@shared_task(acks_late=True)
def prune_agent_copies() -> int:
    return services.prune_agent_copies()
