"""What every benchmark shares, so that a bench script only describes what it measures.

- ``machine``: how busy the machine is (and waiting for it to be quiet), CPU accounting of the
  processes under test, the ``machine`` section of every report.
- ``stats``: percentiles and their summaries, the timer's own overhead.
- ``servers``: the real service as child processes (PostgreSQL database, Redis, gunicorn, Celery,
  the revocation heartbeat) started and stopped by process group, and a small API client.
- ``load``: a closed-loop load generator (one thread and HTTP session per client).
- ``report``: tables, PASS/FAIL, writing the JSON to ``bench/results/``.
- ``run``: one run's work directory, machine Redis and cleanup, also after Ctrl-C.

A bench script puts the repository root on ``sys.path`` and imports from here.
"""
