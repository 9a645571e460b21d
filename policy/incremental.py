"""Incremental policy compilation (pure): one event in, only the touched sets and chains redone.

Felix-style calculation. `IncrementalRuleset` keeps the inputs (pods, namespaces, policies) and
an index per compiled policy rule: which pods match its pod peers (reference-counted by address,
since a set element is an address), and what each pod adds to its egress named-port set. A pod
event re-evaluates that one pod against every rule and rebuilds only the sets whose elements
changed and the pod's own chains; a namespace relabel re-evaluates only the rules whose namespace
selectors change verdict for it, on that namespace's pods; a policy event builds or drops that
policy's sets and refills the chains of the local pods it selects (or selected).

`ruleset()` returns a Ruleset value. Parts untouched by an event are the very same objects as in
the previous one, so the applier's diff (and the nft transaction) covers only what changed.
`policy.compiler.compile_ruleset` stays the full compile: the resync and this module's oracle
(tests prove both give equal Rulesets after random event sequences).
Assumes what the CNI guarantees: a host interface belongs to one pod at a time.
"""
from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

from .compiler import (
    _NFT_PROTO, EGRESS_MAP, INGRESS_MAP, LOCAL_IFACES, POD_IF_ADDR, _CompiledRule, _named_port, _net_element,
    base_chains, build_pod_chain, ipblock_networks, local_sets, pod_chain, rule_label, rule_stem,
)
from .model import EGRESS, INGRESS, Namespace, NetworkPolicy, NetworkPolicyPeer, Pod
from .ruleset import Chain, NftSet, Ruleset, VerdictMap, quote
from .label_selector import selector_matches

PodKey = Hashable


def _count(counter: Counter, element: str, delta: int) -> bool:
    """Add delta to a reference count; True when the element appeared or disappeared."""
    before = counter[element]
    after = before + delta
    if after:
        counter[element] = after
    else:
        del counter[element]
    return (before == 0) != (after == 0)


@dataclass
class _RuleIndex:
    """One compiled policy rule with its peer-set contents kept current pod by pod."""

    policy: NetworkPolicy
    compiled: _CompiledRule
    pod_peers: tuple[NetworkPolicyPeer, ...]
    networks: list[ipaddress.IPv4Network]
    named: tuple  # egress named ports (NetworkPolicyPort), non-empty iff there is a named set
    members: set = field(default_factory=set)  # pod keys matching a pod peer
    ips: Counter = field(default_factory=Counter)  # address -> matching pods with it
    named_elems: Counter = field(default_factory=Counter)
    named_of: dict = field(default_factory=dict)  # pod key -> its elements in the named set

    def covers(self, ip: str, addr: int) -> bool:
        """Same verdict as the full compile's _Peers.covers."""
        if not self.compiled.rule.peers or ip in self.ips:
            return True
        return any(int(n.network_address) <= addr <= int(n.broadcast_address) for n in self.networks)


