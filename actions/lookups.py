"""Scope-rule resource patterns in SQL, matched without a backtracking engine.

``GlobMatch(F("resource"), pattern)`` is true where the column matches the pattern
(:mod:`agent_passport.globs`). The pattern comes from a viewer's filter or a kill rule and the
resource from an agent, so neither may reach a backtracking regex engine: PostgreSQL gets the
pattern as an anchored regex for ``~``, whose engine (Henry Spencer's) runs a DFA for expressions
without back-references; SQLite, whose ``REGEXP`` is Python's ``re``, calls the SDK's matcher.
"""

from functools import lru_cache

from django.db import NotSupportedError
from django.db.backends.signals import connection_created
from django.db.models import Lookup

from agent_passport.globs import Glob

SQLITE_FUNCTION = "aps_glob_match"


@lru_cache(maxsize=256)
def _compiled(pattern: str) -> Glob:
    return Glob.compile(pattern)


def _sqlite_glob_match(pattern: str | None, value: str | None) -> bool:
    return pattern is not None and value is not None and _compiled(pattern).matches(value)


def register_sqlite_function(sender, connection, **kwargs) -> None:
    """Give every new SQLite connection the matcher (``connection_created`` receiver)."""
    if connection.vendor == "sqlite":
        connection.connection.create_function(
            SQLITE_FUNCTION, 2, _sqlite_glob_match, deterministic=True
        )


connection_created.connect(register_sqlite_function, dispatch_uid=SQLITE_FUNCTION)


class GlobMatch(Lookup):
    lookup_name = "glob"
    prepare_rhs = False

    def as_sql(self, compiler, connection):
        raise NotSupportedError(f"glob matching is not implemented for {connection.vendor}")

    def as_sqlite(self, compiler, connection):
        lhs, lhs_params = self.process_lhs(compiler, connection)
        return f"{SQLITE_FUNCTION}(%s, {lhs})", [self.rhs, *lhs_params]

    def as_postgresql(self, compiler, connection):
        lhs, lhs_params = self.process_lhs(compiler, connection)
        return f"{lhs} ~ %s", [*lhs_params, _compiled(self.rhs).to_posix_regex()]
