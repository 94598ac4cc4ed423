from datetime import UTC, datetime
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser

from actions import archive


def _date(value: str) -> datetime:
    """An ISO date or date-time; naive values are UTC."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise CommandError(f"--before: {value!r} is not an ISO date (YYYY-MM-DD)") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class Command(BaseCommand):
    help = (
        "Write the action-log events received before DATE (whole 256-leaf blocks covered by a "
        "signed head) to DIR/segment-START-END.jsonl, verify it, record it and drop the monthly "
        "partitions it emptied. Verify a segment with `python -m agent_passport verify-segment`."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--before", required=True, help="ISO date or date-time (UTC if naive)")
        parser.add_argument("--to", required=True, type=Path, help="directory for the segment")

    def handle(self, **options) -> None:
        before = _date(options["before"])
        try:
            outcome = archive.archive(before, options["to"])
        except archive.ArchiveRefused as exc:
            raise CommandError(f"archive refused: {exc}") from exc
        segment, report = outcome.segment, outcome.report
        self.stdout.write(
            f"archived leaves {segment.start_leaf}..{segment.end_leaf} to {segment.location} "
            f"(sha256 {segment.sha256}); verified: {report.summary()}"
        )
        if outcome.dropped:
            self.stdout.write(f"dropped partitions: {', '.join(outcome.dropped)}")
        for name in outcome.kept:
            self.stdout.write(
                f"kept partition {name}: it also holds leaves from {segment.end_leaf} on "
                "(dropped by a later archive)"
            )
        if not outcome.dropped and not outcome.kept:
            self.stdout.write("no partition to drop (events stay in the database)")
