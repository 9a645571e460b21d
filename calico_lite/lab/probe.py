"""Pod-to-pod reachability, probed from inside each source pod's namespace.

Each probe runs in its own thread that enters the source pod's namespace (setns is per
thread), so one process probes every pair in parallel with no process per probe.
"""
from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from plugin.netns import enter

TIMEOUT = 1.0


@dataclass(frozen=True)
class Endpoint:
    namespace: str
    pod: str
    ip: str
    netns: str

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.pod}"


def probe_one(src: Endpoint, dst: Endpoint, port: int, protocol: str) -> bool:
    enter(src.netns)
    if protocol == "tcp":
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(TIMEOUT)
            try:
                s.connect((dst.ip, port))
                return True
            except OSError:
                return False
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(TIMEOUT)
        try:
            s.sendto(b"probe", (dst.ip, port))
            data, _ = s.recvfrom(64)
            return data == b"probe"
        except OSError:
            return False


def probe_all(pods: list[Endpoint], port: int, protocol: str, workers: int = 64) -> list[dict]:
    pairs = [(a, b) for a in pods for b in pods if a != b]
    # fresh threads for each run: a worker's namespace changes with each probe it runs
    with ThreadPoolExecutor(max_workers=min(workers, max(1, len(pairs)))) as ex:
        results = list(ex.map(lambda ab: probe_one(ab[0], ab[1], port, protocol), pairs))
    return [{"from": a.ref, "to": b.ref, "port": port, "protocol": protocol, "connected": ok}
            for (a, b), ok in zip(pairs, results)]
