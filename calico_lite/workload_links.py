"""The agent's check of its pods' host-side interfaces against the kernel.

Someone (an operator, another tool) may delete or rename a pod's host interface behind the
agent's back. The kernel then drops the pod's /32 route with the interface; the pod is cut
off, but its workload record, address and policy elements stay until the CNI DEL. Every few
seconds the agent compares the interfaces its local workload records name with the links
that exist, and reports what is missing: one log line when a workload's interface goes
missing (and one when it is back), and the gauge `calico_lite_workload_interfaces_missing`.
A workload is reported only when its interface is missing at two checks in a row: an ADD
writes the record while it makes the veth.
The policy elements stay on purpose: an interface recreated under that name stays under the
pod's policy (fail closed); `ipam check` reports the pod whose interface is gone.
"""
from __future__ import annotations

import json
import logging
import threading
from typing import Callable

from calico_lite import keys
from calico_lite.cache import Cache

log = logging.getLogger("calico-lite.agent")
CHECK_SECONDS = 5.0


def missing_interfaces(workloads: dict[str, dict], node: str, links: set[str]) -> dict[str, str]:
    """Workload key -> host interface name, for this node's workloads whose host interface is
    not among `links` (pure). Records of the wrong shape are not this check's business."""
    out = {}
    for key, w in workloads.items():
        name = w.get("host_ifname") if isinstance(w, dict) and w.get("node") == node else None
        if isinstance(name, str) and name and name not in links:
            out[key] = name
    return out


class WorkloadLinkCheck:
    """Runs in the node's network namespace (the agent's); `links()` lists interface names."""

    def __init__(self, cache: Cache, node: str, links: Callable[[], set[str]],
                 report: Callable[[int], None] = lambda missing: None):
        self.cache, self.node, self.links, self.report = cache, node, links, report
        self.suspect: dict[str, str] = {}   # missing at the last check
        self.missing: dict[str, str] = {}   # missing at two checks in a row (reported)

    def check_once(self) -> dict[str, str]:
        workloads = self.cache.items(keys.workload(self.node, ""))
        now = missing_interfaces(workloads, self.node, self.links())
        confirmed = {k: v for k, v in now.items() if self.suspect.get(k) == v}
        for key, name in confirmed.items() - self.missing.items():
            w = workloads.get(key) or {}
            log.warning(json.dumps({"event": "workload-interface-missing", "workload": key,
                                    "host_ifname": name, "pod": f"{w.get('namespace')}/{w.get('pod')}",
                                    "ip": w.get("ip")}))
        for key, name in self.missing.items() - confirmed.items():
            if key in workloads:   # back (not merely deleted by a CNI DEL)
                log.info(json.dumps({"event": "workload-interface-back", "workload": key,
                                     "host_ifname": name}))
        self.suspect, self.missing = now, confirmed
        self.report(len(confirmed))
        return confirmed

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(CHECK_SECONDS):
            self.check_once()


def link_names() -> set[str]:
    """The interface names in the calling thread's network namespace."""
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        return {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
