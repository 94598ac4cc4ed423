from celery import shared_task

from actions import audit, partitions, services, transparency


@shared_task(acks_late=True)
def create_checkpoints() -> int:
    return audit.create_checkpoints()


@shared_task(acks_late=True)
def prune_agent_copies() -> int:
    return services.prune_agent_copies()


@shared_task(acks_late=True)
def sign_tree_head() -> int | None:
    """Extend the tree and sign a head if it grew; returns the new head's size."""
    head = transparency.sign_tree_head()
    return head.tree_size if head is not None else None


@shared_task(acks_late=True)
def ensure_partitions() -> list[str]:
    """Create the action log's monthly partitions ahead of time (PostgreSQL); returns names."""
    return partitions.ensure_partitions()
