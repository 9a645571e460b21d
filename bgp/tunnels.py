"""The tunnel devices behind encapsulated routes, in the CURRENT network namespace.

IPIP uses the kernel's fallback device `tunl0` (it exists in every namespace once the ipip
module is loaded): up, our MTU, and the node's tunnel address as its only address. VXLAN
uses `vxlan.calico` (VNI 4096, UDP 4789, local = node address, no learning): every remote
node gets a permanent neighbour entry (its VTEP IP -> its VTEP MAC) and an FDB entry (its
VTEP MAC -> its node address), so no flooding and no learning is ever needed.

Only these two devices and the entries on vxlan.calico are touched; everything is diffed,
so a sync with nothing changed writes nothing.
"""
from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field

from plugin.link import link_index as _index

from .encap import DEVICES, OVERHEAD
from .model import RemoteNode

__all__ = ["EncapUnavailable", "TunnelResult", "IpipTunnel", "VxlanTunnel"]

NUD_PERMANENT = 0x80
NTF_SELF = 0x02
UNDERLAY_MTU = 1500


class EncapUnavailable(RuntimeError):
    """The kernel cannot provide the encapsulation (e.g. built without ipip)."""


@dataclass
class TunnelResult:
    """What a tunnel sync changed, as readable strings (for logs and tests)."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed)


def _ipr():
    from pyroute2 import IPRoute
    return IPRoute()


def _set_addresses(ipr, idx: int, address: str | None, result: TunnelResult, dev: str) -> None:
    """Make the device's IPv4 addresses exactly {address/32} (or none)."""
    want = {str(ipaddress.IPv4Address(address))} if address else set()
    have = {a.get("address"): a["prefixlen"] for a in ipr.get_addr(family=socket.AF_INET, index=idx)}
    for a, plen in have.items():
        if a not in want or plen != 32:
            ipr.addr("del", index=idx, address=a, prefixlen=plen)
            result.removed.append(f"address {a}/{plen} on {dev}")
    for a in want:
        if have.get(a) != 32:
            ipr.addr("add", index=idx, address=a, prefixlen=32)
            result.added.append(f"address {a}/32 on {dev}")


class IpipTunnel:
    """tunl0, the ipip fallback device, made ready for `via NODE dev tunl0 onlink` routes."""

    def __init__(self, mtu: int = UNDERLAY_MTU - OVERHEAD["ipip"]):
        self.device = DEVICES["ipip"]
        self.mtu = mtu

    def available(self) -> bool:
        try:
            with _ipr() as ipr:
                self._index(ipr)
            return True
        except EncapUnavailable:
            return False

    def ensure(self, tunnel_address: str | None) -> TunnelResult:
        """tunl0 up with our MTU and the node's tunnel address; EncapUnavailable without ipip."""
        result = TunnelResult()
        with _ipr() as ipr:
            idx = self._index(ipr)
            link = ipr.get_links(idx)[0]
            if link.get("mtu") != self.mtu:
                ipr.link("set", index=idx, mtu=self.mtu)
                result.added.append(f"mtu {self.mtu} on {self.device}")
            if not link["flags"] & 1:  # IFF_UP
                ipr.link("set", index=idx, state="up")
                result.added.append(f"{self.device} up")
            _set_addresses(ipr, idx, tunnel_address, result, self.device)
        return result

    def _index(self, ipr) -> int:
        from pyroute2 import NetlinkError

        idx = _index(ipr, self.device)
        if idx is not None:
            return idx
        try:  # on a modular kernel this loads ipip, which brings tunl0 with it
            ipr.link("add", ifname=self.device, kind="ipip")
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise EncapUnavailable(
                    f"IPIP unavailable: this kernel has no ipip support "
                    f"(creating {self.device} failed: {e})") from None
        except Exception as e:  # pyroute2 may refuse the kind before asking the kernel
            raise EncapUnavailable(f"IPIP unavailable: creating {self.device} failed: {e}") from None
        idx = _index(ipr, self.device)
        if idx is None:
            raise EncapUnavailable(f"IPIP unavailable: {self.device} did not appear")
        return idx


