"""NAT outgoing (Calico's `natOutgoing`): which traffic leaves the node masqueraded (pure).

Felix's rule: a packet from a pod of a natOutgoing pool to a destination outside every pool
is masqueraded to the address of the interface it leaves by. We also leave the cluster's node
subnets alone, so pods keep their own address towards nodes (health checks, host services).
Pod-to-pod traffic is never NATed, whatever the pools say: every pool's CIDR is in the
"all pools" set, disabled pools included (their pods still exist).

The state is three interval sets and one fixed base chain in our own table, so that a pool
coming, going or flipping its flag changes set elements only: the applier's incremental
transaction, never a new table shape. A disabled pool still masquerades when its flag says so:
disabling stops new assignments, and its existing pods must keep reaching the outside.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from .ruleset import Chain, NftSet, Rule, Ruleset

MASQ_POOLS = "nat_masq_pools"
ALL_POOLS = "nat_all_pools"
NODE_SUBNETS = "nat_node_subnets"
NAT_CHAIN = "nat_outgoing"


@dataclass(frozen=True)
class NatPool:
    """What NAT needs to know of a pool."""

    name: str
    cidr: str
    nat_outgoing: bool = False


@dataclass(frozen=True)
class NatState:
    """The desired NAT outgoing state of a node; the same on every node of a cluster."""

    masquerading: tuple[NatPool, ...]  # the pools whose pods leave as the node, by name
    masq_cidrs: tuple[str, ...]       # their CIDRs, collapsed (interval set elements)
    pool_cidrs: tuple[str, ...]       # every pool's CIDR, collapsed
    node_subnets: tuple[str, ...]     # every node's subnet, collapsed

    def masquerades(self, src: str, dst: str) -> bool:
        """What the rule does to a packet src -> dst (for explanations and tests)."""
        def within(ip: str, cidrs: tuple[str, ...]) -> bool:
            addr = ipaddress.ip_address(ip)
            return any(addr in ipaddress.ip_network(c) for c in cidrs)
        return (within(src, self.masq_cidrs) and not within(dst, self.pool_cidrs)
                and not within(dst, self.node_subnets))

    def summary(self) -> dict:
        """For the node's published status (`calico-lite node status`)."""
        return {"masquerade": [{"pool": p.name, "cidr": p.cidr} for p in self.masquerading],
                "pools": list(self.pool_cidrs), "nodeSubnets": list(self.node_subnets)}


def _collapse(cidrs: Iterable[str]) -> tuple[str, ...]:
    """IPv4 networks merged so that no two overlap (an interval set refuses overlaps); a
    nested or repeated CIDR (several nodes on one subnet) becomes one element."""
    nets = set()
    for c in cidrs:
        try:
            net = ipaddress.ip_network(c, strict=False)
        except ValueError:
            continue  # a malformed record must not stop NAT for everything else
        if net.version == 4:
            nets.add(net)
    return tuple(str(n) for n in ipaddress.collapse_addresses(nets))


def nat_state(pools: Iterable[NatPool], node_subnets: Iterable[str]) -> NatState:
    """The desired state from plain data: the pools with their flag, the nodes' subnets."""
    pools = sorted(pools, key=lambda p: p.name)
    masq = tuple(p for p in pools if p.nat_outgoing)
    return NatState(masq, _collapse(p.cidr for p in masq), _collapse(p.cidr for p in pools),
                    _collapse(node_subnets))


def nat_sets(state: NatState) -> dict[str, NftSet]:
    def interval(name: str, cidrs: tuple[str, ...], comment: str) -> NftSet:
        return NftSet(name, "ipv4_addr", True, frozenset(cidrs), comment)
    return {MASQ_POOLS: interval(MASQ_POOLS, state.masq_cidrs, "pools with natOutgoing"),
            ALL_POOLS: interval(ALL_POOLS, state.pool_cidrs, "every pool: pod to pod is never NATed"),
            NODE_SUBNETS: interval(NODE_SUBNETS, state.node_subnets, "node subnets: never NATed")}


def nat_chain() -> Chain:
    """The one rule, whatever the pools: only the sets' elements change."""
    masq = Rule((f"ip saddr @{MASQ_POOLS}", f"ip daddr != @{ALL_POOLS}",
                 f"ip daddr != @{NODE_SUBNETS}"), "masquerade",
                "natOutgoing: pods of these pools leave as the node")
    return Chain(NAT_CHAIN, (masq,), hook="postrouting", priority="srcnat", type="nat")


def with_nat(ruleset: Ruleset, sets: dict[str, NftSet], chain: Chain) -> Ruleset:
    """The table with the NAT parts added; `ruleset` itself is left as it was (the policy
    calculation keeps handing out its own dicts)."""
    return Ruleset({**ruleset.sets, **sets}, ruleset.maps, {**ruleset.chains, chain.name: chain},
                   ruleset.family, ruleset.table)
