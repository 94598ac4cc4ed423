import signal
import threading

from django.conf import settings
from django.core.management.base import BaseCommand

from agent_passport.session import set_on_signals
from killswitch import publisher


class Command(BaseCommand):
    help = (
        "Stamp the revocation heartbeat into Redis every REVOCATION_HEARTBEAT_SECONDS (pushing "
        "anything pending first) until SIGTERM or Ctrl-C. Agents fail closed without it."
    )

    def handle(self, **options) -> None:
        stop = threading.Event()
        set_on_signals(stop, signal.SIGTERM, signal.SIGINT)
        interval = settings.REVOCATION_HEARTBEAT_SECONDS
        self.stdout.write(f"revocation heartbeat every {interval:g} s")
        publisher.run_heartbeat(stop, interval)
