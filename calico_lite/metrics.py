"""The node agent's Prometheus metrics, one registry per process (never the library's global
default, so two agents or an agent and a test in one interpreter never share counters).

Events (CNI calls, route and policy syncs, etcd errors) are counted where they happen, through
the small observer methods below; state (IPAM usage, BGP sessions) is read at scrape time by
`NodeStateCollector`, so a scrape always shows the present, never a stale copy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from calico_lite import keys

PREFIX = "calico_lite_"
CNI_VERBS = ("ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION")
BGP_STATES = ("Idle", "Connect", "Active", "OpenSent", "OpenConfirm", "Established")
# a warm ADD is ~30 ms here; etcd trouble shows as seconds (the client's timeout is 5 s)
CNI_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
POLICY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
RULESET_STATS = ("chains", "rules", "sets", "set_elements", "map_elements")


def new_registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=True)


class AgentMetrics:
    """Counters and histograms of what the agent did, registered in its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None):
        r = self.registry = registry if registry is not None else new_registry()
        self.cni_requests = Counter(PREFIX + "cni_requests", "CNI calls served, by verb and result",
                                    ["verb", "result"], registry=r)
        self.cni_seconds = Histogram(PREFIX + "cni_request_seconds", "CNI call latency in the agent",
                                     ["verb"], buckets=CNI_BUCKETS, registry=r)
        self.route_syncs = Counter(PREFIX + "route_syncs", "Kernel route applies", registry=r)
        self.route_errors = Counter(PREFIX + "route_programming_errors",
                                    "Routes the kernel refused to add, replace or delete", registry=r)
        self.policy_seconds = Histogram(
            PREFIX + "policy_sync_seconds",
            "Policy compile plus nftables apply, by mode (sync: full, update: incremental, noop)",
            ["mode"], buckets=POLICY_BUCKETS, registry=r)
        self.policy_errors = Counter(PREFIX + "policy_sync_errors",
                                     "Policy syncs not applied (the previous rules stayed)", registry=r)
        self.links_missing = Gauge(PREFIX + "workload_interfaces_missing",
                                   "Local pods whose host-side interface is gone (deleted or "
                                   "renamed behind the agent's back)", registry=r)
        self.policy_count = Gauge(PREFIX + "policy_policies", "NetworkPolicies compiled", registry=r)
        self.policy_pods = Gauge(PREFIX + "policy_local_pods", "Local pods in the ruleset", registry=r)
        self.ruleset = Gauge(PREFIX + "policy_ruleset_objects",
                             "Size of the applied nftables ruleset, by kind (rules, chains, ...)",
                             ["kind"], registry=r)
        self.bgp_filtered = Counter(
            PREFIX + "bgp_prefixes_filtered",
            "Paths the BGP import policy or a filter refused, or an export filter kept from a peer "
            "(each counted once), by peer and reason (filter:NAME for filters)",
            ["peer", "reason"], registry=r)
        self.etcd_errors = Counter(PREFIX + "etcd_errors",
                                   "etcd calls that failed (unreachable or timed out), by operation",
                                   ["operation"], registry=r)
        self.etcd_retries = Counter(PREFIX + "etcd_retries",
                                    "Retries after an etcd failure or a lost compare-and-swap, by reason",
                                    ["reason"], registry=r)
        for verb in ("ADD", "DEL", "CHECK"):   # present from the start, so rate() sees the first
            for result in ("ok", "error"):
                self.cni_requests.labels(verb, result)
            self.cni_seconds.labels(verb)

    # --- observers the agent hands to the controllers -----------------------------------
    def cni_call(self, fields: dict) -> None:
        """plugin.server's per-call log fields: verb, result, ms."""
        verb = fields.get("verb") if fields.get("verb") in CNI_VERBS else "unknown"
        self.cni_requests.labels(verb, fields.get("result") or "error").inc()
        if "ms" in fields:
            self.cni_seconds.labels(verb).observe(fields["ms"] / 1000)

    def routes_applied(self, failures: list) -> None:
        """One route sync applied; failures: the routes it could not program."""
        self.route_syncs.inc()
        if failures:
            self.route_errors.inc(len(failures))

    def policy_synced(self, status: dict) -> None:
        """The policy controller's published status (policy_sync.PolicyController)."""
        if status.get("error"):
            self.policy_errors.inc()
            return
        seconds = (status.get("compile_ms", 0) + status.get("nft_ms", 0)) / 1000
        self.policy_seconds.labels(status.get("mode") or "unknown").observe(seconds)
        self.policy_count.set(status.get("policies", 0))
        self.policy_pods.set(status.get("local_pods", 0))
        for kind in RULESET_STATS:
            self.ruleset.labels(kind).set(status.get(kind, 0))

    def bgp_prefix_filtered(self, rejected) -> None:
        """One path refused by the import policy (bgp.imports.Rejected), first seen now."""
        self.bgp_filtered.labels(rejected.peer, rejected.kind).inc()

    def etcd_error(self, operation: str) -> None:
        self.etcd_errors.labels(operation).inc()

    def etcd_retry(self, reason: str) -> None:
        self.etcd_retries.labels(reason).inc()


