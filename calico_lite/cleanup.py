"""What calico-lite leaves on a node after `kubectl delete -f deploy/`, and its removal.

Deleting the DaemonSet stops the agents the way an upgrade does (on SIGTERM an agent
detaches: ExaBGP, routes and rules stay for the next agent), so an uninstall needs this one
more step on every node: `calico-lite node cleanup` (deploy/cleanup/ runs it as a DaemonSet).
It stops ExaBGP (its peers withdraw the node's blocks), deletes our nftables tables (`inet
calico-lite`, and `arp calico-lite` of the pods' ARP anti-spoofing), the routes
with our routing protocol (bgp.routes.PROTO), the tunnel devices, the conflist and the shim,
and the agent's run folder. `leftovers()` lists what is still there: the cleanup is verified
with it, and so is the lab's uninstall test.
"""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bgp.encap import DEVICES
from bgp.process import kill_pids, pid_alive
from bgp.routes import PROTO
from calico_lite.install import CONFLIST_NAME
from policy.ruleset import FAMILY, TABLE


@dataclass(frozen=True)
class NodeFiles:
    run_dir: Path
    cni_bin_dir: Path
    cni_conf_dir: Path

    @property
    def exabgp_pid_file(self) -> Path:
        return self.run_dir / "bgp" / "exabgp.pid"

    def ours(self) -> list[Path]:
        return [self.cni_bin_dir / "calico-lite", self.cni_conf_dir / CONFLIST_NAME]


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], capture_output=True, text=True).stdout


def _exabgp_pid(files: NodeFiles) -> int | None:
    try:
        pid = int(files.exabgp_pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if pid_alive(pid) else None


TABLES = ((FAMILY, TABLE), ("arp", TABLE))   # policy, NAT, host protection; ARP anti-spoofing


def _tables() -> list[tuple[str, str]]:
    """Our nftables tables that are present."""
    return [(family, table) for family, table in TABLES
            if subprocess.run(["nft", "list", "table", family, table], capture_output=True).returncode == 0]


def _devices() -> list[str]:
    """Our tunnel devices that are present. tunl0 is the kernel's own fallback device once the
    ipip module is loaded: it counts as ours only while up (the agent sets it up)."""
    links = {}
    for line in _ip("-o", "link", "show").splitlines():
        name, flags = line.split(": ")[1].split("@")[0], line.split("<", 1)[-1].split(">")[0]
        links[name] = flags.split(",")
    return [d for d in DEVICES.values() if d in links and (d != "tunl0" or "UP" in links[d])]


def leftovers(files: NodeFiles) -> list[str]:
    """Everything of calico-lite still on this node (in the current network namespace)."""
    out = [f"file {p}" for p in files.ours() if p.exists()]
    if pid := _exabgp_pid(files):
        out.append(f"ExaBGP (pid {pid})")
    out += [f"nftables table {family} {table}" for family, table in _tables()]
    out += [f"route {line.split()[0]} (proto {PROTO})" for line in _ip("route", "show", "proto", str(PROTO)).splitlines()
            if line.strip()]
    out += [f"device {d}" for d in _devices()]
    if files.run_dir.exists() and any(files.run_dir.iterdir()):
        out.append(f"run folder {files.run_dir}")
    return out


def cleanup(files: NodeFiles) -> list[str]:
    """Remove everything `leftovers` lists; returns what was removed, each step safe to repeat."""
    done = []
    pid = _exabgp_pid(files)
    if pid:
        kill_pids([pid], grace=5.0)   # SIGTERM: ExaBGP closes its sessions, peers withdraw
        done.append(f"stopped ExaBGP (pid {pid})")
    for family, table in _tables():
        subprocess.run(["nft", "delete", "table", family, table], check=True)
        done.append(f"deleted nftables table {family} {table}")
    if _ip("route", "show", "proto", str(PROTO)).strip():
        subprocess.run(["ip", "route", "flush", "proto", str(PROTO)], check=True)
        done.append(f"flushed routes of proto {PROTO}")
    for dev in _devices():
        if dev == "tunl0":
            subprocess.run(["ip", "link", "set", dev, "down"], check=True)
        else:
            subprocess.run(["ip", "link", "del", dev], check=True)
        done.append(f"removed device {dev}")
    for p in files.ours():
        if p.exists():
            p.unlink()
            done.append(f"removed {p}")
    if files.run_dir.exists():
        for child in files.run_dir.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        done.append(f"emptied {files.run_dir}")
    return done
