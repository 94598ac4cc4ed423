"""The README's run command starts a working service and stops cleanly."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from registry.devserver import free_port

BASE_DIR = Path(__file__).resolve().parent.parent


def test_run_command_serves_api_with_printed_demo_token(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'run.sqlite3'}",
        "RUN_ADDRESS": f"127.0.0.1:{port}",
        "REVOCATION_REDIS_PREFIX": f"aps-runtest-{port}",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "registry.devserver", "run"],
        cwd=BASE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = ""
    try:
        deadline = time.monotonic() + 90
        while "Serving on" not in output and time.monotonic() < deadline:
            line = process.stdout.readline()
            assert line or process.poll() is None, output
            output += line
        token = re.search(r"^token:\s+(\S+)$", output, re.M).group(1)
        assert re.search(r"^password:\s+\S+$", output, re.M)
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                if requests.get(f"{base}/healthz", timeout=5).ok:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        headers = {"Authorization": f"Token {token}"}
        agent = requests.post(
            f"{base}/api/v1/agents", json={"name": "smoke"}, headers=headers, timeout=10
        )
        assert agent.status_code == 201, agent.text
        jwks = requests.get(f"{base}/.well-known/jwks.json", timeout=10).json()
        assert len(jwks["keys"]) == 1
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0, "web server still running after stop"
