"""Pod-to-pod reachability, probed from inside each source pod's namespace.

Each probe runs in a thread that enters the source pod's namespace (setns is per thread),
so one process probes every pair in parallel with no process per probe, and the caller's
own thread never changes namespace.
"""
from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from plugin.netns import run_in_netns

TIMEOUT = 1.0


@dataclass(frozen=True)
class Endpoint:
    namespace: str
    pod: str
    ip: str
    netns: str  # path of the pod's namespace file

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.pod}"


def reachable(ip: str, port: int, protocol: str, timeout: float = TIMEOUT) -> bool:
    """TCP: the connection is accepted. UDP: the datagram is echoed back."""
    if protocol == "tcp":
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            try:
                s.connect((ip, port))
                return True
            except OSError:
                return False
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(b"probe", (ip, port))
            data, _ = s.recvfrom(64)
            return data == b"probe"
        except OSError:
            return False


def probe_from(netns: str, ip: str, port: int, protocol: str) -> bool:
    """Probe ip:port from inside the namespace file at netns."""
    return run_in_netns(netns, lambda: reachable(ip, port, protocol))


def probe_all(pods: list[Endpoint], port: int, protocol: str, workers: int = 64) -> list[dict]:
    pairs = [(a, b) for a in pods for b in pods if a != b]
    with ThreadPoolExecutor(max_workers=min(workers, max(1, len(pairs)))) as ex:
        results = list(ex.map(lambda ab: probe_from(ab[0].netns, ab[1].ip, port, protocol), pairs))
    return [{"from": a.ref, "to": b.ref, "port": port, "protocol": protocol, "connected": ok}
            for (a, b), ok in zip(pairs, results)]
