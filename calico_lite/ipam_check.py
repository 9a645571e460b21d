"""`ipam check` and `ipam gc`: compare what IPAM holds with the attachments that exist.

The comparison is pure (`check`), so every kind of inconsistency is unit-tested; `gc` only
releases what check calls a leak, and never a handle younger than the grace period, which
may belong to an ADD still in flight.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable

from calico_lite import keys
from calico_lite.blocks import Block
from calico_lite.datastore import Datastore
from calico_lite.ipam import Ipam

GC_GRACE_SECONDS = 60.0


@dataclass
class Finding:
    kind: str      # leaked-handle | orphan-allocation | conflict | stale-workload | missing-interface
    ip: str
    handle: str
    detail: str


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    handles: int = 0
    in_use: int = 0

    def of(self, kind: str) -> list[Finding]:
        return [f for f in self.findings if f.kind == kind]

    @property
    def ok(self) -> bool:
        return not self.findings


def check(blocks: list[Block], handles: dict[str, dict], workloads: dict[str, dict],
          netns_exists: Callable[[str], bool], now: float, grace: float,
          link_exists: Callable[[str, str], bool] = lambda netns, ifname: True) -> Report:
    """handles: handle id -> record; workloads: handle id -> workload record (pure).
    link_exists(netns, ifname): whether a pod's interface is still in its namespace (a veth
    whose host end was deleted takes the pod end with it)."""
    r = Report(handles=len(handles))
    by_ip: dict[str, list[str]] = {}
    for b in blocks:
        for off, h in b.allocations.items():
            ip = b.address(off)
            by_ip.setdefault(ip, []).append(h)
            if h not in handles:
                r.findings.append(Finding("orphan-allocation", ip, h,
                                          f"block {b.cidr} holds {ip} for a handle that has no record"))
    for ip, hs in by_ip.items():
        if len(hs) > 1:
            r.findings.append(Finding("conflict", ip, ",".join(hs), f"{ip} held by {len(hs)} handles"))
    for h, rec in handles.items():
        ip = rec.get("ip", "")
        if h not in by_ip.get(ip, []):
            r.findings.append(Finding("conflict", ip, h, f"handle says {ip} but its block does not"))
            continue
        w = workloads.get(h)
        young = now - rec.get("created", 0) < grace
        if (w and netns_exists(w.get("netns", ""))) or rec.get("tunnel"):
            r.in_use += 1  # a pod that exists, or a node's tunnel address (no workload)
            if w and w.get("ifname") and not link_exists(w["netns"], w["ifname"]):
                r.findings.append(Finding("missing-interface", ip, h, (
                    f"pod {w.get('namespace')}/{w.get('pod')} has no {w['ifname']} in {w['netns']} "
                    f"(its host end {w.get('host_ifname')} was deleted?); the address stays with the pod")))
        elif w:
            r.findings.append(Finding("stale-workload", ip, h,
                                      f"pod {w.get('namespace')}/{w.get('pod')} netns {w.get('netns')} is gone"))
        elif not young:
            r.findings.append(Finding("leaked-handle", ip, h,
                                      "no workload uses it (an ADD that crashed, or a DEL that never came)"))
    return r


def load_and_check(ds: Datastore, grace: float = GC_GRACE_SECONDS) -> Report:
    blocks = [Block.from_dict(e.value) for e in ds.list(keys.BLOCKS)]
    handles = {e.key[len(keys.HANDLES):]: e.value for e in ds.list(keys.HANDLES)}
    workloads = {e.value["handle"]: e.value for e in ds.list(keys.WORKLOADS)}
    return check(blocks, handles, workloads,
                 lambda p: bool(p) and os.path.exists(p), time.time(), grace, _pod_link_exists)


def _pod_link_exists(netns: str, ifname: str) -> bool:
    """Whether `ifname` exists inside the namespace at `netns` (looked up from a thread that
    enters it); True when the namespace cannot be entered (not this check's finding)."""
    import socket
    from plugin.netns import NetnsError, run_in_netns

    def lookup() -> bool:
        try:
            return socket.if_nametoindex(ifname) > 0
        except OSError:
            return False
    try:
        return run_in_netns(netns, lookup)
    except (NetnsError, OSError):
        return True


def gc(ds: Datastore, grace: float = GC_GRACE_SECONDS) -> list[Finding]:
    """Release leaked handles, stale workloads and orphan allocations; never one in use."""
    report = load_and_check(ds, grace)
    ipam = Ipam(ds, node="")
    done = []
    for f in report.findings:
        if f.kind in ("leaked-handle", "stale-workload"):
            ipam.release(f.handle)  # the workload record goes with it
            done.append(f)
        elif f.kind == "orphan-allocation":
            ipam.release_ip(f.ip)
            done.append(f)
    return done
