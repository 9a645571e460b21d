"""Compile NetworkPolicies, pods and namespaces into the node's nftables Ruleset (pure).

Shape (one table, `inet calico-lite`):
- base chain `forward`: anti-spoofing for local pod interfaces, ct established/related accept,
  ct invalid drop, then `iifname vmap @egress_dispatch` and `oifname vmap @ingress_dispatch`.
  Dispatch is one hash lookup keyed by the pod's interface, so a packet costs the same however
  many pods and policies there are; it then walks only its own pod's chain.
- base chain `input`: anti-spoofing only; pod -> node traffic stays allowed, and node -> pod
  traffic goes through output, which we do not hook.
- per local pod and direction, a chain `ing_<if>` / `egr_<if>` exists only when some policy
  selects the pod for that direction (otherwise the pod is open that way): node IPs allowed,
  one rule per (policy rule x peer kind x port group), default drop. Egress chains `return`
  on allow so the ingress side of a pod-to-pod packet on this node is still checked.
- peers live in named sets per policy rule (pod addresses; ipBlock intervals with the excepts
  cut out; egress named ports as address . protocol . port), so a pod coming or going changes
  set elements, not rules. Set definitions depend on policies only.
"""
from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from .model import (
    EGRESS, INGRESS, ContainerPort, Namespace, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicyRule, Pod,
)
from .ruleset import Chain, NftSet, Rule, Ruleset, VerdictMap, quote, render_nft, render_update  # noqa: F401
from .label_selector import selector_matches

INGRESS_MAP = "ingress_dispatch"
EGRESS_MAP = "egress_dispatch"
LOCAL_IFACES = "local_pod_ifaces"
POD_IF_ADDR = "pod_if_addr"
NODE_IPS = "node_ips"

_NFT_PROTO = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


def policy_id(policy: NetworkPolicy) -> str:
    """Short, stable set-name prefix for a policy (names are length-limited, keys are not)."""
    return "p" + hashlib.sha1(policy.key.encode()).hexdigest()[:10]


def pod_chain(direction: str, interface: str) -> str:
    stem = interface if _SAFE_NAME.match(interface) else hashlib.sha1(interface.encode()).hexdigest()[:12]
    return f"{'ing' if direction == INGRESS else 'egr'}_{stem}"


@dataclass
class _Peers:
    """A rule's peers resolved to addresses: `any` (no peers given), pod IPs, IPv4 networks."""

    any: bool
    has_pod_peers: bool
    pod_ips: set[str]
    has_cidr_peers: bool
    networks: list[ipaddress.IPv4Network]

    def covers(self, ip: str, addr: int) -> bool:
        if self.any or ip in self.pod_ips:
            return True
        return any(int(n.network_address) <= addr <= int(n.broadcast_address) for n in self.networks)


class _Cluster:
    """Pods and namespace labels indexed for selector evaluation."""

    def __init__(self, pods: Iterable[Pod], namespaces: Iterable[Namespace]):
        self.ns_labels = {n.name: Namespace(n.name, dict(n.labels)).labels for n in namespaces}
        self.addr: dict[str, int] = {}
        self.pods: list[Pod] = []
        for p in pods:  # IPv4 pods only; a pod without a (valid) address yet cannot be a peer
            try:
                self.addr[p.ip] = int(ipaddress.IPv4Address(p.ip))
            except ValueError:
                continue
            self.pods.append(p)
        self.by_ns: dict[str, list[Pod]] = {}
        for p in self.pods:
            self.by_ns.setdefault(p.namespace, []).append(p)
            self.ns_labels.setdefault(p.namespace, Namespace(p.namespace).labels)

    def peer_pods(self, policy: NetworkPolicy, peer: NetworkPolicyPeer) -> list[Pod]:
        if peer.namespace_selector is None:
            namespaces = [policy.namespace]
        else:
            namespaces = [n for n, labels in self.ns_labels.items()
                          if selector_matches(peer.namespace_selector, labels)]
        out = []
        for ns in namespaces:
            for p in self.by_ns.get(ns, ()):
                if peer.pod_selector is None or selector_matches(peer.pod_selector, p.labels):
                    out.append(p)
        return out


