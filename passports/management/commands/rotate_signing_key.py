from django.core.management.base import BaseCommand

from actions.services import rotate_signing_key


class Command(BaseCommand):
    help = "Make a new active signing key; the old one verifies until its passports expire."

    def handle(self, **options: object) -> None:
        rotation = rotate_signing_key()
        self.stdout.write(f"active key: {rotation.key.kid}")
        self.stdout.write(f"re-signed:  {rotation.resigned} audit checkpoint(s)")
        if rotation.retired:
            self.stdout.write(f"retired:    {', '.join(rotation.retired)}")
