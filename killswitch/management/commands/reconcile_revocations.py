import redis
from django.core.management.base import BaseCommand, CommandError

from killswitch import publisher


class Command(BaseCommand):
    help = "Push pending revocations and rewrite the Redis snapshot from the database if needed."

    def handle(self, **options) -> None:
        try:
            pushed = publisher.push_pending()
            rewritten = publisher.reconcile()
        except redis.RedisError as exc:
            reason = exc.__class__.__name__
            raise CommandError(f"Redis is unreachable ({reason}); try again") from exc
        state = "rewritten" if rewritten else "already up to date"
        self.stdout.write(f"pushed {pushed} pending change(s); snapshot {state}")
