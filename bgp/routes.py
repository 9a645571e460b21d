"""From learned BGP paths to kernel routes: a pure plan, and an applier that owns a proto.

Every route we write carries our own routing protocol number (PROTO), so the applier can
diff against exactly its own routes, and flush them, without touching anyone else's.
"""
from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .model import LearnedPath, Route

__all__ = ["PROTO", "LearnedPath", "Route", "Skipped", "RoutePlan", "ApplyResult",
           "desired_routes", "RouteApplier"]

PROTO = 88          # `ip route show proto 88`; unassigned in /etc/iproute2/rt_protos
MAIN_TABLE = 254


@dataclass(frozen=True)
class Skipped:
    """A learned path we did not turn into a route, and why."""

    prefix: str
    next_hop: str
    reason: str


@dataclass
class RoutePlan:
    """What the kernel should hold (routes) and what was left out (skipped)."""

    routes: list[Route] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    # A plan behaves like its list of routes, so `apply(desired_routes(...))` works too.
    def __iter__(self):
        return iter(self.routes)

    def __len__(self) -> int:
        return len(self.routes)


def desired_routes(
    learned: Mapping[str, Iterable[LearnedPath]],
    own_prefixes: Iterable[str],
    local_subnets: Iterable[str],
    *,
    local_addresses: Iterable[str] = (),
    local_as: int | None = None,
) -> RoutePlan:
    """Choose the kernel routes for what BGP learned.

    - A prefix we own is never installed (eBGP and route reflectors echo it back).
    - A path whose next hop is not on a local subnet is skipped (encapsulation is not this
      function's business), as is one whose next hop is our own address or whose AS path
      holds our AS (a loop).
    - Of the usable paths, those with the shortest AS path win; their distinct next hops
      make one ECMP route.
    """
    own = {_net(p) for p in own_prefixes}
    subnets = [_net(s) for s in local_subnets]
    mine = {str(ipaddress.IPv4Address(a)) for a in local_addresses}
    plan = RoutePlan()
    for prefix in sorted(learned, key=_sort_key):
        net = _net(prefix)
        paths = sorted(set(learned[prefix]), key=lambda p: (p.next_hop, p.peer, p.as_path))
        if not paths:
            continue
        if net in own:
            plan.skipped += [Skipped(str(net), p.next_hop, "own prefix") for p in paths]
            continue
        usable: list[LearnedPath] = []
        for p in paths:
            reason = _unusable(p, subnets, mine, local_as)
            if reason:
                plan.skipped.append(Skipped(str(net), p.next_hop, reason))
            else:
                usable.append(p)
        if not usable:
            continue
        best = min(len(p.as_path) for p in usable)
        hops = sorted({p.next_hop for p in usable if len(p.as_path) == best},
                      key=lambda a: ipaddress.IPv4Address(a))
        plan.routes.append(Route(prefix=str(net), next_hops=tuple(hops)))
    return plan


def _unusable(p: LearnedPath, subnets: list[ipaddress.IPv4Network], mine: set[str],
              local_as: int | None) -> str:
    try:
        hop = ipaddress.IPv4Address(p.next_hop)
    except ValueError:
        return f"next hop {p.next_hop!r} is not an IPv4 address"
    if str(hop) in mine:
        return "next hop is this node"
    if local_as is not None and local_as in p.as_path:
        return f"AS path {list(p.as_path)} holds our AS {local_as}"
    if not any(hop in s for s in subnets):
        return "next hop not on a local subnet"
    return ""


def _net(prefix: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(prefix)
    except ValueError as e:
        raise ValueError(f"not an IPv4 prefix: {prefix!r}") from e


def _sort_key(prefix: str):
    n = _net(prefix)
    return (int(n.network_address), n.prefixlen)


@dataclass
class ApplyResult:
    """What apply() changed; conflicts are prefixes held by someone else's route."""

    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.added or self.replaced or self.deleted)


class RouteApplier:
    """Makes the routes with our proto in the CURRENT network namespace equal a desired list.

    Routes with another proto are never changed; a desired prefix already held by one of
    them is reported as a conflict and left alone.
    """

    def __init__(self, proto: int = PROTO, table: int = MAIN_TABLE) -> None:
        if not 0 < proto < 256 or proto in (1, 2, 3, 4):  # redirect/kernel/boot/static
            raise ValueError(f"routing protocol {proto} is reserved or out of range")
        self.proto = proto
        self.table = table

    def current(self) -> dict[str, tuple[str, ...]]:
        """Our routes now in the kernel: prefix -> sorted next hops."""
        with self._ipr() as ipr:
            return self._dump(ipr)[0]

    def apply(self, routes: Iterable[Route]) -> ApplyResult:
        from pyroute2 import NetlinkError

        want = {str(_net(r.prefix)): tuple(sorted(set(r.next_hops), key=ipaddress.IPv4Address))
                for r in routes if r.next_hops}
        result = ApplyResult()
        with self._ipr() as ipr:
            ours, foreign = self._dump(ipr)
            for prefix, hops in want.items():
                if prefix in foreign:
                    result.conflicts.append(prefix)
                    continue
                existing = ours.get(prefix)
                if existing == hops:
                    continue
                try:
                    ipr.route("replace", **self._spec(prefix, hops))
                except NetlinkError as e:
                    result.errors.append(f"replace {prefix} via {','.join(hops)}: {e}")
                    continue
                (result.replaced if existing else result.added).append(prefix)
            for prefix in ours:
                if prefix not in want or prefix in foreign:
                    try:
                        ipr.route("del", dst=prefix, proto=self.proto, table=self.table)
                        result.deleted.append(prefix)
                    except NetlinkError as e:
                        result.errors.append(f"delete {prefix}: {e}")
        return result

    def flush(self) -> list[str]:
        """Delete every route with our proto (in our table); returns the prefixes removed."""
        return self.apply([]).deleted

    def _spec(self, prefix: str, hops: tuple[str, ...]) -> dict:
        spec = {"dst": prefix, "proto": self.proto, "table": self.table}
        if len(hops) == 1:
            spec["gateway"] = hops[0]
        else:
            spec["multipath"] = [{"gateway": h} for h in hops]
        return spec

    def _dump(self, ipr) -> tuple[dict[str, tuple[str, ...]], set[str]]:
        """Our unicast routes in our table (prefix -> next hops) and the prefixes of others."""
        ours: dict[str, tuple[str, ...]] = {}
        foreign: set[str] = set()
        for r in ipr.route("dump", family=socket.AF_INET, table=self.table):
            prefix = f"{r.get('dst') or '0.0.0.0'}/{r['dst_len']}"
            if r["proto"] != self.proto:
                if r.get("type") in (None, 1):  # RTN_UNICAST; local/broadcast live elsewhere
                    foreign.add(prefix)
                continue
            hops = [r.get("gateway")] if r.get("gateway") else []
            for nh in r.get("multipath") or ():
                gw = dict(nh.get("attrs", ())).get("RTA_GATEWAY") if isinstance(nh, dict) else None
                if gw is None and hasattr(nh, "get_attr"):
                    gw = nh.get_attr("RTA_GATEWAY")
                if gw:
                    hops.append(gw)
            ours[prefix] = tuple(sorted(hops, key=ipaddress.IPv4Address))
        return ours, foreign

    @staticmethod
    def _ipr():
        from pyroute2 import IPRoute  # costs ~300 ms: only where routes are written
        return IPRoute()
