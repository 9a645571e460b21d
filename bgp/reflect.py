"""Route reflection (RFC 4456) for a node whose ExaBGP cannot reflect by itself (pure).

ExaBGP keeps no RIB to reflect from, so a route-reflector node's Speaker re-announces what
its iBGP peers sent, neighbour by neighbour, with the next hop unchanged, ORIGINATOR_ID set
and its cluster id prepended to CLUSTER_LIST. The rules:

- only iBGP paths from iBGP peers are reflected, never the node's own prefixes;
- from a client: to every other iBGP peer; from a non-client: to clients only;
- a path whose CLUSTER_LIST holds our cluster id, or whose originator is us, is a loop;
- one path per prefix and peer (no add-path): the shortest CLUSTER_LIST, then the lowest
  next hop, never one that came from that peer or points at it.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .model import LearnedPath

__all__ = ["Reflected", "reflection_plan", "reflection_commands", "announce_command",
           "withdraw_command"]


@dataclass(frozen=True)
class Reflected:
    """A path as we re-announce it to one peer."""

    next_hop: str
    originator_id: str
    cluster_list: tuple[str, ...]


@dataclass(frozen=True)
class ReflectPeer:
    address: str
    peer_as: int
    client: bool


def reflection_plan(
    learned: Mapping[str, Mapping[str, LearnedPath]],
    peers: Sequence[ReflectPeer],
    *,
    local_as: int,
    router_id: str,
    cluster_id: str,
    own: Iterable[str] = (),
    targets: Iterable[str] | None = None,
) -> dict[str, dict[str, Reflected]]:
    """peer address -> prefix -> what to announce to it. `learned` is peer -> prefix -> path
    (what the Speaker holds); `targets` limits the result to those peers (the Established)."""
    own_set = set(own)
    ibgp = {p.address: p for p in peers if p.peer_as == local_as}
    wanted = set(ibgp) if targets is None else set(targets) & set(ibgp)
    candidates: dict[str, list[tuple[ReflectPeer, LearnedPath]]] = {}
    for source_addr, paths in learned.items():
        source = ibgp.get(source_addr)
        if source is None:
            continue
        for prefix, path in paths.items():
            if prefix in own_set or cluster_id in path.cluster_list:
                continue
            if path.originator_id == router_id:
                continue
            candidates.setdefault(prefix, []).append((source, path))
    out: dict[str, dict[str, Reflected]] = {}
    for target_addr in sorted(wanted):
        target = ibgp[target_addr]
        routes: dict[str, Reflected] = {}
        for prefix, cands in candidates.items():
            usable = [(s, p) for s, p in cands
                      if s.address != target.address and p.next_hop != target.address
                      and (s.client or target.client)
                      and (p.originator_id or s.address) != target.address]
            if not usable:
                continue
            source, path = min(usable, key=lambda sp: (
                len(sp[1].cluster_list), int(ipaddress.IPv4Address(sp[1].next_hop)), sp[0].address))
            routes[prefix] = Reflected(next_hop=path.next_hop,
                                       originator_id=path.originator_id or source.address,
                                       cluster_list=(cluster_id, *path.cluster_list))
        if routes:
            out[target_addr] = routes
    return out


def announce_command(peer: str, prefix: str, r: Reflected) -> str:
    return (f"neighbor {peer} announce route {prefix} next-hop {r.next_hop} "
            f"originator-id {r.originator_id} cluster-list [ {' '.join(r.cluster_list)} ]")


def withdraw_command(peer: str, prefix: str, r: Reflected) -> str:
    return f"neighbor {peer} withdraw route {prefix} next-hop {r.next_hop}"


def reflection_commands(
    sent: Mapping[str, Mapping[str, Reflected]], plan: Mapping[str, Mapping[str, Reflected]],
) -> tuple[list[str], dict[str, dict[str, Reflected]]]:
    """The ExaBGP commands that turn what we re-announce (`sent`, peer -> prefix -> path)
    into `plan`, and what is sent afterwards."""
    commands: list[str] = []
    after: dict[str, dict[str, Reflected]] = {}
    for peer in sorted(set(sent) | set(plan)):
        was, want = sent.get(peer, {}), plan.get(peer, {})
        for prefix in sorted(set(was) - set(want)):
            commands.append(withdraw_command(peer, prefix, was[prefix]))
        for prefix in sorted(want):
            if was.get(prefix) != want[prefix]:
                commands.append(announce_command(peer, prefix, want[prefix]))
        if want:
            after[peer] = dict(want)
    return commands, after
