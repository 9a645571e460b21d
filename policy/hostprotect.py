"""Host endpoint protection and pod anti-spoofing: what pods may send to their own node (pure).

Felix's model: traffic from a workload to its own host goes through `DefaultEndpointToHostAction`
(Drop by default) after a short allow list (DHCP, DNS); replies to what the node itself opened
(kubelet probes, the node's own connections to pods) are established and always pass. Here the
allow list is configurable per node, in Felix's failsafe-port syntax (`tcp:53`, `udp:8000-8100`).

The parts are fixed base chains plus one regular chain and sets, so a change of the allow list,
of the action, or of the local pods changes set elements and refills one chain: the applier's
incremental transaction, never a new table shape:
- `host_guard_pre` (prerouting, priority raw): a pod sends only from its own MAC, and sends no
  router advertisements or redirects (ICMPv6 RA/redirect, ICMP redirect);
- `host_guard_in` (input): traffic from a pod interface to this node goes to `workload_to_host`:
  established/related accepted, the allow list accepted, everything else counted and dropped
  (or accepted, when the node's action is `accept`: protection off).
The source-address check (a pod sends only from its own IP) is the compiler's (`pod_if_addr`).
ARP is not IP: the inet table never sees it, so `arp_ruleset` is a small `arp calico-lite`
table of our own that drops ARP from a pod whose sender IP or MAC is not the pod's.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .compiler import LOCAL_IFACES, POD_IF_ADDR
from .ruleset import Chain, NftSet, Rule, Ruleset, quote

ALLOW_SET = "wl_host_allow"
POD_IF_MAC = "pod_if_mac"
MAC_IFACES = "mac_checked_ifaces"
TO_HOST_CHAIN = "workload_to_host"
ACTIONS = ("drop", "accept")
PROTOCOLS = ("tcp", "udp", "sctp")


class HostProtectionError(ValueError):
    """A setting that cannot be read (the message names the bad item)."""


@dataclass(frozen=True, order=True)
class PortRange:
    """One allow-list entry: protocol and a port or an inclusive range of ports."""

    proto: str
    first: int
    last: int

    def __str__(self) -> str:
        return f"{self.proto}:{self.first}" + (f"-{self.last}" if self.last != self.first else "")

    def element(self) -> str:
        return f"{self.proto} . {self.first}" + (f"-{self.last}" if self.last != self.first else "")


def parse_port(item: str) -> PortRange:
    """`tcp:53`, `udp:8000-8100` (Felix's failsafe syntax, without a CIDR)."""
    proto, sep, ports = item.strip().lower().partition(":")
    if not sep or proto not in PROTOCOLS:
        raise HostProtectionError(f"{item!r}: expected PROTOCOL:PORT[-PORT] with a protocol of "
                                  f"{', '.join(PROTOCOLS)}")
    lo, _, hi = ports.partition("-")
    try:
        first, last = int(lo), int(hi or lo)
    except ValueError:
        raise HostProtectionError(f"{item!r}: the port is not a number") from None
    if not 1 <= first <= last <= 65535:
        raise HostProtectionError(f"{item!r}: ports must be 1-65535, the first not above the last")
    return PortRange(proto, first, last)


def merge_ports(ports: Iterable[PortRange]) -> tuple[PortRange, ...]:
    """Sorted, overlapping or adjacent ranges of one protocol merged (an interval set refuses
    overlapping elements, and `tcp:53,tcp:50-60` is one range to an operator)."""
    out: list[PortRange] = []
    for p in sorted(set(ports)):
        if out and out[-1].proto == p.proto and p.first <= out[-1].last + 1:
            out[-1] = PortRange(p.proto, out[-1].first, max(out[-1].last, p.last))
        else:
            out.append(p)
    return tuple(out)


def parse_allow(items: str | Iterable[str]) -> tuple[PortRange, ...]:
    """A comma-separated string or a list of entries; '' or [] is an empty allow list."""
    if isinstance(items, str):
        items = [i for i in items.split(",") if i.strip()]
    return merge_ports(parse_port(i) for i in items)


DEFAULT_ALLOW = parse_allow("udp:53,tcp:53,udp:67")   # Felix: DNS and DHCP are always allowed


@dataclass(frozen=True)
class HostProtection:
    """One node's setting (Felix's DefaultEndpointToHostAction plus the allow list)."""

    action: str = "drop"
    allow: tuple[PortRange, ...] = DEFAULT_ALLOW

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise HostProtectionError(f"action {self.action!r}: expected one of {', '.join(ACTIONS)}")

    def summary(self) -> dict:
        """For the node's published status (`calico-lite node status`)."""
        return {"action": self.action, "allow": [str(p) for p in self.allow],
                "default": self == HostProtection()}

    def admits(self, proto: str, port: int, established: bool = False) -> bool:
        """What the rules do to a new packet from a pod to this node (tests, explanations)."""
        return (established or self.action == "accept"
                or any(p.proto == proto and p.first <= port <= p.last for p in self.allow))


def protection_from(record: dict | None) -> HostProtection:
    """A node-config record (`workloadToHostAction`, `workloadToHostAllow`) -> the setting;
    a field left out means the default. Raises HostProtectionError on a bad record."""
    record = record or {}
    if not isinstance(record, dict):
        raise HostProtectionError(f"node config must be an object, not {record!r}"[:200])
    action = str(record.get("workloadToHostAction", "drop")).lower()
    allow = record.get("workloadToHostAllow")
    if allow is not None and not isinstance(allow, (list, str)):
        raise HostProtectionError(f"workloadToHostAllow must be a list, not {allow!r}"[:200])
    return HostProtection(action, DEFAULT_ALLOW if allow is None else parse_allow(allow))


@dataclass(frozen=True)
class LocalEndpoint:
    """A local pod's host interface, address and MAC ('' when its record predates MACs)."""

    interface: str
    ip: str
    mac: str = ""


def _mac_sets(endpoints: list[LocalEndpoint]) -> dict[str, NftSet]:
    known = [e for e in endpoints if e.mac]
    return {
        POD_IF_MAC: NftSet(POD_IF_MAC, "ifname . ether_addr", False,
                           frozenset(f"{quote(e.interface)} . {e.mac.lower()}" for e in known),
                           "the one source MAC each local pod may use"),
        MAC_IFACES: NftSet(MAC_IFACES, "ifname", False, frozenset(quote(e.interface) for e in known),
                           "local pods whose MAC is known"),
    }


def host_sets(protection: HostProtection, endpoints: Iterable[LocalEndpoint]) -> dict[str, NftSet]:
    """The sets of the inet table: the allow list and the pods' MACs."""
    allow = NftSet(ALLOW_SET, "inet_proto . inet_service", True,
                   frozenset(p.element() for p in protection.allow), "pods may open these on this node")
    return {ALLOW_SET: allow, **_mac_sets(sorted(set(endpoints), key=lambda e: e.interface))}


def to_host_chain(protection: HostProtection) -> Chain:
    """The regular chain that judges new traffic from a pod to this node."""
    last = (Rule(("counter",), "accept", "workload-to-host action accept: protection off")
            if protection.action == "accept" else
            Rule(("counter",), "drop", "workload-to-host action drop: not in the allow list"))
    return Chain(TO_HOST_CHAIN, (
        Rule(("ct state established,related",), "accept", "replies to the node's own traffic"),
        Rule((f"meta l4proto . th dport @{ALLOW_SET}",), "accept", "the node's allow list"),
        last))


def host_base_chains() -> dict[str, Chain]:
    """The two fixed base chains (they never change with the setting or the pods)."""
    pre = Chain("host_guard_pre", (
        Rule((f"iifname @{MAC_IFACES}", f"iifname . ether saddr != @{POD_IF_MAC}", "counter"), "drop",
             "anti-spoofing: a pod sends only from its own MAC"),
        Rule((f"iifname @{LOCAL_IFACES}", "icmpv6 type { nd-router-advert, nd-redirect }", "counter"),
             "drop", "pods send no router advertisements or redirects"),
        Rule((f"iifname @{LOCAL_IFACES}", "icmp type redirect", "counter"), "drop",
             "pods send no redirects"),
    ), hook="prerouting", priority="raw")
    inp = Chain("host_guard_in", (
        Rule((f"iifname @{LOCAL_IFACES}",), f"jump {TO_HOST_CHAIN}", "pod to this node"),
    ), hook="input")
    return {pre.name: pre, inp.name: inp}


def with_host_protection(ruleset: Ruleset, sets: dict[str, NftSet], chain: Chain) -> Ruleset:
    """The table with host protection added; `ruleset` itself is left as it was. The rules
    name the compiler's `local_pod_ifaces` set, so `ruleset` must be a compiled policy table."""
    assert LOCAL_IFACES in ruleset.sets, "host protection goes into a compiled policy table"
    return Ruleset({**ruleset.sets, **sets}, ruleset.maps,
                   {**ruleset.chains, chain.name: chain, **host_base_chains()},
                   ruleset.family, ruleset.table)


def arp_ruleset(endpoints: Iterable[LocalEndpoint], table: str = "calico-lite") -> Ruleset:
    """The `arp calico-lite` table: a pod answers and asks only as itself (its IP, its MAC),
    so it cannot take over another pod's or the node's address in the node's neighbour table."""
    endpoints = sorted(set(endpoints), key=lambda e: e.interface)
    sets = {
        LOCAL_IFACES: NftSet(LOCAL_IFACES, "ifname", False,
                             frozenset(quote(e.interface) for e in endpoints), "host side of local pods"),
        POD_IF_ADDR: NftSet(POD_IF_ADDR, "ifname . ipv4_addr", False,
                            frozenset(f"{quote(e.interface)} . {e.ip}" for e in endpoints),
                            "the one address each local pod may claim"),
        **_mac_sets(endpoints),
    }
    chain = Chain("input", (
        Rule((f"iifname @{LOCAL_IFACES}", f"iifname . arp saddr ip != @{POD_IF_ADDR}", "counter"),
             "drop", "ARP anti-spoofing: a pod speaks only for its own address"),
        Rule((f"iifname @{MAC_IFACES}", f"iifname . arp saddr ether != @{POD_IF_MAC}", "counter"),
             "drop", "ARP anti-spoofing: a pod speaks only with its own MAC"),
        Rule((f"iifname @{MAC_IFACES}", f"iifname . ether saddr != @{POD_IF_MAC}", "counter"),
             "drop", "anti-spoofing: a pod sends only from its own MAC"),
    ), hook="input")
    return Ruleset(sets=sets, maps={}, chains={"input": chain}, family="arp", table=table)
