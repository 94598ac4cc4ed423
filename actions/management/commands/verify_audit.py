import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from actions import audit
from agent_passport.logcheck import read_heads

UNSIGNED_TAIL = 3  # exit code: nothing tampered with, but some events no signed head covers yet


class Command(BaseCommand):
    help = (
        "Verify the action log: the Merkle tree against every signed tree head, the chain of "
        "heads, the per-agent chains against their checkpoints (and, with --witness, against "
        "a witness's copy of the heads). Names what was edited, deleted, inserted or reordered. "
        "Exit 0: intact and every event covered by a signed head; 1: tampered; 2: bad input; "
        f"{UNSIGNED_TAIL}: intact so far, but events not yet covered by a signed head."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--witness",
            metavar="HEADS_JSONL",
            help="a witness's heads file (one head document per line) to check the log against",
        )

    def handle(self, **options: Any) -> None:
        witness = self._witness(options["witness"]) if options["witness"] else []
        with tqdm(
            desc="verifying", unit=" events", file=sys.stderr, disable=not sys.stderr.isatty()
        ) as bar:
            report = audit.verify(witness=witness, progress=bar)
        summary = report.summary()
        if report.problems:
            for problem in report.problems:
                self.stderr.write(f"TAMPERED: {problem}")
            raise CommandError(f"audit log verification failed ({summary})")
        if report.unsigned_events:
            raise CommandError(
                f"NOT VERIFIED: {report.unsigned_events} event(s) not yet covered by a signed "
                f"head ({report.counts()})",
                returncode=UNSIGNED_TAIL,
            )
        self.stdout.write(f"audit log intact: {summary}")

    @staticmethod
    def _witness(path: str) -> list[dict[str, Any]]:
        try:
            with open(path, encoding="utf-8") as lines:
                return read_heads(lines, path)
        except OSError as exc:
            raise CommandError(f"cannot read {path}: {exc.strerror}", returncode=2) from exc
        except (UnicodeDecodeError, ValueError) as exc:
            raise CommandError(f"{exc}", returncode=2) from exc
