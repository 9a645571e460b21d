"""From learned BGP paths to kernel routes: a pure plan, and an applier that owns a proto.

Every route we write carries our own routing protocol number (PROTO), so the applier can
diff against exactly its own routes, and flush them, without touching anyone else's.
"""
from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .encap import DEVICES, NOT_ON_LINK, as_pools, choose_encap, gateway_for, pool_for
from .model import Failure, LearnedPath, PoolEncap, RemoteNode, Route

__all__ = ["PROTO", "LearnedPath", "Route", "PoolEncap", "RemoteNode", "Skipped", "RoutePlan",
           "ApplyResult", "desired_routes", "RouteApplier"]

PROTO = 88          # `ip route show proto 88`; unassigned in /etc/iproute2/rt_protos
MAIN_TABLE = 254
RTNH_F_ONLINK = 4   # the gateway is on the device's link even without a covering subnet
_ENCAP_OF_DEVICE = {dev: encap for encap, dev in DEVICES.items()}


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
    pools: Iterable[PoolEncap | tuple[str, str, str]] = (),
    remotes: Mapping[str, RemoteNode] | None = None,
    supported_encaps: Iterable[str] = ("none", "ipip", "vxlan"),
) -> RoutePlan:
    """Choose the kernel routes for what BGP learned.

    - A prefix we own is never installed (eBGP and route reflectors echo it back).
    - A path whose next hop is our own address or whose AS path holds our AS (a loop) is
      skipped.
    - The pool covering the prefix decides the encapsulation per next hop (bgp.encap):
      plain when on a local subnet, IPIP/VXLAN as its mode says, skipped when the mode
      forbids it, the kernel lacks the encapsulation (`supported_encaps`) or, for VXLAN,
      the next hop's node (`remotes`, keyed by node address) published no VTEP.
    - Of the usable paths, those with the shortest AS path win; their distinct gateways
      make one ECMP route, preferring plain gateways over encapsulated ones.
    """
    own = {_net(p) for p in own_prefixes}
    subnets = [_net(s) for s in local_subnets]
    mine = {str(ipaddress.IPv4Address(a)) for a in local_addresses}
    pool_list = as_pools(pools)
    remotes = remotes or {}
    supported = set(supported_encaps) | {"none"}
    plan = RoutePlan()
    for prefix in sorted(learned, key=_sort_key):
        net = _net(prefix)
        paths = sorted(set(learned[prefix]), key=lambda p: (p.next_hop, p.peer, p.as_path))
        if not paths:
            continue
        if net in own:
            plan.skipped += [Skipped(str(net), p.next_hop, "own prefix") for p in paths]
            continue
        pool = pool_for(net, pool_list)
        usable: list[tuple[LearnedPath, str, str]] = []  # (path, encap, gateway)
        for p in paths:
            encap, gateway, reason = _carry(p, pool, subnets, mine, local_as, remotes, supported)
            if reason:
                plan.skipped.append(Skipped(str(net), p.next_hop, reason))
            else:
                usable.append((p, encap, gateway))
        if not usable:
            continue
        best = min(len(p.as_path) for p, _, _ in usable)
        shortest = [(e, g) for p, e, g in usable if len(p.as_path) == best]
        encap = min((e for e, _ in shortest), key=_ENCAP_PREFERENCE.index)
        hops = sorted({g for e, g in shortest if e == encap}, key=ipaddress.IPv4Address)
        plan.routes.append(Route(prefix=str(net), next_hops=tuple(hops), encap=encap))
    return plan


_ENCAP_PREFERENCE = ("none", "ipip", "vxlan")


def _carry(p: LearnedPath, pool: PoolEncap | None, subnets: list[ipaddress.IPv4Network],
           mine: set[str], local_as: int | None, remotes: Mapping[str, RemoteNode],
           supported: set[str]) -> tuple[str, str, str]:
    """(encapsulation, kernel gateway, "") for one path, or ("", "", why it cannot be used)."""
    reason = _unusable(p, mine, local_as)
    if reason:
        return "", "", reason
    on_link = any(ipaddress.IPv4Address(p.next_hop) in s for s in subnets)
    encap = choose_encap(on_link, pool)
    if encap is None:
        return "", "", NOT_ON_LINK
    gateway, reason = gateway_for(encap, p.next_hop, remotes, supported)
    return encap, gateway, reason


