"""Shared fixtures: a real etcd on loopback, and the built shim."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHIM = REPO / "build" / "calico-lite"
CLI = [str(REPO / ".venv" / "bin" / "calico-lite")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def etcd_endpoint():
    """A real etcd server on 127.0.0.1 (the machine's loopback only), removed at the end."""
    data = Path(tempfile.mkdtemp(prefix="calico-lite-etcd-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    client, peer = free_port(), free_port()
    proc = subprocess.Popen(
        ["etcd", "--name", "test", "--data-dir", str(data / "d"),
         "--listen-client-urls", f"http://127.0.0.1:{client}",
         "--advertise-client-urls", f"http://127.0.0.1:{client}",
         "--listen-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-cluster", f"test=http://127.0.0.1:{peer}",
         "--heartbeat-interval", "10", "--election-timeout", "100", "--log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{client}"
    try:
        from calico_lite.datastore import Datastore
        ds = Datastore([endpoint])
        deadline = time.monotonic() + 20
        while not ds.healthy():
            assert proc.poll() is None, "etcd exited at start"
            assert time.monotonic() < deadline, "etcd not healthy in 20 s"
            time.sleep(0.05)
        ds.close()
        yield endpoint
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def ds(etcd_endpoint):
    """A Datastore on an empty keyspace."""
    from calico_lite.datastore import Datastore
    from calico_lite import keys
    d = Datastore([etcd_endpoint])
    d.delete_prefix(keys.ROOT)
    yield d
    d.delete_prefix(keys.ROOT)
    d.close()


@pytest.fixture(scope="session")
def shim() -> Path:
    assert SHIM.is_file(), "build the shim first: make build"
    return SHIM


def lab_cli(*args: str, check: bool = True, timeout: float = 180,
            input: str | None = None) -> subprocess.CompletedProcess:
    p = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "CALICO_LITE_LAB": ""}, input=input)
    if check and p.returncode != 0:
        raise AssertionError(f"calico-lite {' '.join(args)} failed ({p.returncode}):\n"
                             f"{p.stdout}\n{p.stderr}")
    return p
