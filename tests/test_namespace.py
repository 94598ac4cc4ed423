"""Instances that share a Redis but not a database keep apart: each has its own namespace."""

import json
import os
import subprocess
import sys
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SHOW = (
    "import json; from django.conf import settings as s; print(json.dumps([s.REDIS_NAMESPACE,"
    " s.REVOCATION_REDIS_PREFIX, s.CACHES['default']['KEY_PREFIX'],"
    " s.CELERY_BROKER_TRANSPORT_OPTIONS['global_keyprefix'], s.CELERY_BEAT_SCHEDULE_FILENAME]))"
)


def redis_names(**env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if not k.endswith(("NAMESPACE", "PREFIX"))}
    output = subprocess.run(
        [sys.executable, "manage.py", "shell", "-v0", "-c", SHOW],
        cwd=BASE_DIR,
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def test_each_database_gets_its_own_redis_namespace_for_every_key(tmp_path):
    one = redis_names(DATABASE_URL=f"sqlite:///{tmp_path / 'one.sqlite3'}")
    two = redis_names(DATABASE_URL="postgres://postgres@127.0.0.1:5432/other")
    namespace = one[0]
    assert namespace.startswith("aps-") and namespace != two[0]
    assert one[1:] == [
        namespace,
        f"{namespace}:cache",
        f"{namespace}:celery:",
        str(BASE_DIR / "var" / f"celerybeat-{namespace}"),
    ]
    assert set(one).isdisjoint(two)


def test_the_namespace_can_be_set_explicitly(tmp_path):
    names = redis_names(
        DATABASE_URL=f"sqlite:///{tmp_path / 'one.sqlite3'}", REDIS_NAMESPACE="blue"
    )
    assert names[:4] == ["blue", "blue", "blue:cache", "blue:celery:"]
