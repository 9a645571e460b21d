"""Link, address, route and sysctl mechanics for Calico-style pod wiring (the `pkg/ip`).

Host end: cali<hash>, MAC ee:ee:ee:ee:ee:ee, proxy_arp=1, proxy_delay=0, route IP/32 scope
link. Pod end: IP/32, a scope-link route to 169.254.1.1 and a default route through it.
ADD and DEL go through plugin.rtnl (few round trips, no pyroute2 per-call cost); CHECK's
inspection and the uplink MTU use pyroute2.
"""
from __future__ import annotations

import errno
import hashlib
import os
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from plugin import rtnl
from plugin.rtnl import Rtnl
from plugin.spec import GATEWAY

HOST_MAC = "ee:ee:ee:ee:ee:ee"
HOST_PREFIX = "cali"
SCOPE_LINK = 253
RT_PROTO_STATIC = 4


def host_ifname(container_id: str, ifname: str) -> str:
    """Stable host-side name from containerID+ifname, within the 15-byte limit."""
    return HOST_PREFIX + hashlib.sha1(f"{container_id}.{ifname}".encode()).hexdigest()[:11]


def link_index(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def write_sysctl(path: str, value: str) -> None:
    with open(f"/proc/sys/{path}", "w") as f:
        f.write(value)


def pod_mac() -> str:
    """A random locally administered unicast MAC for the pod end (what the kernel would pick;
    choosing it here saves reading it back for the ADD result)."""
    b = bytearray(os.urandom(6))
    b[0] = (b[0] & 0xFE) | 0x02
    return ":".join(f"{x:02x}" for x in b)


def create_veth(nl: Rtnl, host: str, peer: str, peer_netns_fd: int, mtu: int, mac: str) -> int:
    """Create host<->peer, both up, the peer born inside the pod namespace with MAC mac;
    returns the host end's index (looked up in the same datagram as the creation)."""
    return nl.call(rtnl.veth_request(host, peer, peer_netns_fd, mtu, HOST_MAC, mac),
                   rtnl.get_link_request(host))[1].index


def delete_link(nl: Rtnl, name: str) -> bool:
    """Delete by name (the veth's other end goes with it); False if it was not there (DEL is
    idempotent)."""
    try:
        nl.call(rtnl.delete_link_request(name))
    except NetlinkError as e:
        if e.code != errno.ENODEV:
            raise
        return False
    return True


def configure_host_end(nl: Rtnl, index: int, name: str, ip: str) -> None:
    write_sysctl(f"net/ipv4/conf/{name}/proxy_arp", "1")
    write_sysctl(f"net/ipv4/neigh/{name}/proxy_delay", "0")
    write_sysctl(f"net/ipv4/conf/{name}/forwarding", "1")
    nl.call(rtnl.route_request(index, ip, 32, scope=SCOPE_LINK, proto=RT_PROTO_STATIC,
                               replace=True))


def pod_end_up(pod_nl: Rtnl, ifname: str) -> int:
    """lo and the pod end up, the pod end's index: one datagram on a socket in the pod's
    namespace (no address needed yet, so this runs while the address is being assigned)."""
    up = [(rtnl.RTM_NEWLINK, 0, rtnl.ifinfo(up=True) + rtnl.name_attr(rtnl.IFLA_IFNAME, n))
          for n in ("lo", ifname)]
    try:
        return pod_nl.call(*up, rtnl.get_link_request(ifname))[2].index
    except NetlinkError as e:
        if e.code == errno.ENODEV:
            raise RuntimeError(f"interface {ifname} did not appear in the pod namespace") from None
        raise


def address_pod_end(pod_nl: Rtnl, index: int, ip: str) -> None:
    """IP/32, the scope-link route to the gateway and the default route through it."""
    pod_nl.call(rtnl.address_request(index, ip),
                rtnl.route_request(index, GATEWAY, 32, scope=SCOPE_LINK),
                rtnl.route_request(index, "0.0.0.0", 0, gateway=GATEWAY))


@dataclass(frozen=True)
class PodView:
    """What CHECK finds inside the pod namespace."""
    exists: bool
    addresses: list[str]
    default_gw: str | None
    gw_route: bool


def inspect_pod_end(ifname: str) -> PodView:
    with IPRoute() as ipr:
        idx = link_index(ipr, ifname)
        if idx is None:
            return PodView(False, [], None, False)
        addrs = [f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(index=idx)
                 if a["family"] == 2]
        gw = None
        gw_route = False
        for r in ipr.get_routes(family=2, oif=idx):
            if r["dst_len"] == 0:
                gw = r.get_attr("RTA_GATEWAY")
            elif r.get_attr("RTA_DST") == GATEWAY and r["dst_len"] == 32:
                gw_route = True
        return PodView(True, addrs, gw, gw_route)


def host_route_ok(ipr: IPRoute, ip: str, index: int) -> bool:
    return any(r.get_attr("RTA_OIF") == index
               for r in ipr.get_routes(family=2, dst=ip, dst_len=32))


def uplink_mtu(ipr: IPRoute) -> int:
    """MTU of the interface carrying the default route (1500 if there is none)."""
    for r in ipr.get_routes(family=2, dst_len=0, table=254):
        oif = r.get_attr("RTA_OIF")
        if oif:
            return ipr.get_links(oif)[0].get_attr("IFLA_MTU")
    return 1500
