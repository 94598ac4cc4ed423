from django.core.management.base import BaseCommand

from actions import audit
from passports import signing


class Command(BaseCommand):
    help = "Make a new active signing key; the old one verifies until its passports expire."

    def handle(self, **options) -> None:
        key = signing.rotate_signing_key()
        # Re-sign every audit chain's checkpoint with the new key, so each chain stays
        # verifiable from the JWKS after the old key retires.
        resigned = audit.create_checkpoints(everyone=True)
        retired = signing.retire_signing_keys()
        self.stdout.write(f"active key: {key.kid}")
        self.stdout.write(f"re-signed:  {resigned} audit checkpoint(s)")
        if retired:
            self.stdout.write(f"retired:    {', '.join(retired)}")
