from django.core.management.base import BaseCommand, CommandError

from actions import audit


class Command(BaseCommand):
    help = (
        "Recompute every action-log hash chain and check it against the signed checkpoints; "
        "names the first edited, deleted, inserted or reordered event. Exit code 1 on failure."
    )

    def handle(self, **options) -> None:
        report = audit.verify()
        summary = report.summary()
        if report.ok:
            self.stdout.write(f"audit log intact: {summary}")
            return
        for problem in report.problems:
            self.stderr.write(f"TAMPERED: {problem}")
        raise CommandError(f"audit log verification failed ({summary})")