class VxlanTunnel:
    """vxlan.calico plus one neighbour and one FDB entry per remote VTEP."""

    def __init__(self, vni: int = 4096, port: int = 4789,
                 mtu: int = UNDERLAY_MTU - OVERHEAD["vxlan"]):
        self.device = DEVICES["vxlan"]
        self.vni = vni
        self.port = port
        self.mtu = mtu

    def mac(self) -> str | None:
        with _ipr() as ipr:
            idx = _index(ipr, self.device)
            return ipr.get_links(idx)[0].get("address") if idx is not None else None

    def ensure(self, local_address: str, vtep_ip: str, mac: str | None = None) -> str:
        """Create or fix the device; returns its MAC (kept across restarts: published)."""
        with _ipr() as ipr:
            idx = _index(ipr, self.device)
            if idx is not None and not self._matches(ipr.get_links(idx)[0], local_address):
                ipr.link("del", index=idx)  # ours by name, but wrong VNI/port/local: rebuild
                idx = None
            if idx is None:
                spec = dict(ifname=self.device, kind="vxlan", vxlan_id=self.vni,
                            vxlan_port=self.port, vxlan_local=local_address, vxlan_learning=0,
                            mtu=self.mtu)
                if mac:
                    spec["address"] = mac
                ipr.link("add", **spec)
                idx = _index(ipr, self.device)
            link = ipr.get_links(idx)[0]
            if link.get("mtu") != self.mtu:
                ipr.link("set", index=idx, mtu=self.mtu)
            if not link["flags"] & 1:
                ipr.link("set", index=idx, state="up")
            _set_addresses(ipr, idx, vtep_ip, TunnelResult(), self.device)
            return ipr.get_links(idx)[0].get("address")

    def _matches(self, link, local_address: str) -> bool:
        info = link.get(("linkinfo", "data")) or {}
        get = info.get if hasattr(info, "get") else (lambda k: None)
        kind = link.get(("linkinfo", "kind"))
        return (kind == "vxlan" and get("vxlan_id") == self.vni and get("vxlan_port") == self.port
                and get("vxlan_local") == local_address and not get("vxlan_learning"))

    def sync_peers(self, remotes: Iterable[RemoteNode]) -> TunnelResult:
        """Neighbour (VTEP IP -> MAC) and FDB (MAC -> node address) entries = remotes."""
        from pyroute2 import NetlinkError

        result = TunnelResult()
        want = {r.vtep_ip: (r.vtep_mac.lower(), r.address) for r in remotes
                if r.vtep_ip and r.vtep_mac}
        with _ipr() as ipr:
            idx = _index(ipr, self.device)
            if idx is None:
                if want:
                    result.errors.append(f"{self.device} does not exist")
                return result
            neigh, fdb = self._entries(ipr, idx)
            want_neigh = {ip: mac for ip, (mac, _) in want.items()}
            want_fdb = {mac: addr for mac, addr in want.values()}
            for mac, addr in fdb.items():
                if want_fdb.get(mac) != addr:
                    self._try(result, f"fdb {mac} dst {addr}", ipr.fdb, "del", ifindex=idx,
                              lladdr=mac, dst=addr, NetlinkError=NetlinkError, removed=True)
            for ip, mac in neigh.items():
                if want_neigh.get(ip) != mac:
                    self._try(result, f"neigh {ip} lladdr {mac}", ipr.neigh, "del", ifindex=idx,
                              dst=ip, lladdr=mac, NetlinkError=NetlinkError, removed=True)
            for mac, addr in want_fdb.items():
                if fdb.get(mac) != addr:
                    self._try(result, f"fdb {mac} dst {addr}", ipr.fdb, "append", ifindex=idx,
                              lladdr=mac, dst=addr, state=NUD_PERMANENT, flags=NTF_SELF,
                              NetlinkError=NetlinkError)
            for ip, mac in want_neigh.items():
                if neigh.get(ip) != mac:
                    self._try(result, f"neigh {ip} lladdr {mac}", ipr.neigh, "replace",
                              ifindex=idx, dst=ip, lladdr=mac, state=NUD_PERMANENT,
                              NetlinkError=NetlinkError)
        return result

    def peers(self) -> tuple[dict[str, str], dict[str, str]]:
        """(neighbour VTEP IP -> MAC, FDB MAC -> node address) now on the device."""
        with _ipr() as ipr:
            idx = _index(ipr, self.device)
            return self._entries(ipr, idx) if idx is not None else ({}, {})

    def remove(self) -> bool:
        """Delete vxlan.calico (its routes, neighbours and FDB entries go with it)."""
        with _ipr() as ipr:
            idx = _index(ipr, self.device)
            if idx is None:
                return False
            ipr.link("del", index=idx)
            return True

    @staticmethod
    def _entries(ipr, idx: int) -> tuple[dict[str, str], dict[str, str]]:
        neigh = {}
        for n in ipr.get_neighbours(family=socket.AF_INET, ifindex=idx):
            if n.get("lladdr") and n["state"] & NUD_PERMANENT:
                neigh[n.get("dst")] = n.get("lladdr").lower()
        fdb = {}
        for n in ipr.get_neighbours(family=socket.AF_BRIDGE, ifindex=idx):
            mac, dst = n.get("lladdr"), n.get("dst")
            if mac and dst and mac != "00:00:00:00:00:00":
                fdb[mac.lower()] = dst
        return neigh, fdb

    @staticmethod
    def _try(result: TunnelResult, what: str, call, *args, NetlinkError, removed=False, **kw):
        try:
            call(*args, **kw)
            (result.removed if removed else result.added).append(what)
        except NetlinkError as e:
            result.errors.append(f"{what}: {e}")