@dataclass(frozen=True)
class IpamUsage:
    addresses: int
    blocks: int
    borrowed: int


def ipam_usage(affinities: dict[str, dict], handles: dict[str, dict], node: str) -> IpamUsage:
    """This node's blocks (affinities) and the addresses it holds (handles), pure."""
    prefix = keys.affinities(node)
    mine = [h for h in handles.values() if h.get("node") == node]
    return IpamUsage(addresses=len(mine), blocks=sum(1 for k in affinities if k.startswith(prefix)),
                     borrowed=sum(1 for h in mine if h.get("borrowed")))


def bgp_families(peers: Iterable) -> list[GaugeMetricFamily]:
    """Sessions by state, prefixes received and sent per peer (bgp.speaker.PeerState list)."""
    peers = list(peers)
    sessions = GaugeMetricFamily(PREFIX + "bgp_sessions", "BGP sessions by state", labels=["state"])
    states = {s: 0 for s in BGP_STATES}
    for p in peers:
        states[p.state] = states.get(p.state, 0) + 1
    for state, n in states.items():
        sessions.add_metric([state], n)
    received = GaugeMetricFamily(PREFIX + "bgp_prefixes_received", "Prefixes learned from a peer",
                                 labels=["peer"])
    sent = GaugeMetricFamily(PREFIX + "bgp_prefixes_sent", "Prefixes announced to a peer",
                             labels=["peer"])
    for p in peers:
        received.add_metric([p.address], p.received)
        sent.add_metric([p.address], p.sent)
    return [sessions, received, sent]


def bfd_families(sessions: Iterable, downs: dict[str, int]) -> list:
    """BFD sessions by state (bgp.bfd.SessionStatus list), and per peer the BGP sessions
    BFD took down (the Speaker's bfd_downs)."""
    states = GaugeMetricFamily(PREFIX + "bfd_sessions", "BFD sessions by state", labels=["state"])
    counts = {s: 0 for s in ("AdminDown", "Down", "Init", "Up")}
    for s in sessions:
        counts[s.state] = counts.get(s.state, 0) + 1
    for state, n in counts.items():
        states.add_metric([state], n)
    down = CounterMetricFamily(PREFIX + "bfd_session_down",
                               "BGP sessions torn down because BFD declared the peer down",
                               labels=["peer"])
    for peer, n in sorted(downs.items()):
        down.add_metric([peer], n)
    return [states, down]


class NodeStateCollector(Collector):
    """Reads the agent's present state at each scrape: IPAM usage, BGP and BFD sessions."""

    def __init__(self, usage: Callable[[], IpamUsage], peers: Callable[[], list],
                 bfd: Callable[[], tuple[list, dict[str, int]]] = lambda: ([], {})):
        self.usage = usage
        self.peers = peers
        self.bfd = bfd

    def describe(self):
        return []   # names are only known per scrape (per-peer labels); skip auto-describe

    def collect(self):
        u = self.usage()
        yield GaugeMetricFamily(PREFIX + "ipam_addresses_in_use",
                                "Addresses this node holds (pods and tunnel addresses)", value=u.addresses)
        yield GaugeMetricFamily(PREFIX + "ipam_borrowed_addresses_in_use",
                                "Addresses this node borrowed from other nodes' blocks", value=u.borrowed)
        yield GaugeMetricFamily(PREFIX + "ipam_blocks_in_use", "Blocks affine to this node",
                                value=u.blocks)
        yield from bgp_families(self.peers())
        yield from bfd_families(*self.bfd())
