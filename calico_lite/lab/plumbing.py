"""Namespaces, veths, addresses and daemons for the lab, via iproute2.

Every command names its namespace explicitly (`ip -n NS ...`), so nothing can land in the
machine's own namespace by accident, whatever namespace this process happens to be in.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from bgp.process import kill_pids, pid_alive  # noqa: F401 (their home; the lab imports them here)


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
