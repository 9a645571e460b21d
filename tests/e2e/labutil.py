"""Helpers for end-to-end tests that drive `calico-lite lab` like a user would."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from calico_lite.lab.lab import Lab
from tests.conftest import REPO, lab_cli
from tests.nslib import netns_pids, remove_netns_with_prefix


def lab_name(tag: str) -> str:
    return f"t{tag}{uuid.uuid4().hex[:5]}"


def lab_namespaces(name: str) -> list[str]:
    out = os.popen("ip netns list").read().split("\n")
    return [line.split()[0] for line in out if line.startswith(f"{name}-")]


@contextmanager
def running_lab(name: str, *up_args: str) -> Iterator[str]:
    """A lab that is removed afterwards, also when the test fails or up itself fails."""
    try:
        lab_cli("lab", "up", "--name", name, *up_args)
        yield name
    finally:
        lab_cli("lab", "down", "--name", name, check=False)
        for ns in lab_namespaces(name):  # belt and braces: a test failure must not leak
            for pid in netns_pids(ns):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        remove_netns_with_prefix(f"{name}-")


def status(name: str) -> dict:
    return json.loads(lab_cli("lab", "status", "--name", name, "--json").stdout)


def probe(name: str, *args: str) -> list[dict]:
    return json.loads(lab_cli("lab", "probe", "--name", name, "--json", *args).stdout)


def run_dir(name: str) -> Path:
    return Path(os.environ.get("CALICO_LITE_RUN", "/run/calico-lite/labs")) / name


def exabgp_pid(lab: str, node: str) -> int | None:
    """The node's running ExaBGP (None: none)."""
    return Lab(lab).exabgp_pid(node)


def agent_pid(lab: str, node: str) -> int | None:
    """The node's running agent, the DaemonSet pod's container (None: none)."""
    return Lab(lab).agent_pid(node)


def vtysh(lab: str, router: str, cmd: str) -> str:
    return subprocess.run(["ip", "netns", "exec", f"{lab}-{router}", "vtysh", "--vty_socket",
                           str(run_dir(lab) / "frr" / router), "-c", cmd],
                          capture_output=True, text=True, check=True).stdout


def tor_sessions(lab: str, tor: str, peer: str) -> int:
    """How many times the ToR's session with peer was established (FRR's counter)."""
    return json.loads(vtysh(lab, tor, f"show bgp neighbors {peer} json"))[peer]["connectionsEstablished"]


class UdpStream:
    """Numbered UDP probes every `interval` s from a pod to another pod's echo server."""

    def __init__(self, lab: str, src_pod: str, dst_ip: str, interval: float = 0.01):
        self.stop_file = Path(tempfile.mktemp(prefix="tgr-stream-"))
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", f"{lab}-pod-{src_pod.replace('/', '-')}", sys.executable, "-m",
             "calico_lite.lab.udpstream", dst_ip, "80", str(interval), str(self.stop_file)],
            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})

    def finish(self) -> dict:
        self.stop_file.touch()
        try:
            out, _ = self.proc.communicate(timeout=30)
        finally:
            self.stop_file.unlink(missing_ok=True)
        return json.loads(out)


def pod_ip(lab: str, pod: str) -> str:
    return next(p["ip"] for p in status(lab)["pods"] if f"{p['namespace']}/{p['name']}" == pod)
