from django.core.management.base import BaseCommand

from passports import signing


class Command(BaseCommand):
    help = "Create the first signing key if there is none (run at start-up)."

    def handle(self, **options) -> None:
        self.stdout.write(f"active key: {signing.active_signing_key().kid}")
