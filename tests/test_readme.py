"""Every shell example in README runs, in the order README shows them, against `make run`'s
service (the real run command on a free port): walkthrough, kill switch, incident demo (with
and without the SDK)."""

import json
import re
import signal
import subprocess
from pathlib import Path

from registry.devserver import free_port
from tests.test_run_command import (
    processes_marked,
    read_until_serving,
    remove_instance_keys,
    run_env,
    start_run,
    stop,
    stop_if_running,
)

BASE_DIR = Path(__file__).resolve().parent.parent
README_ADDRESS = "http://127.0.0.1:8000"


def readme_script(base_url: str) -> str:
    """README's ```sh blocks in order as one bash script: `make …` lines are the service this
    test runs, the demo token comes from the environment, and README's address is ours."""
    blocks = re.findall(r"^```sh\n(.*?)^```$", (BASE_DIR / "README.md").read_text(), re.M | re.S)
    lines = [
        line
        for block in blocks
        for line in block.splitlines()
        if not line.startswith(("make ", "export T=aps_..."))
    ]
    return "set -euo pipefail\n" + "\n".join(lines).replace(README_ADDRESS, base_url) + "\n"


def test_readme_shell_examples_work_in_order(tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = run_env(tmp_path, port, PASSPORT_ISSUER=base, AGENT_PASSPORT_REGISTRY=base)
    process = start_run(env)
    try:
        token = re.search(r"^token:\s+(\S+)$", read_until_serving(process), re.M).group(1)
        result = subprocess.run(
            ["bash", "-c", readme_script(base)],
            cwd=BASE_DIR,
            env={**env, "T": token},
            capture_output=True,
            text=True,
            timeout=180,
        )
        stop(process, signal.SIGTERM)
    finally:
        stop_if_running(process)
        remove_instance_keys(port)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "Traceback" not in out and "Error" not in out, out
    # walkthrough
    assert re.search(r"^agent [0-9a-f-]{36}$", out, re.M), out
    assert "Decision(allowed=True" in out and "Decision(allowed=False" in out, out
    assert '{"active":true' in out and '"reason":"superseded"' in out, out
    assert '"errors":{"scope"' in out, out
    # kill switch: killed, then everything it killed is lifted
    assert '"allowed":false' in out, out
    assert len(re.findall(r'"lifted_at":"[^"]+"', out)) == 3, out
    active = json.loads([line for line in out.splitlines() if line.startswith('{"next"')][-1])
    assert {next(iter(r["target"])) for r in active["results"]} == {"passport"}, out
    # the TypeScript SDK's CLI, with the registry's JWKS
    assert "valid: passport " in out, out
    assert "allowed: allowed by rule 'fs:*:/workspace/**' in DE" in out, out
    # incident demo
    assert "7. agent: next action refused" in out and "9. audit log: intact" in out, out
    # the incident with an agent that does not use the SDK, under the supervisor and egress proxy
    assert "Tunnel connection failed: 403 Forbidden" in out, out
    assert "process tree stopped: 3 processes, 1 needed SIGKILL after 1 s" in out, out
    assert out.count("9. audit log: intact") == 2, out
    assert processes_marked(port) == []