def ipblock_networks(peers: Iterable[NetworkPolicyPeer]) -> list[ipaddress.IPv4Network]:
    """Union of IPv4 ipBlocks minus their excepts, as non-overlapping networks (pods are IPv4)."""
    nets: list[ipaddress.IPv4Network] = []
    for peer in peers:
        if peer.ip_block is None:
            continue
        cidr = ipaddress.ip_network(peer.ip_block.cidr)
        if cidr.version != 4:
            continue
        pieces = [cidr]
        for x in peer.ip_block.except_:
            ex = ipaddress.ip_network(x)
            nxt = []
            for piece in pieces:
                if ex.version == 4 and ex.subnet_of(piece):
                    nxt.extend(piece.address_exclude(ex))
                elif ex.version == 4 and piece.subnet_of(ex):
                    continue
                else:
                    nxt.append(piece)
            pieces = nxt
        nets.extend(pieces)  # type: ignore[arg-type]
    return list(ipaddress.collapse_addresses(nets))


def _resolve_peers(cluster: _Cluster, policy: NetworkPolicy, rule: NetworkPolicyRule) -> _Peers:
    pod_peers = [p for p in rule.peers if p.ip_block is None]
    ips = {pod.ip for peer in pod_peers for pod in cluster.peer_pods(policy, peer)}
    cidr_peers = [p for p in rule.peers if p.ip_block is not None]
    return _Peers(not rule.peers, bool(pod_peers), ips, bool(cidr_peers), ipblock_networks(cidr_peers))


def _net_element(n: ipaddress.IPv4Network) -> str:
    return str(n.network_address) if n.prefixlen == 32 else str(n)


def _named_port(ports: Iterable[ContainerPort], name: str, protocol: str) -> int | None:
    for cp in ports:
        if cp.name == name and cp.protocol.upper() == protocol:
            return cp.port
    return None


