"""Which encapsulation a learned route needs (pure): Calico's pool modes as a small table.

| pool encapsulation / mode | next hop on a local subnet | next hop elsewhere |
| --- | --- | --- |
| none (any mode), or Never | plain route               | not routable (skipped) |
| ipip/vxlan, CrossSubnet   | plain route               | encapsulated |
| ipip/vxlan, Always        | encapsulated              | encapsulated |

A prefix that no pool covers behaves like a pool with encapsulation none.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from .model import PoolEncap, RemoteNode

ENCAPSULATIONS = ("none", "ipip", "vxlan")
MODES = ("Never", "Always", "CrossSubnet")
DEVICES = {"ipip": "tunl0", "vxlan": "vxlan.calico"}
OVERHEAD = {"none": 0, "ipip": 20, "vxlan": 50}
NOT_ON_LINK = "next hop not on a local subnet"

__all__ = ["ENCAPSULATIONS", "MODES", "DEVICES", "OVERHEAD", "NOT_ON_LINK", "pool_for",
           "choose_encap", "gateway_for", "as_pools"]


def as_pools(pools: Iterable[PoolEncap | tuple[str, str, str]]) -> list[PoolEncap]:
    """Accept PoolEncap records or plain (cidr, encapsulation, mode) tuples; validate both."""
    out = []
    for p in pools:
        pe = p if isinstance(p, PoolEncap) else PoolEncap(*p)
        if pe.encapsulation not in ENCAPSULATIONS:
            raise ValueError(f"pool {pe.cidr}: encapsulation {pe.encapsulation!r} is not one of "
                             f"{', '.join(ENCAPSULATIONS)}")
        if pe.mode not in MODES:
            raise ValueError(f"pool {pe.cidr}: mode {pe.mode!r} is not one of {', '.join(MODES)}")
        ipaddress.IPv4Network(pe.cidr)
        out.append(pe)
    return out


def pool_for(prefix: ipaddress.IPv4Network, pools: Iterable[PoolEncap]) -> PoolEncap | None:
    """The most specific pool that contains the whole prefix."""
    fits = [p for p in pools if prefix.subnet_of(ipaddress.IPv4Network(p.cidr))]
    return max(fits, key=lambda p: ipaddress.IPv4Network(p.cidr).prefixlen, default=None)


def choose_encap(on_link: bool, pool: PoolEncap | None) -> str | None:
    """The encapsulation for one next hop, or None when the pool forbids reaching it."""
    if pool is None or pool.encapsulation == "none" or pool.mode == "Never":
        return "none" if on_link else None
    if pool.mode == "CrossSubnet" and on_link:
        return "none"
    return pool.encapsulation


def gateway_for(encap: str, next_hop: str, remotes: Mapping[str, RemoteNode],
                supported: Iterable[str]) -> tuple[str, str]:
    """(kernel gateway, "") for a next hop, or ("", reason) when it cannot be used.

    Plain and IPIP routes go via the BGP next hop itself; VXLAN goes via the remote
    node's VTEP address, which that node must have published.
    """
    if encap not in supported:
        what = "IPIP" if encap == "ipip" else encap.upper()
        return "", f"{what} unavailable: this kernel has no {encap} support"
    if encap != "vxlan":
        return next_hop, ""
    remote = remotes.get(next_hop)
    if remote is None or not remote.vtep_ip or not remote.vtep_mac:
        return "", f"no VXLAN VTEP published for node {next_hop}"
    return remote.vtep_ip, ""
