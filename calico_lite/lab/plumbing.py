"""Namespaces, veths, addresses and daemons for the lab, via iproute2.

Every command names its namespace explicitly (`ip -n NS ...`), so nothing can land in the
machine's own namespace by accident, whatever namespace this process happens to be in.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


class PlumbingError(RuntimeError):
    pass


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(list(args), capture_output=True, text=True)
    if check and p.returncode != 0:
        raise PlumbingError(f"`{' '.join(args)}` failed: {p.stderr.strip() or p.stdout.strip()}")
    return p


def ip(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run("ip", "-n", ns, *args, check=check)


def netns_exists(name: str) -> bool:
    return Path("/var/run/netns", name).exists()


def add_netns(name: str) -> None:
    if netns_exists(name):
        raise PlumbingError(f"network namespace {name} already exists")
    run("ip", "netns", "add", name)
    ip(name, "link", "set", "lo", "up")


def sysctl(ns: str, key: str, value: str) -> None:
    run("ip", "netns", "exec", ns, "sysctl", "-qw", f"{key}={value}")


def veth(ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
    """A veth pair with one end in each namespace, both up."""
    ip(ns_a, "link", "add", name_a, "type", "veth", "peer", "name", name_b, "netns", ns_b)
    ip(ns_a, "link", "set", name_a, "up")
    ip(ns_b, "link", "set", name_b, "up")


def netns_pids(name: str) -> list[int]:
    p = run("ip", "netns", "pids", name, check=False)
    return [int(x) for x in p.stdout.split()]


def kill_pids(pids: list[int], grace: float = 2.0) -> None:
    """SIGTERM, wait up to grace seconds, then SIGKILL what is left (never this process)."""
    alive = []
    for pid in set(pids) - {os.getpid()}:
        try:
            os.kill(pid, signal.SIGTERM)
            alive.append(pid)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if pid_alive(p)]
        time.sleep(0.05)
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def pid_alive(pid: int) -> bool:
    """True if pid exists and is not a zombie (a reaped-late child of ours counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def delete_netns(name: str) -> None:
    """Kill whatever runs inside, then remove the namespace."""
    kill_pids(netns_pids(name), grace=1.0)
    run("ip", "netns", "delete", name, check=False)


def spawn(ns: str, argv: list[str], log: Path, env: dict | None = None) -> int:
    """Start a daemon in network namespace ns, detached from this process; returns its PID."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        # nsenter, not `ip netns exec`: the latter gives the daemon a private mount namespace,
        # where netns files a runtime mounts later (e.g. under containerd's state dir) are empty
        p = subprocess.Popen(["nsenter", f"--net=/var/run/netns/{ns}", "--", *argv],
                             stdout=out, stderr=out,
                             stdin=subprocess.DEVNULL, start_new_session=True,
                             env={**os.environ, **(env or {})})
    return p.pid
