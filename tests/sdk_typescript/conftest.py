"""The browser tests' live server: on in-memory SQLite it serves one request at a time and the
test shares its connection (the TypeScript agent's reporter posts while the test kills)."""

from tests.console.conftest import live_server, live_server_connection  # noqa: F401
