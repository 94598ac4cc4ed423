"""The benches' shared harness (bench/harness): percentiles, tables, JSON, the closed-loop load
generator, CPU accounting and the run's cleanup; and one real bench run, so none of it rots."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.harness.load import BadAnswer, closed_loop
from bench.harness.machine import CpuSnapshot, busy_cores
from bench.harness.report import Column, table, write_json, yes
from bench.harness.run import run_bench
from bench.harness.stats import percentile, summary

BASE_DIR = Path(__file__).resolve().parent.parent.parent


def test_percentile_is_the_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 99.9) == 100.0
    assert percentile(values, 0) == 1.0
    assert percentile([], 50) == 0.0


def test_summary_of_timings():
    assert summary([3.0, 1.0, 2.0]) == {
        "n": 3, "min": 1.0, "p50": 2.0, "p90": 3.0, "p99": 3.0, "max": 3.0, "mean": 2.0
    }  # fmt: skip
    assert summary([]) == {"n": 0}


def test_table_aligns_columns_and_marks_what_was_not_measured():
    columns = (Column("name", 8, left=True), Column("req/s", 10, ",.1f"), Column("cores", 6))
    lines = table(columns, [["issue", 1234.56, 0.5], ["verify", 7.0, None]]).splitlines()
    assert lines == [
        "name         req/s cores",
        "------------------------",
        "issue      1,234.6   0.5",
        "verify         7.0     ?",
    ]
    assert yes(True) == "PASS" and yes(False) == "FAIL"


def test_write_json_creates_the_folder_and_says_where(tmp_path, capsys):
    path = tmp_path / "results" / "x.json"
    write_json({"at": tmp_path, "rows": [1, 2]}, path)
    assert json.loads(path.read_text()) == {"at": str(tmp_path), "rows": [1, 2]}
    assert capsys.readouterr().out == f"JSON: {path}\n"


def test_closed_loop_releases_every_client_and_counts_bad_answers():
    def client(index: int):
        def call(sequence: int) -> int:
            time.sleep(0.001)
            if index == 1:
                raise BadAnswer("HTTP 500", f"sequence {sequence}")
            return sequence

        return call

    load = closed_loop([client(0), client(1)], duration=0.3, warmup=0.1)
    good = [c for c in load.calls if c.error is None]
    bad = [c for c in load.calls if c.error is not None]
    assert good and all(c.client == 0 and c.result % 2 == 0 for c in good)
    assert bad and {c.error for c in bad} == {"HTTP 500"}
    assert len(load.error_samples) == 5 and load.error_samples[0].startswith("HTTP 500: ")
    start, end = load.window
    assert end - start == pytest.approx(0.3) and start - load.started == pytest.approx(0.1)
    in_window = load.ok_in_window()
    assert in_window and all(c.error is None and start <= c.ended < end for c in in_window)
    assert any(c.ended < start for c in good), "the warm-up's good calls are not in the window"
    assert load.finished >= end


def test_cpu_snapshot_counts_the_work_of_the_processes_under_test():
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)
        before = CpuSnapshot.take(spinner.pid, "no-such-database", redis=True)
        time.sleep(1.0)
        cores = CpuSnapshot.take(spinner.pid, "no-such-database", redis=True).cores_since(before)
    finally:
        spinner.kill()
        spinner.wait()
    assert set(cores) == {"client", "gunicorn", "postgres", "redis", "other", "machine"}
    # the spinning "server": a whole core on a free machine, less on a busy one, never more
    assert 0.05 < cores["gunicorn"] <= 1.1
    assert cores["postgres"] is None
    assert 0 <= (busy_cores(0.2) or 0) <= (os.cpu_count() or 1)


@pytest.fixture
def signal_handlers():
    """run_bench turns SIGTERM into Ctrl-C and ignores both while it cleans up: give pytest its
    own handlers back afterwards."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_run_bench_cleans_up_after_success_and_keeps_the_logs_of_a_failure(signal_handlers):
    seen = []

    def body(code: int):
        def run_body(run) -> int:
            (run.workdir / "server.log").write_text("log")
            run.at_exit(lambda: seen.append(run.workdir))
            return code

        return run_body

    assert run_bench(body(0), name="aps-test-bench") == 0
    assert not seen[-1].exists()
    assert run_bench(body(1), name="aps-test-bench") == 1
    assert (seen[-1] / "server.log").read_text() == "log"
    shutil.rmtree(seen[-1])


def test_run_bench_stops_on_ctrl_c_with_exit_code_130_and_keeps_the_logs(signal_handlers):
    workdirs = []

    def interrupted(run) -> int:
        workdirs.append(run.workdir)
        (run.workdir / "server.log").write_text("log")
        raise KeyboardInterrupt

    assert run_bench(interrupted, name="aps-test-bench") == 130
    assert (workdirs[0] / "server.log").read_text() == "log"
    shutil.rmtree(workdirs[0])


def test_the_parser_bench_runs_and_writes_its_report(tmp_path):
    output = tmp_path / "parser.json"
    done = subprocess.run(
        [sys.executable, "bench/bench_parser.py", "--output", str(output)],
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "safe ms" in done.stdout
    report = json.loads(output.read_text())
    assert [row["body"] for row in report["rows"]] == [
        "1,000-event batch",
        "batch, per event",
        "issuance request",
    ]
    assert all(row["safe_json_parser_ms"] > 0 for row in report["rows"])
    assert report["machine"]["cpu_count"] == os.cpu_count()


def test_the_reporter_crash_bench_leaves_no_spill_files_behind(tmp_path):
    """It used to leave its work directory (every killed agent's spill file) in /tmp."""
    output = tmp_path / "reporter_crash.json"
    temp = tmp_path / "temp"
    temp.mkdir()
    quick = ["--quick", "--kills", "1", "--rates", "20000", "--output", str(output)]
    done = subprocess.run(
        [sys.executable, "bench/bench_reporter_crash.py", *quick],
        cwd=BASE_DIR,
        env={**os.environ, "TMPDIR": str(temp)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(output.read_text())
    assert [(row["outage"], row["kills"]) for row in report["kills"]] == [
        ("refused", 1),
        ("hanging", 1),
    ]
    assert list(temp.iterdir()) == []