def _merge_ranges(ranges: Iterable[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    """Overlapping or adjacent port ranges merged per protocol (nft rejects overlapping intervals)."""
    merged: list[tuple[str, int, int]] = []
    for proto, lo, hi in sorted(ranges):
        if merged and merged[-1][0] == proto and lo <= merged[-1][2] + 1:
            merged[-1] = (proto, merged[-1][1], max(hi, merged[-1][2]))
        else:
            merged.append((proto, lo, hi))
    return merged


def _port_matches(ports: tuple[NetworkPolicyPort, ...], target_ports: list[ContainerPort] | None) -> list[str] | None:
    """nft match expressions, OR'ed, for a rule's numeric ports (and, for ingress, named ports
    resolved on the selected pod). None = every port; [] = nothing can match."""
    if not ports:
        return None
    whole: set[str] = set()
    ranges: set[tuple[str, int, int]] = set()
    for p in ports:
        proto = _NFT_PROTO[p.protocol]
        if p.port is None:
            whole.add(proto)
        elif isinstance(p.port, int):
            ranges.add((proto, p.port, p.end_port or p.port))
        elif target_ports is not None:
            number = _named_port(target_ports, p.port, p.protocol)
            if number is not None:
                ranges.add((proto, number, number))
    ranges = _merge_ranges(r for r in ranges if r[0] not in whole)
    out = []
    if whole:
        out.append("meta l4proto " + (next(iter(whole)) if len(whole) == 1 else "{ " + ", ".join(sorted(whole)) + " }"))
    if ranges:
        elems = [f"{proto} . {lo}" + (f"-{hi}" if hi != lo else "") for proto, lo, hi in ranges]
        out.append("meta l4proto . th dport { " + ", ".join(elems) + " }")
    return out


@dataclass
class _CompiledRule:
    """A policy rule's sets, plus what is needed to emit its nft rules for one selected pod."""

    policy: NetworkPolicy
    direction: str
    index: int
    rule: NetworkPolicyRule
    pods_set: str | None
    cidrs_set: str | None
    named_set: str | None

    @property
    def label(self) -> str:
        return f"{self.policy.key} {self.direction.lower()}[{self.index}]"

    def nft_rules(self, pod: Pod) -> list[Rule]:
        ingress = self.direction == INGRESS
        addr = "ip saddr" if ingress else "ip daddr"
        verdict = "accept" if ingress else "return"
        peer_matches: list[tuple[str, ...]] = []
        if not self.rule.peers:
            peer_matches.append(())
        if self.pods_set:
            peer_matches.append((f"{addr} @{self.pods_set}",))
        if self.cidrs_set:
            peer_matches.append((f"{addr} @{self.cidrs_set}",))
        ports = _port_matches(self.rule.ports, pod.ports if ingress else None)
        port_matches: list[tuple[str, ...]] = [()] if ports is None else [(m,) for m in ports]
        out = [Rule(pm + po, verdict, self.label) for pm in peer_matches for po in port_matches]
        if self.named_set:
            out.append(Rule((f"ip daddr . meta l4proto . th dport @{self.named_set}",), verdict, self.label))
        return out


def rule_stem(policy: NetworkPolicy, direction: str, index: int) -> str:
    """Name prefix of one policy rule's sets: the policy, the rule's place and a digest of the
    rule itself. An edited rule gets sets of new names. With one name for both, the kernel
    could judge a packet by the old rule and the new elements: a rule's rules are fixed for
    one traversal, but each set lookup reads the generation at the time of the lookup, so a
    packet crossing a commit saw e.g. the old `ip saddr @S accept` (any port) with S's new
    members, meant for `ip saddr @S tcp dport 80 accept` (seen: 1 probe in ~5,000 let through
    in tests/faults/test_policy_burst.py's long form). Renamed sets keep old with old."""
    rule = (policy.ingress if direction == INGRESS else policy.egress)[index]
    digest = hashlib.sha1(repr(rule).encode()).hexdigest()[:6]
    return f"{policy_id(policy)}_{'i' if direction == INGRESS else 'e'}{index}_{digest}"


def rule_label(policy: NetworkPolicy, direction: str, index: int) -> str:
    return f"{policy.key} {direction.lower()}[{index}]"


def _compile_rule(cluster: _Cluster, policy: NetworkPolicy, direction: str, index: int,
                  rule: NetworkPolicyRule, sets: dict[str, NftSet]) -> _CompiledRule:
    peers = _resolve_peers(cluster, policy, rule)
    stem, label = rule_stem(policy, direction, index), rule_label(policy, direction, index)
    pods_set = cidrs_set = named_set = None
    if peers.has_pod_peers:
        pods_set = f"{stem}_pods"
        sets[pods_set] = NftSet(pods_set, "ipv4_addr", False, frozenset(peers.pod_ips), f"{label} pods")
    if peers.networks:
        cidrs_set = f"{stem}_cidrs"
        sets[cidrs_set] = NftSet(cidrs_set, "ipv4_addr", True,
                                 frozenset(_net_element(n) for n in peers.networks), f"{label} ipBlocks")
    named = [p for p in rule.ports if isinstance(p.port, str)]
    if direction == EGRESS and named:
        # Named ports resolve on the destination: every peer pod that declares that port.
        elems = set()
        candidates = cluster.pods if peers.any or peers.networks else \
            [p for p in cluster.pods if p.ip in peers.pod_ips]
        for dst in candidates:
            if not peers.covers(dst.ip, cluster.addr[dst.ip]):
                continue
            for p in named:
                number = _named_port(dst.ports, p.port, p.protocol)  # type: ignore[arg-type]
                if number is not None:
                    elems.add(f"{dst.ip} . {_NFT_PROTO[p.protocol]} . {number}")
        named_set = f"{stem}_named"
        sets[named_set] = NftSet(named_set, "ipv4_addr . inet_proto . inet_service", False,
                                 frozenset(elems), f"{label} named ports")
    return _CompiledRule(policy, direction, index, rule, pods_set, cidrs_set, named_set)


def base_chains() -> dict[str, Chain]:
    antispoof = Rule((f"iifname @{LOCAL_IFACES}", f"iifname . ip saddr != @{POD_IF_ADDR}"), "drop",
                     "anti-spoofing: a pod sends only from its own address")
    forward = Chain("forward", (
        antispoof,
        Rule((f"iifname @{LOCAL_IFACES}", "meta nfproto ipv6"), "drop", "pods are IPv4 only"),
        Rule(("ct state established,related",), "accept"),
        Rule(("ct state invalid",), "drop"),
        Rule((f"iifname vmap @{EGRESS_MAP}",), "", "egress policy of the sending pod"),
        Rule((f"oifname vmap @{INGRESS_MAP}",), "", "ingress policy of the receiving pod"),
    ), hook="forward")
    inp = Chain("input", (antispoof,), hook="input")
    return {"forward": forward, "input": inp}


def local_sets(local: Iterable[Pod], node_ips: Iterable[str]) -> dict[str, NftSet]:
    """The sets that depend on this node's pods and addresses only (not on policies)."""
    local = list(local)
    node_v4 = {ip for ip in node_ips if ipaddress.ip_address(ip).version == 4}
    return {
        LOCAL_IFACES: NftSet(LOCAL_IFACES, "ifname", False,
                             frozenset(quote(p.interface) for p in local), "host side of local pods"),  # type: ignore[arg-type]
        POD_IF_ADDR: NftSet(POD_IF_ADDR, "ifname . ipv4_addr", False,
                            frozenset(f"{quote(p.interface)} . {p.ip}" for p in local),  # type: ignore[arg-type]
                            "the one source address each local pod may use"),
        NODE_IPS: NftSet(NODE_IPS, "ipv4_addr", False, frozenset(node_v4), "this node's addresses"),
    }


def build_pod_chain(pod: Pod, direction: str,
                    selecting: list[tuple[NetworkPolicy, list[_CompiledRule]]]) -> Chain:
    """A local pod's chain for one direction, from the policies selecting it (sorted by key)."""
    assert pod.interface
    name = pod_chain(direction, pod.interface)
    if direction == INGRESS:
        rules = [Rule((f"ip saddr @{NODE_IPS}",), "accept", "from this node")]
    else:
        rules = [Rule((f"ip daddr @{NODE_IPS}",), "return", "to this node")]
    for _pol, crs in selecting:
        for cr in crs:
            rules.extend(cr.nft_rules(pod))
    selected_by = ", ".join(pol.key for pol, _ in selecting)
    rules.append(Rule((), "drop", f"{pod.namespace}/{pod.name}: default deny ({selected_by})"))
    return Chain(name, tuple(rules))


def compile_ruleset(policies: Iterable[NetworkPolicy], pods: Iterable[Pod], namespaces: Iterable[Namespace],
                    node_ips: Iterable[str]) -> Ruleset:
    """The whole table for this node: per-pod chains for pods with an `interface`, every pod as a peer.

    This full compile is the resync and the oracle of policy.incremental (which must give the
    same Ruleset after any sequence of events)."""
    cluster = _Cluster(pods, namespaces)
    policies = sorted(policies, key=lambda p: p.key)
    local = sorted((p for p in cluster.pods if p.interface), key=lambda p: p.interface or "")
    sets = local_sets(local, node_ips)

    compiled: dict[str, list[tuple[NetworkPolicy, list[_CompiledRule]]]] = {INGRESS: [], EGRESS: []}
    for pol in policies:
        for direction, rules in ((INGRESS, pol.ingress), (EGRESS, pol.egress)):
            if direction not in pol.policy_types:
                continue
            crs = [_compile_rule(cluster, pol, direction, i, r, sets) for i, r in enumerate(rules)]
            compiled[direction].append((pol, crs))

    chains: dict[str, Chain] = {}
    dispatch: dict[str, dict[str, str]] = {INGRESS: {}, EGRESS: {}}
    for pod in local:
        assert pod.interface
        for direction in (INGRESS, EGRESS):
            selecting = [(pol, crs) for pol, crs in compiled[direction]
                         if pol.namespace == pod.namespace and selector_matches(pol.pod_selector, pod.labels)]
            if not selecting:
                continue
            chain = build_pod_chain(pod, direction, selecting)
            chains[chain.name] = chain
            dispatch[direction][pod.interface] = chain.name
    chains.update(base_chains())
    maps = {m: VerdictMap(m, "ifname", tuple(sorted(dispatch[d].items())))
            for m, d in ((INGRESS_MAP, INGRESS), (EGRESS_MAP, EGRESS))}
    return Ruleset(sets=sets, maps=maps, chains=chains)
