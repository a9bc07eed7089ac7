"""``ray job submit`` end to end: a real local head, the pretraining job, the head stopped.

The head gets its own temp dir, ports and a marker in its environment, and only its
processes are stopped (``ray stop`` would also stop the test session's Ray instance)."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).parent.parent
RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_of(marker: str) -> list[int]:
    """Processes whose environment carries ``SCALING_TEST_HEAD=marker``: everything the head
    started, whatever it renamed itself to."""
    tag = f"SCALING_TEST_HEAD={marker}".encode()
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            found = tag in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if found and int(pid) != os.getpid():
            pids.append(int(pid))
    return pids


def stop_head(marker: str, grace: float = 5) -> None:
    """SIGTERM the head's processes, then SIGKILL what is left after ``grace`` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in processes_of(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.time() + grace
        while processes_of(marker) and time.time() < deadline:
            time.sleep(0.1)


def test_ray_job_submit_runs_pretrain(tiny_world, tmp_path):
    """The job trains on the session's tiny world (synthesizing one in the job is the same
    code as ``scaling synth``, tested on its own)."""
    env = {**os.environ, "RAY_AUTH_MODE": "token"}  # Ray 2.60 local clusters require a token
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # the venv's python
    env.pop("RAY_ADDRESS", None)
    temp = tempfile.mkdtemp(prefix="rayhead", dir="/tmp")
    env["SCALING_TEST_HEAD"] = temp
    dash = free_port()
    # every port of its own: the test session's Ray instance holds the default ones
    start = [
        RAY,
        "start",
        "--head",
        f"--port={free_port()}",
        f"--dashboard-port={dash}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--ray-client-server-port={free_port()}",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        "--num-cpus=2",
        f"--temp-dir={temp}",
        "--disable-usage-stats",
    ]
    subprocess.run(start, env=env, check=True, capture_output=True, timeout=120)
    try:
        submit = [
            RAY,
            "job",
            "submit",
            "--address",
            f"http://127.0.0.1:{dash}",
            "--working-dir",
            str(ROOT),
            "--",
            "python",
            "jobs/pretrain.py",
            "--config",
            "jobs/configs/smoke.yaml",
            "--set",
            f"run.dir={tmp_path}",
            "--set",
            f"data.path={tiny_world}",
            "--set",
            "train.steps=10",
        ]
        for _ in range(30):  # the head's job agent can take a while to come up on a busy node
            p = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=600)
            if "No available agent" not in p.stdout + p.stderr:
                break
            time.sleep(3)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        assert "succeeded" in p.stdout + p.stderr
        result = json.loads((tmp_path / "result.json").read_text())
        assert result["step"] == 10 and result["crops_seen"] == 10 * 16 * 2
    finally:
        stop_head(temp)
    assert processes_of(temp) == []
