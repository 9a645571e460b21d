"""Service address advertisement: which Service prefixes a node announces over BGP (pure).

As Calico's BGPConfiguration serviceClusterIPs / serviceExternalIPs / serviceLoadBalancerIPs
(and kube-router's --advertise-cluster-ip, --advertise-external-ip, --advertise-loadbalancer-ip):

- every node announces every configured range (cluster IPs, external IPs, LoadBalancer IPs):
  with `externalTrafficPolicy: Cluster` any node will do, the routers spread traffic by ECMP;
- a Service with `externalTrafficPolicy: Local` is announced as /32s, only by the nodes that run
  one of its ready endpoints, so the routers never send its traffic to a node that would
  drop it (kube-proxy answers Local traffic only with local endpoints): its external IPs and
  LoadBalancer ingress IPs, and its cluster IPs (as Calico does); `internalTrafficPolicy:
  Local` announces its cluster IPs the same way. Only addresses inside a configured range are
  announced (an operator decides what the fabric learns, as in Calico).

Paths to these prefixes learned from other nodes are never installed as kernel routes
(`without_service_paths`): a node reaches Services through its own service proxy, not over
the fabric (Calico keeps them out of the kernel the same way).

The inputs are kube-sync's records (keys.K8S_SERVICES, keys.K8S_ENDPOINTSLICES; see
kube_sync.service_record, endpointslice_record) and the global BGP record's ranges.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

LOCAL = "Local"


@dataclass(frozen=True)
class ServiceRanges:
    """The configured ranges, as normalised CIDR strings."""

    cluster: tuple[str, ...] = ()
    external: tuple[str, ...] = ()
    loadbalancer: tuple[str, ...] = ()

    def all(self) -> tuple[str, ...]:
        return self.cluster + self.external + self.loadbalancer


@dataclass(frozen=True)
class Advertised:
    """One prefix the node announces for Services, and why (shown by `node status`)."""

    prefix: str
    reason: str


def parse_cidrs(values: Iterable[str], what: str = "CIDR") -> tuple[str, ...]:
    """'a,b' and repeated values -> sorted, deduplicated, normalised IPv4 CIDRs. Host bits set
    are an error (10.96.0.1/16 is a typo for something), as is anything but IPv4."""
    out = set()
    for value in values:
        for item in filter(None, (v.strip() for v in value.split(","))):
            try:
                out.add(str(ipaddress.IPv4Network(item)))
            except ValueError as e:
                raise ValueError(f"{what} {item!r}: {e}") from None
    return tuple(sorted(out, key=_sort_key))


def local_services(slices: Iterable[Mapping], node: str) -> set[tuple[str, str]]:
    """(namespace, service) of every Service with a ready endpoint on node."""
    return {(s["namespace"], s["service"]) for s in slices
            if any(ep.get("node") == node and ep.get("ready") for ep in s.get("endpoints", []))}


def service_prefixes(ranges: ServiceRanges, services: Iterable[Mapping],
                     slices: Iterable[Mapping], node: str) -> tuple[Advertised, ...]:
    """Every prefix node announces for Services, sorted; one reason per prefix (a range
    wins over a /32 in it only when they are the same prefix)."""
    found: dict[str, str] = {}
    for kind, cidrs in (("cluster IP", ranges.cluster), ("external IP", ranges.external),
                        ("LoadBalancer IP", ranges.loadbalancer)):
        for cidr in cidrs:
            found.setdefault(cidr, f"service {kind} range")
    local = local_services(slices, node)
    for svc in sorted(services, key=lambda s: (s["namespace"], s["name"])):
        if (svc["namespace"], svc["name"]) not in local:
            continue
        name = f"{svc['namespace']}/{svc['name']}"
        for prefix, why in _local_addresses(svc, ranges):
            found.setdefault(prefix, f"{name} {why}, local endpoint")
    return tuple(sorted((Advertised(p, r) for p, r in found.items()),
                        key=lambda a: _sort_key(a.prefix)))


def _local_addresses(svc: Mapping, ranges: ServiceRanges) -> list[tuple[str, str]]:
    """The /32s of a Service with a local endpoint that its traffic policies pin to such
    nodes, each inside its kind's configured ranges."""
    external = svc.get("externalTrafficPolicy") == LOCAL
    internal = svc.get("internalTrafficPolicy") == LOCAL
    picks = []
    if external or internal:
        picks.append(("cluster IP", svc.get("clusterIPs", []), ranges.cluster))
    if external:
        picks += [("external IP", svc.get("externalIPs", []), ranges.external),
                  ("LoadBalancer IP", svc.get("loadBalancerIPs", []), ranges.loadbalancer)]
    out = []
    for why, ips, cidrs in picks:
        nets = [ipaddress.IPv4Network(c) for c in cidrs]
        for ip in ips:
            addr = _ipv4(ip)
            if addr is not None and any(addr in n for n in nets):
                out.append((f"{addr}/32", why))
    return out


def without_service_paths(learned: Mapping[str, object], ranges: ServiceRanges,
                          pools: Iterable[str] = ()) -> dict:
    """learned (prefix -> paths) without the prefixes inside a service range: other nodes'
    service announcements are for the fabric, not for this node's kernel. A prefix inside an
    IP pool is always kept (a range drawn too wide must not cut the pods off each other)."""
    nets = [ipaddress.ip_network(c) for c in ranges.all()]
    if not nets:
        return dict(learned)
    kept = [ipaddress.ip_network(c) for c in pools]

    def within(net, among) -> bool:
        return any(net.version == n.version and net.subnet_of(n) for n in among)
    return {p: paths for p, paths in learned.items()
            if not within(ipaddress.ip_network(p), nets) or within(ipaddress.ip_network(p), kept)}


def _ipv4(ip: str) -> ipaddress.IPv4Address | None:
    """None for an IPv6 address (or anything else): this BGP speaker carries IPv4 only."""
    try:
        return ipaddress.IPv4Address(ip)
    except ValueError:
        return None


def _sort_key(cidr: str) -> tuple[int, int]:
    net = ipaddress.IPv4Network(cidr)
    return int(net.network_address), net.prefixlen
