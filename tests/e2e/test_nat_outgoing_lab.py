"""NAT outgoing end to end in a 2-rack lab (ToR mode): a host outside the cluster, behind the
spine, answers each TCP connection with the source address it saw. A pod of a natOutgoing pool
reaches it as its node; a pod of a pool without the flag as itself (the spine routes the pod
blocks it learned over BGP back); pod to pod keeps pod addresses whatever the flags; flipping a
pool's flag with `pool set` changes the next connection on every node, nothing restarted."""
from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest

from calico_lite.lab.plan import OUTSIDE_IP, make_plan
from plugin.netns import run_in_netns
from tests.conftest import lab_cli
from tests.e2e.labutil import running_lab

pytestmark = pytest.mark.slow
OUTSIDE_PORT, POD_PORT = 7000, 7001
NAT_POOL = "10.245.0.0/16"


class SourceEcho:
    """A TCP server in a namespace (its socket made there, served from a thread here): each
    connection gets the source address it came from, then is closed."""

    def __init__(self, netns_path: str, port: int):
        def listen() -> socket.socket:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", port))
            s.listen(64)
            return s
        self.sock = run_in_netns(netns_path, listen)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, (ip, _) = self.sock.accept()
            except OSError:
                return  # closed
            with conn:
                conn.sendall(ip.encode())

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept
        except OSError:
            pass
        self.sock.close()


def source_seen(netns_path: str, ip: str, port: int, within: float = 60.0) -> str:
    """Connect from a namespace and return what the server saw as our source. A connection
    that fails (a route still converging) is retried; the answer itself is never retried."""
    def ask() -> str:
        with socket.create_connection((ip, port), timeout=3) as s:
            return s.recv(64).decode()
    deadline = time.monotonic() + within
    while True:
        try:
            return run_in_netns(netns_path, ask)
        except OSError as e:
            if time.monotonic() > deadline:
                raise AssertionError(f"no answer from {ip}:{port} in {netns_path}: {e}") from e
            time.sleep(0.2)


@pytest.fixture(scope="module")
def lab():
    with running_lab(f"nat{uuid.uuid4().hex[:5]}", "--racks", "2", "--nodes-per-rack", "1") as name:
        yield name


def cli(lab: str, *args: str) -> str:
    return lab_cli(*args, "--lab", lab).stdout


def settle(lab: str) -> None:
    """Every node routes every block and has applied the datastore as of now (pools too)."""
    lab_cli("lab", "wait", "--name", lab, "--policy", "--timeout", "60")


def add_pod(lab: str, pod: str, node: str) -> tuple[str, str]:
    ip = lab_cli("lab", "pod", "add", f"default/{pod}", "--node", node, "--name", lab,
                 "--serve", "tcp:80").stdout.strip().splitlines()[-1]
    path = f"/var/run/netns/{make_plan(lab, 2, 1).pod_netns('default', pod)}"
    assert Path(path).exists(), path
    return ip, path


def nat_of_nodes(lab: str) -> dict[str, list[str]]:
    rows = json.loads(cli(lab, "node", "status", "--json"))
    return {r["node"]: [m["pool"] for m in r["nat"]["masquerade"]] for r in rows}


def test_nat_outgoing_follows_the_pools_flags_and_never_touches_pod_to_pod(lab):
    plan = make_plan(lab, 2, 1)
    node1, node2 = plan.node("r1n1").address, plan.node("r2n1").address
    a_ip, a = add_pod(lab, "a", "r1n1")
    b_ip, b = add_pod(lab, "b", "r2n1")
    servers = [SourceEcho(f"/var/run/netns/{plan.outside_netns}", OUTSIDE_PORT),
               SourceEcho(b, POD_PORT)]
    try:
        settle(lab)
        # the default pool has no natOutgoing: the outside sees pod addresses
        assert nat_of_nodes(lab) == {"r1n1": [], "r2n1": []}
        assert source_seen(a, OUTSIDE_IP, OUTSIDE_PORT) == a_ip
        assert source_seen(a, b_ip, POD_PORT) == a_ip

        cli(lab, "pool", "set", "default-ipv4-ippool", "--nat-outgoing")
        settle(lab)
        assert nat_of_nodes(lab) == {"r1n1": ["default-ipv4-ippool"], "r2n1": ["default-ipv4-ippool"]}
        assert source_seen(a, OUTSIDE_IP, OUTSIDE_PORT) == node1
        assert source_seen(b, OUTSIDE_IP, OUTSIDE_PORT) == node2
        assert source_seen(a, b_ip, POD_PORT) == a_ip       # across racks, not NATed

        # a second pool with the flag takes the new pods; the default one loses it
        cli(lab, "pool", "add", "nat-pool", "--cidr", NAT_POOL, "--nat-outgoing")
        cli(lab, "pool", "set", "default-ipv4-ippool", "--no-nat-outgoing", "--disabled")
        c_ip, c = add_pod(lab, "c", "r1n1")
        assert c_ip.startswith("10.245."), c_ip
        settle(lab)
        assert nat_of_nodes(lab) == {"r1n1": ["nat-pool"], "r2n1": ["nat-pool"]}
        assert source_seen(c, OUTSIDE_IP, OUTSIDE_PORT) == node1
        assert source_seen(a, OUTSIDE_IP, OUTSIDE_PORT) == a_ip
        assert source_seen(c, b_ip, POD_PORT) == c_ip       # pool to pool, across racks

        cli(lab, "pool", "set", "nat-pool", "--no-nat-outgoing")
        settle(lab)
        assert source_seen(c, OUTSIDE_IP, OUTSIDE_PORT) == c_ip   # the spine routes it back
        cli(lab, "pool", "set", "nat-pool", "--nat-outgoing")
        settle(lab)
        assert source_seen(c, OUTSIDE_IP, OUTSIDE_PORT) == node1
        assert "nat-pool 10.245.0.0/16 masquerade" in cli(lab, "node", "status", "r1n1")
    finally:
        for s in servers:
            s.close()
