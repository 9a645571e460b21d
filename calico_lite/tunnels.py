"""The node's tunnels (IPIP, VXLAN) between the datastore and bgp.tunnels.

Two halves. On start, the agent gives itself a tunnel address from IPAM (from its own block,
as Calico does) for each encapsulation an enabled pool uses, creates the device, and
publishes address and VTEP MAC in its node record, so the other nodes can build neighbour
and FDB entries. On every routing sync, `TunnelSync` keeps the devices and the per-peer
entries equal to what the datastore says, and tells the route planner which
encapsulations this kernel can actually do.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from bgp.model import PoolEncap, RemoteNode
from bgp.tunnels import EncapUnavailable, IpipTunnel, VxlanTunnel
from calico_lite import keys
from calico_lite.blocks import Pool
from calico_lite.datastore import Datastore
from calico_lite.ipam import Ipam

log = logging.getLogger("calico-lite.tunnels")

VXLAN_ADDRESS = "vxlanTunnelAddress"
VXLAN_MAC = "vxlanTunnelMac"
IPIP_ADDRESS = "ipipTunnelAddress"
TUNNEL_FIELDS = (VXLAN_ADDRESS, VXLAN_MAC, IPIP_ADDRESS)


# --- pure --------------------------------------------------------------------------------
def pool_encaps(pools: dict[str, dict]) -> list[PoolEncap]:
    """Enabled pools as the planner wants them (cidr, encapsulation, mode)."""
    out = []
    for d in pools.values():
        p = Pool.from_dict(d)
        if not p.disabled:
            out.append(PoolEncap(p.cidr, p.encapsulation, p.encap_mode))
    return out


def wanted_encaps(pools: dict[str, dict]) -> set[str]:
    """The encapsulations some enabled pool may use (mode other than Never)."""
    return {p.encapsulation for p in pool_encaps(pools)
            if p.encapsulation != "none" and p.mode != "Never"}


def remote_nodes(nodes: dict[str, dict], me: str) -> dict[str, RemoteNode]:
    """Other nodes by underlay address, with the VTEP each published (if any)."""
    out = {}
    for key, n in nodes.items():
        if key == keys.node(me) or not n.get("address"):
            continue
        out[n["address"]] = RemoteNode(n["address"], n.get(VXLAN_ADDRESS, ""), n.get(VXLAN_MAC, ""))
    return out


def tunnel_handle(node: str, encap: str) -> str:
    """The IPAM handle of a node's tunnel address (like Calico's vxlan-tunnel-addr-NODE)."""
    return f"{encap}-tunnel-addr-{node}"


# --- on agent start ----------------------------------------------------------------------
def setup_node_tunnels(ds: Datastore, ipam: Ipam, node: str, address: str) -> dict:
    """Tunnel addresses and devices for this node; returns the fields for its node record.

    A tunnel address stays assigned across restarts (same handle), and the VTEP MAC is
    reused from the record, so a restarted agent publishes exactly what it did before.
    """
    pools = {e.key: e.value for e in ds.list(keys.POOLS)}
    old = ds.get(keys.node(node))
    previous = old.value if old else {}
    fields: dict = {}
    encaps = wanted_encaps(pools)
    if "vxlan" in encaps:
        try:
            ip = ipam.assign(tunnel_handle(node, "vxlan"), {"tunnel": "vxlan"}).ip
            mac = VxlanTunnel().ensure(address, ip, previous.get(VXLAN_MAC) or None)
            fields.update({VXLAN_ADDRESS: ip, VXLAN_MAC: mac})
            log.info(json.dumps({"event": "vxlan-tunnel", "address": ip, "mac": mac}))
        except Exception as e:  # the agent still serves pods and plain routes without it
            log.error(json.dumps({"event": "vxlan-setup-failed", "error": str(e)}))
    if "ipip" in encaps:
        ipip = IpipTunnel()
        if not ipip.available():
            log.warning(json.dumps({"event": "ipip-unavailable", "reason":
                                    "IPIP unavailable: this kernel has no ipip support"}))
            return fields
        try:
            ip = ipam.assign(tunnel_handle(node, "ipip"), {"tunnel": "ipip"}).ip
            ipip.ensure(ip)
            fields[IPIP_ADDRESS] = ip
            log.info(json.dumps({"event": "ipip-tunnel", "address": ip}))
        except Exception as e:
            log.error(json.dumps({"event": "ipip-setup-failed", "error": str(e)}))
    return fields


# --- every routing sync ------------------------------------------------------------------
@dataclass
class TunnelState:
    """What the route planner needs from the tunnels, and what to tell the operator."""

    pools: list[PoolEncap] = field(default_factory=list)
    remotes: dict[str, RemoteNode] = field(default_factory=dict)
    supported: set[str] = field(default_factory=lambda: {"none"})
    notes: list[str] = field(default_factory=list)


class TunnelSync:
    """Keeps vxlan.calico / tunl0 and the per-peer VXLAN entries equal to the datastore."""

    def __init__(self, node: str, address: str):
        self.node = node
        self.address = address
        self.vxlan = VxlanTunnel()
        self.ipip = IpipTunnel()
        self._logged: set[str] = set()

    def sync(self, pools: dict[str, dict], nodes: dict[str, dict]) -> TunnelState:
        state = TunnelState(pools=pool_encaps(pools), remotes=remote_nodes(nodes, self.node))
        encaps = wanted_encaps(pools)
        me = nodes.get(keys.node(self.node)) or {}
        if "vxlan" in encaps:
            if me.get(VXLAN_ADDRESS) and me.get(VXLAN_MAC):
                self.vxlan.ensure(self.address, me[VXLAN_ADDRESS], me[VXLAN_MAC])
                result = self.vxlan.sync_peers(state.remotes.values())
                state.notes += [f"vxlan: {e}" for e in result.errors]
                if result.changed:
                    log.info(json.dumps({"event": "vxlan-peers", "added": result.added,
                                         "removed": result.removed}))
                state.supported.add("vxlan")
            else:
                state.notes.append("VXLAN pool but no VXLAN tunnel address published for this "
                                   "node (restart the agent to allocate one)")
        elif pools and self.vxlan.mac() is not None:  # no pools at all: not synced yet, keep
            self.vxlan.remove()
            log.info(json.dumps({"event": "vxlan-removed", "reason": "no pool uses vxlan"}))
        if "ipip" in encaps:
            try:
                self.ipip.ensure(me.get(IPIP_ADDRESS))
                state.supported.add("ipip")
            except EncapUnavailable as e:
                state.notes.append(f"{e} (a pool asks for ipip; cross-subnet routes of that "
                                   f"pool are not installed)")
        for note in state.notes:
            if note not in self._logged:
                log.warning(json.dumps({"event": "tunnel-note", "note": note}))
                self._logged.add(note)
        return state