class IncrementalRuleset:
    """The node's Ruleset, updated event by event (see module docstring)."""

    def __init__(self, node_ips: Iterable[str]):
        self.pods: dict[PodKey, Pod] = {}
        self.addr: dict[PodKey, int] = {}
        self.by_ip: dict[str, set[PodKey]] = {}
        self.by_ns: dict[str, set[PodKey]] = {}
        self.local_by_ns: dict[str, set[PodKey]] = {}
        self.ns_labels: dict[str, dict[str, str]] = {}
        self.policies: dict[str, NetworkPolicy] = {}
        self.rules: dict[str, list[_RuleIndex]] = {}  # policy key -> its rules, both directions
        self.policies_in_ns: dict[str, set[str]] = {}
        self.set_owner: dict[str, _RuleIndex] = {}  # pod and named-port set -> its rule
        self.sets: dict[str, NftSet] = local_sets((), node_ips)
        self.local_counts = {LOCAL_IFACES: Counter(), POD_IF_ADDR: Counter()}
        self.chains: dict[str, Chain] = base_chains()
        self.dispatch: dict[str, dict[str, str]] = {INGRESS: {}, EGRESS: {}}
        self._dirty_sets: set[str] = set()
        self._dirty_maps = True
        self._maps: dict[str, VerdictMap] = {}

    # ------------------------------------------------------------ events

    def set_pod(self, key: PodKey, pod: Pod) -> None:
        """A pod added or changed (labels, ports, address, interface)."""
        if self.pods.get(key) == pod:
            return
        self.remove_pod(key)
        try:
            addr = int(ipaddress.IPv4Address(pod.ip))
        except ValueError:
            return  # no (valid) address yet: neither a peer nor enforced, as in the full compile
        self.pods[key], self.addr[key] = pod, addr
        self.by_ip.setdefault(pod.ip, set()).add(key)
        self.by_ns.setdefault(pod.namespace, set()).add(key)
        for rules in self.rules.values():
            for r in rules:
                self._evaluate(r, key)
        if pod.interface:
            self.local_by_ns.setdefault(pod.namespace, set()).add(key)
            self._count_local(pod, 1)
            self._refresh_chains(key)

    def remove_pod(self, key: PodKey) -> None:
        pod = self.pods.get(key)
        if pod is None:
            return
        for rules in self.rules.values():
            for r in rules:
                self._set_member(r, key, False)
                self._set_named(r, key, ())
        if pod.interface:
            self._drop_chains(pod)
            self._count_local(pod, -1)
            self.local_by_ns[pod.namespace].discard(key)
        del self.pods[key], self.addr[key]
        self.by_ip[pod.ip].discard(key)
        self.by_ns[pod.namespace].discard(key)

    def set_namespace(self, namespace: Namespace) -> None:
        """A namespace added or relabelled: only namespace-selector verdicts can change."""
        labels = Namespace(namespace.name, dict(namespace.labels)).labels
        old = self._labels_of(namespace.name)
        self.ns_labels[namespace.name] = labels
        if old != labels:
            self._namespace_relabelled(namespace.name, old, labels)

    def remove_namespace(self, name: str) -> None:
        old = self._labels_of(name)
        self.ns_labels.pop(name, None)
        new = self._labels_of(name)
        if old != new:
            self._namespace_relabelled(name, old, new)

    def set_policy(self, policy: NetworkPolicy) -> None:
        if self.policies.get(policy.key) == policy:
            return
        self.remove_policy(policy.key)
        self.policies[policy.key] = policy
        self.policies_in_ns.setdefault(policy.namespace, set()).add(policy.key)
        self.rules[policy.key] = rules = self._index_policy(policy)
        for r in rules:
            for key in self.pods:
                self._evaluate(r, key)
        self._refresh_selected(policy)

    def remove_policy(self, key: str) -> None:
        policy = self.policies.pop(key, None)
        if policy is None:
            return
        self.policies_in_ns[policy.namespace].discard(key)
        for r in self.rules.pop(key):
            for name in (r.compiled.pods_set, r.compiled.cidrs_set, r.compiled.named_set):
                if name:
                    self.sets.pop(name, None)
                    self.set_owner.pop(name, None)
                    self._dirty_sets.discard(name)
        self._refresh_selected(policy)

    # ------------------------------------------------------------ the current value

    def ruleset(self) -> Ruleset:
        """The Ruleset now; untouched sets, chains and maps are the previous objects."""
        for name in self._dirty_sets:
            self.sets[name] = self._rebuilt_set(name)
        self._dirty_sets.clear()
        if self._dirty_maps:
            self._maps = {m: VerdictMap(m, "ifname", tuple(sorted(self.dispatch[d].items())))
                          for m, d in ((INGRESS_MAP, INGRESS), (EGRESS_MAP, EGRESS))}
            self._dirty_maps = False
        return Ruleset(sets=dict(self.sets), maps=dict(self._maps), chains=dict(self.chains))

    # ------------------------------------------------------------ peer sets

    def _labels_of(self, namespace: str) -> dict[str, str]:
        labels = self.ns_labels.get(namespace)
        return labels if labels is not None else Namespace(namespace).labels

    def _peer_matches(self, r: _RuleIndex, pod: Pod) -> bool:
        for peer in r.pod_peers:
            if peer.namespace_selector is None:
                if pod.namespace != r.policy.namespace:
                    continue
            elif not selector_matches(peer.namespace_selector, self._labels_of(pod.namespace)):
                continue
            if peer.pod_selector is None or selector_matches(peer.pod_selector, pod.labels):
                return True
        return False

    def _evaluate(self, r: _RuleIndex, key: PodKey) -> None:
        """Bring one pod's membership and named-port elements in one rule up to date."""
        if r.pod_peers:
            self._set_member(r, key, self._peer_matches(r, self.pods[key]))
        if r.named:
            self._refresh_named(r, key)

    def _set_member(self, r: _RuleIndex, key: PodKey, member: bool) -> None:
        if member == (key in r.members):
            return
        ip = self.pods[key].ip
        if member:
            r.members.add(key)
        else:
            r.members.discard(key)
        if _count(r.ips, ip, 1 if member else -1):
            self._dirty_sets.add(r.compiled.pods_set)  # type: ignore[arg-type]
            if r.named:  # every pod with this address may now be covered or not
                for other in self.by_ip.get(ip, ()):
                    if other in self.pods:
                        self._refresh_named(r, other)

    def _refresh_named(self, r: _RuleIndex, key: PodKey) -> None:
        pod = self.pods[key]
        elems: tuple[str, ...] = ()
        if r.covers(pod.ip, self.addr[key]):
            found = {(p.protocol, _named_port(pod.ports, p.port, p.protocol)) for p in r.named}
            elems = tuple(sorted(f"{pod.ip} . {_NFT_PROTO[proto]} . {n}" for proto, n in found if n is not None))
        self._set_named(r, key, elems)

    def _set_named(self, r: _RuleIndex, key: PodKey, elems: tuple[str, ...]) -> None:
        old = r.named_of.get(key, ())
        if old == elems:
            return
        changed = False
        for e in old:
            changed |= _count(r.named_elems, e, -1)
        for e in elems:
            changed |= _count(r.named_elems, e, 1)
        if elems:
            r.named_of[key] = elems
        else:
            r.named_of.pop(key, None)
        if changed:
            self._dirty_sets.add(r.compiled.named_set)  # type: ignore[arg-type]

    def _namespace_relabelled(self, name: str, old: dict, new: dict) -> None:
        pods = [k for k in self.by_ns.get(name, ()) if k in self.pods]
        for rules in self.rules.values():
            for r in rules:
                if any(p.namespace_selector is not None and
                       selector_matches(p.namespace_selector, old) != selector_matches(p.namespace_selector, new)
                       for p in r.pod_peers):
                    for key in pods:
                        self._evaluate(r, key)

    def _index_policy(self, policy: NetworkPolicy) -> list[_RuleIndex]:
        """The policy's rules with their (empty) peer sets; ipBlock sets are complete already."""
        out = []
        for direction, rules in ((INGRESS, policy.ingress), (EGRESS, policy.egress)):
            if direction not in policy.policy_types:
                continue
            for i, rule in enumerate(rules):
                stem, label = rule_stem(policy, direction, i), rule_label(policy, direction, i)
                pod_peers = tuple(p for p in rule.peers if p.ip_block is None)
                networks = ipblock_networks(p for p in rule.peers if p.ip_block is not None)
                named = tuple(p for p in rule.ports if isinstance(p.port, str)) if direction == EGRESS else ()
                names = {"pods": pod_peers and f"{stem}_pods", "cidrs": networks and f"{stem}_cidrs",
                         "named": named and f"{stem}_named"}
                if names["pods"]:
                    self.sets[names["pods"]] = NftSet(names["pods"], "ipv4_addr", False, frozenset(), f"{label} pods")
                if names["cidrs"]:
                    self.sets[names["cidrs"]] = NftSet(names["cidrs"], "ipv4_addr", True, frozenset(
                        _net_element(n) for n in networks), f"{label} ipBlocks")
                if names["named"]:
                    self.sets[names["named"]] = NftSet(names["named"], "ipv4_addr . inet_proto . inet_service",
                                                       False, frozenset(), f"{label} named ports")
                compiled = _CompiledRule(policy, direction, i, rule, names["pods"] or None,
                                         names["cidrs"] or None, names["named"] or None)
                r = _RuleIndex(policy, compiled, pod_peers, networks, named)
                for name in (compiled.pods_set, compiled.named_set):
                    if name:
                        self.set_owner[name] = r
                out.append(r)
        return out

    def _rebuilt_set(self, name: str) -> NftSet:
        old = self.sets[name]
        if name in self.local_counts:
            return NftSet(name, old.type, old.interval, frozenset(self.local_counts[name]), old.comment)
        r = self.set_owner[name]
        counts = r.ips if name == r.compiled.pods_set else r.named_elems
        return NftSet(name, old.type, old.interval, frozenset(counts), old.comment)

    # ------------------------------------------------------------ local pods: chains, dispatch

    def _count_local(self, pod: Pod, delta: int) -> None:
        assert pod.interface
        for name, elem in ((LOCAL_IFACES, quote(pod.interface)),
                           (POD_IF_ADDR, f"{quote(pod.interface)} . {pod.ip}")):
            if _count(self.local_counts[name], elem, delta):
                self._dirty_sets.add(name)

    def _selecting(self, pod: Pod, direction: str) -> list[tuple[NetworkPolicy, list[_CompiledRule]]]:
        out = []
        for key in sorted(self.policies_in_ns.get(pod.namespace, ())):
            pol = self.policies[key]
            if direction in pol.policy_types and selector_matches(pol.pod_selector, pod.labels):
                out.append((pol, [r.compiled for r in self.rules[key] if r.compiled.direction == direction]))
        return out

    def _refresh_chains(self, key: PodKey) -> None:
        pod = self.pods[key]
        assert pod.interface
        for direction in (INGRESS, EGRESS):
            selecting = self._selecting(pod, direction)
            name = pod_chain(direction, pod.interface)
            if selecting:
                chain = build_pod_chain(pod, direction, selecting)
                if self.chains.get(name) != chain:
                    self.chains[name] = chain
                if self.dispatch[direction].get(pod.interface) != name:
                    self.dispatch[direction][pod.interface] = name
                    self._dirty_maps = True
            else:
                self.chains.pop(name, None)
                if self.dispatch[direction].pop(pod.interface, None) is not None:
                    self._dirty_maps = True

    def _drop_chains(self, pod: Pod) -> None:
        assert pod.interface
        for direction in (INGRESS, EGRESS):
            self.chains.pop(pod_chain(direction, pod.interface), None)
            if self.dispatch[direction].pop(pod.interface, None) is not None:
                self._dirty_maps = True

    def _refresh_selected(self, policy: NetworkPolicy) -> None:
        """Chains of the local pods in the policy's namespace that it selects (or selected)."""
        for key in list(self.local_by_ns.get(policy.namespace, ())):
            if selector_matches(policy.pod_selector, self.pods[key].labels):
                self._refresh_chains(key)
