"""Link, address, route and sysctl mechanics for Calico-style pod wiring (the `pkg/ip`).

Host end: cali<hash>, MAC ee:ee:ee:ee:ee:ee, proxy_arp=1, proxy_delay=0, route IP/32 scope
link. Pod end: IP/32, a scope-link route to 169.254.1.1 and a default route through it.
"""
from __future__ import annotations

import errno
import hashlib
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

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


def link_mac(ipr: IPRoute, index: int) -> str:
    return ipr.get_links(index)[0].get_attr("IFLA_ADDRESS")


def write_sysctl(path: str, value: str) -> None:
    with open(f"/proc/sys/{path}", "w") as f:
        f.write(value)


def create_veth(ipr: IPRoute, host: str, peer: str, peer_netns_fd: int, mtu: int) -> int:
    """Create host<->peer with the peer born inside the pod namespace; returns host index."""
    ipr.link("add", ifname=host, kind="veth", mtu=mtu, address=HOST_MAC,
             peer={"ifname": peer, "net_ns_fd": peer_netns_fd, "mtu": mtu})
    return link_index(ipr, host)  # type: ignore[return-value]


def delete_link(ipr: IPRoute, name: str) -> bool:
    """Delete by name; False if it was not there (DEL is idempotent)."""
    idx = link_index(ipr, name)
    if idx is None:
        return False
    try:
        ipr.link("del", index=idx)
    except NetlinkError as e:
        if e.code != errno.ENODEV:
            raise
        return False
    return True


def configure_host_end(ipr: IPRoute, index: int, name: str, ip: str) -> None:
    write_sysctl(f"net/ipv4/conf/{name}/proxy_arp", "1")
    write_sysctl(f"net/ipv4/neigh/{name}/proxy_delay", "0")
    write_sysctl(f"net/ipv4/conf/{name}/forwarding", "1")
    ipr.link("set", index=index, state="up")
    ipr.route("replace", dst=f"{ip}/32", oif=index, scope=SCOPE_LINK, proto=RT_PROTO_STATIC)


@dataclass(frozen=True)
class PodEnd:
    index: int
    mac: str


def configure_pod_end(ifname: str, ip: str) -> PodEnd:
    """Runs inside the pod namespace (see plugin.netns.run_in_netns)."""
    with IPRoute() as ipr:
        idx = link_index(ipr, ifname)
        if idx is None:
            raise RuntimeError(f"interface {ifname} did not appear in the pod namespace")
        lo = link_index(ipr, "lo")
        if lo is not None:
            ipr.link("set", index=lo, state="up")
        ipr.link("set", index=idx, state="up")
        ipr.addr("add", index=idx, address=ip, prefixlen=32)
        ipr.route("add", dst=f"{GATEWAY}/32", oif=idx, scope=SCOPE_LINK)
        ipr.route("add", dst="0.0.0.0/0", gateway=GATEWAY, oif=idx)
        return PodEnd(idx, link_mac(ipr, idx))


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
