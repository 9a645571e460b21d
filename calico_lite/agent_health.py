"""The node agent's readiness conditions and how its parts report to health and metrics.

Readiness (`/readyz`): the datastore answers, BGP has at least one Established session (or no
peer is configured), the policy controller has applied a ruleset and its last sync did not
fail, and the CNI socket is listening. The conditions are pure functions of what the agent
sees, so they are tested without an agent.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from calico_lite import keys
from calico_lite.datastore import Datastore
from calico_lite.health import Check, Heartbeats
from calico_lite.metrics import AgentMetrics, NodeStateCollector, ipam_usage

if TYPE_CHECKING:
    from calico_lite.agent import NodeAgent

ACCEPTING = 0x10000   # __SO_ACCEPTCON in /proc/net/unix: the socket is listening
PROBE_TIMEOUT = 2.0   # a readiness probe must answer well inside the kubelet's timeout


def bgp_reason(peers: list) -> str:
    """'' with no peer configured or one Established; else every peer's state (pure)."""
    if not peers or any(p.state == "Established" for p in peers):
        return ""
    states = ", ".join(f"{p.address} {p.state}" + (f" ({p.reason})" if p.reason else "")
                       for p in peers)
    return f"no BGP session Established: {states}"


def policy_reason(status: dict | None) -> str:
    """'' once a ruleset is applied and the last sync did not fail (pure)."""
    if status is None:
        return "no policy sync yet"
    if status.get("error"):
        return f"last policy sync failed, previous rules stay: {status['error'][:300]}"
    return ""


def unix_listening(proc_net_unix: str, path: str) -> bool:
    """Is a unix socket bound to path listening, per /proc/net/unix's text (pure)?"""
    for line in proc_net_unix.splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 8 and cols[7] == path and int(cols[3], 16) & ACCEPTING:
            return True
    return False


def cni_reason(path: Path) -> str:
    text = Path("/proc/thread-self/net/unix").read_text()
    return "" if unix_listening(text, str(path)) else f"CNI socket {path} is not listening"


def datastore_reason(probe: Datastore) -> str:
    return "" if probe.healthy() else f"{probe.describe} unreachable (no answer in {PROBE_TIMEOUT:g}s)"


def agent_checks(agent: "NodeAgent", probe: Datastore) -> list[Check]:
    return [Check("datastore", lambda: datastore_reason(probe)),
            Check("bgp", lambda: bgp_reason(agent.routing.speaker.peers())),
            Check("policy", lambda: policy_reason(agent.policy_status)),
            Check("cni", lambda: cni_reason(agent.cfg.cni_socket))]


def instrument(agent: "NodeAgent", metrics: AgentMetrics, beats: Heartbeats) -> None:
    """Hand each part of the agent its observers: heartbeats for the loops, counters for
    what they did; and register the scrape-time collector of IPAM and BGP state."""
    def beat(name: str) -> Callable[[], None]:
        return lambda: beats.beat(name)   # a loop is watched from its first beat on
    agent.cache.beat = beat("datastore-watch")
    agent.routing.beat = beat("routing")
    agent.routing.on_apply = metrics.routes_applied
    agent.routing.filter_report.count = metrics.bgp_prefix_filtered
    agent.policy.beat = beat("policy")
    agent.ds.on_error = metrics.etcd_error
    agent.ds.on_retry = metrics.etcd_retry
    node = agent.cfg.node
    metrics.registry.register(NodeStateCollector(
        usage=lambda: ipam_usage(agent.cache.items(keys.AFFINITIES),
                                 agent.cache.items(keys.HANDLES), node),
        peers=lambda: agent.routing.speaker.peers(),
        bfd=lambda: (agent.routing.speaker.bfd_status(), dict(agent.routing.speaker.bfd_downs))))
