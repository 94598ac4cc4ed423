from django.core.management.base import BaseCommand

from passports import signing


class Command(BaseCommand):
    help = "Make a new active signing key; the old one verifies until its passports expire."

    def handle(self, **options) -> None:
        key = signing.rotate_signing_key()
        retired = signing.retire_signing_keys()
        self.stdout.write(f"active key: {key.kid}")
        if retired:
            self.stdout.write(f"retired:    {', '.join(retired)}")