def _unusable(p: LearnedPath, mine: set[str], local_as: int | None) -> str:
    try:
        hop = ipaddress.IPv4Address(p.next_hop)
    except ValueError:
        return f"next hop {p.next_hop!r} is not an IPv4 address"
    if str(hop) in mine:
        return "next hop is this node"
    if local_as is not None and local_as in p.as_path:
        return f"AS path {list(p.as_path)} holds our AS {local_as}"
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
    failures: list[Failure] = field(default_factory=list)

    @property
    def errors(self) -> list[str]:
        return [str(f) for f in self.failures]

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

    def current_routes(self) -> dict[str, Route]:
        """Our routes now in the kernel, with the encapsulation their device implies."""
        with self._ipr() as ipr:
            return self._dump(ipr)[0]

    def apply(self, routes: Iterable[Route]) -> ApplyResult:
        """Encapsulated routes need their device (tunl0, vxlan.calico) to exist already."""
        from pyroute2 import NetlinkError

        want = {str(_net(r.prefix)): Route(str(_net(r.prefix)), _sorted_hops(r.next_hops), r.encap)
                for r in routes if r.next_hops}
        result = ApplyResult()
        with self._ipr() as ipr:
            ours, foreign = self._dump(ipr)
            devices = {name: idx for idx, name in _links(ipr).items()}
            for prefix, route in want.items():
                if prefix in foreign:
                    result.conflicts.append(prefix)
                    continue
                existing = ours.get(prefix)
                if existing == route:
                    continue
                what = f"replace {prefix} via {','.join(route.next_hops)} (encap {route.encap})"
                try:
                    spec = self._spec(route, devices)
                    ipr.route("replace", **spec)
                except (NetlinkError, LookupError) as e:
                    result.failures.append(Failure(what, str(e)))
                    continue
                (result.replaced if existing else result.added).append(prefix)
            for prefix in ours:
                if prefix not in want or prefix in foreign:
                    try:
                        ipr.route("del", dst=prefix, proto=self.proto, table=self.table)
                        result.deleted.append(prefix)
                    except NetlinkError as e:
                        result.failures.append(Failure(f"delete {prefix}", str(e)))
        return result

    def _spec(self, route: Route, devices: dict[str, int]) -> dict:
        spec: dict = {"dst": route.prefix, "proto": self.proto, "table": self.table}
        hop: dict = {}
        if route.encap != "none":
            dev = DEVICES.get(route.encap)
            if dev is None:
                raise LookupError(f"unknown encapsulation {route.encap!r}")
            if dev not in devices:
                raise LookupError(f"device {dev} does not exist")
            hop = {"oif": devices[dev], "flags": RTNH_F_ONLINK}
        if len(route.next_hops) == 1:
            spec.update(gateway=route.next_hops[0], **hop)
        else:
            spec["multipath"] = [{"gateway": h, **hop} for h in route.next_hops]
        return spec

    def _dump(self, ipr) -> tuple[dict[str, Route], set[str]]:
        """Our unicast routes in our table (prefix -> Route) and the prefixes of others."""
        ours: dict[str, Route] = {}
        foreign: set[str] = set()
        encap_of = {idx: _ENCAP_OF_DEVICE.get(name, "none") for idx, name in _links(ipr).items()}
        for r in ipr.route("dump", family=socket.AF_INET, table=self.table):
            prefix = f"{r.get('dst') or '0.0.0.0'}/{r['dst_len']}"
            if r["proto"] != self.proto:
                if r.get("type") in (None, 1):  # RTN_UNICAST; local/broadcast live elsewhere
                    foreign.add(prefix)
                continue
            hops = [r.get("gateway")] if r.get("gateway") else []
            oifs = [r.get("oif")] if r.get("gateway") else []
            for nh in r.get("multipath") or ():
                gw = dict(nh.get("attrs", ())).get("RTA_GATEWAY") if isinstance(nh, dict) else None
                if gw is None and hasattr(nh, "get_attr"):
                    gw = nh.get_attr("RTA_GATEWAY")
                if gw:
                    hops.append(gw)
                    oifs.append(nh.get("oif"))
            encaps = {encap_of.get(i, "none") for i in oifs} or {"none"}
            encap = encaps.pop() if len(encaps) == 1 else "mixed"  # never equal to a wanted Route
            ours[prefix] = Route(prefix, _sorted_hops(hops), encap)
        return ours, foreign

    @staticmethod
    def _ipr():
        from pyroute2 import IPRoute  # costs ~300 ms: only where routes are written
        return IPRoute()


def _sorted_hops(hops: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(hops), key=ipaddress.IPv4Address))


def _links(ipr) -> dict[int, str]:
    return {link["index"]: link.get("ifname") for link in ipr.get_links()}
