"""A live server for the browser tests that also works on SQLite's in-memory test database.

pytest-django's ``live_server`` hands the server the test's in-memory SQLite connection, but
serves requests on many threads and leaves the test itself on a second connection to the same
shared-cache database. Concurrent requests (the browser's live polling, an SDK agent's
heartbeats, a form post) then fail with "database table is locked". Here, on in-memory SQLite
only, the server answers one request at a time and the test uses the server's connection.
PostgreSQL gets the usual threaded server and a connection per thread.
"""

import os
from typing import NoReturn

import pytest
from django.core.servers.basehttp import WSGIServer
from django.db import connections
from pytest_django.live_server_helper import LiveServer


def browser_unavailable(message: str) -> NoReturn:
    """Skip a browser test with ``message`` (the install hint) on a developer's machine; fail it
    where ``REQUIRE_BROWSER=1`` says the browser tests must run (CI: ``.ci/run``)."""
    if os.environ.get("REQUIRE_BROWSER") == "1":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


class SerialWSGIServer(WSGIServer):
    """Django's non-threaded WSGI server, accepting LiveServerThread's arguments."""

    def __init__(self, *args, connections_override=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)


@pytest.fixture(scope="module")
def live_server(django_db_setup):
    server = LiveServer(os.getenv("DJANGO_LIVE_TEST_SERVER_ADDRESS") or "localhost", start=False)
    if server.thread.connections_override:  # in-memory SQLite
        server.thread.server_class = SerialWSGIServer
    server.start()
    yield server
    server.stop()


@pytest.fixture
def live_server_connection(live_server):
    """On in-memory SQLite, let the test's own queries go through the server's connection."""
    shared = live_server.thread.connections_override
    saved = {alias: connections[alias] for alias in shared}
    for alias, connection in shared.items():
        connections[alias] = connection
    yield
    for alias, connection in saved.items():
        connections[alias] = connection
