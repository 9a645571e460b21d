"""Test helpers for network namespaces: unique prefixes and guaranteed cleanup.

Every test that builds namespaces takes a prefix from `unique_prefix()` and removes
everything under it (processes first) in a `finally`/fixture teardown.
"""
from __future__ import annotations

import os
import signal
import subprocess
import uuid
from pathlib import Path


def unique_prefix(tag: str) -> str:
    """A short, unique namespace-name prefix such as 'tpol3f2a'."""
    return f"t{tag}{uuid.uuid4().hex[:4]}"


def sh(*args: str, check: bool = True, netns: str | None = None, **kw) -> subprocess.CompletedProcess:
    cmd = list(args)
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    return subprocess.run(cmd, check=check, capture_output=True, text=True, **kw)


def attach_to_segment(seg: str, prefix: str, name: str, address: str) -> str:
    """A new namespace `prefix+name`, its eth0 (`address`/24) joined to the bridge br0 of the
    segment namespace seg (a port `v-name`): a host on a shared L2 segment."""
    ns = f"{prefix}{name}"
    sh("ip", "netns", "add", ns)
    sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "-n", seg, "link", "add", f"v-{name}", "type", "veth", "peer", "name", "eth0", "netns", ns)
    sh("ip", "-n", seg, "link", "set", f"v-{name}", "master", "br0", "up")
    sh("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
    sh("ip", "-n", ns, "link", "set", "eth0", "up")
    return ns


def netns_pids(name: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def remove_netns_with_prefix(prefix: str) -> None:
    """Kill every process inside, then delete every namespace whose name starts with prefix."""
    names = [line.split()[0] for line in subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True).stdout.splitlines() if line.strip()]
    mine = [n for n in names if n.startswith(prefix)]
    for n in mine:
        for pid in netns_pids(n):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for n in mine:
        subprocess.run(["ip", "netns", "delete", n], capture_output=True)
    for n in mine:
        p = Path("/var/run/netns") / n
        if p.exists():
            subprocess.run(["umount", str(p)], capture_output=True)
            p.unlink(missing_ok=True)


def wait_for(check, what: str, timeout: float = 30.0, interval: float = 0.05):
    """Poll check() until it returns a truthy value and return it; fail with the last value
    seen. For eventual state (routes, sessions), never as a timing assertion."""
    import time
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
