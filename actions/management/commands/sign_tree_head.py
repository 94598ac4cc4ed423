import json

from django.core.management.base import BaseCommand, CommandError

from actions import transparency, witnesses
from registry.errors import RequestRejected


class Command(BaseCommand):
    help = (
        "Sign a tree head over every committed action-log event now (if the log grew since the "
        "last head), publish it to the witnesses, and print it as JSON."
    )

    def handle(self, **options) -> None:
        try:
            head, created = transparency.sign_on_demand()
        except RequestRejected as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(json.dumps(head.document(), sort_keys=True))
        if not created:
            self.stderr.write(f"unchanged: the log still has {head.tree_size} event(s)")
        for sink in witnesses.witnessed_by(head):
            self.stderr.write(f"witnessed by {sink}")
        for sink, error in witnesses.refused_by(head).items():
            self.stderr.write(f"NOT witnessed by {sink}: {error}")
