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

from pyroute2.netlink.exceptions import NetlinkError

from bgp.model import Failure, PoolEncap, RemoteNode
from bgp.tunnels import EncapUnavailable, IpipTunnel, VxlanTunnel
from calico_lite import keys
from calico_lite.blocks import IpamError, Pool
from calico_lite.datastore import Datastore, DatastoreUnavailable
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
    return encaps_in_use(pool_encaps(pools))


def encaps_in_use(pools: list[PoolEncap] | tuple[PoolEncap, ...]) -> set[str]:
    return {p.encapsulation for p in pools if p.encapsulation != "none" and p.mode != "Never"}


def remote_nodes(nodes: dict[str, dict], me: str) -> dict[str, RemoteNode]:
    """Other nodes by underlay address, with the VTEP each published (if any)."""
    out = {}
    for key, n in nodes.items():
        if key == keys.node(me) or not n.get("address"):
            continue
        out[n["address"]] = RemoteNode(n["address"], n.get(VXLAN_ADDRESS, ""), n.get(VXLAN_MAC, ""))
    return out


@dataclass(frozen=True)
class TunnelInputs:
    """What the tunnel devices are computed from, as values (equal inputs, same devices)."""

    pools: tuple[PoolEncap, ...] = ()
    any_pool: bool = False      # no pool record at all: the cache has not synced yet
    remotes: tuple[RemoteNode, ...] = ()
    vxlan_address: str = ""
    vxlan_mac: str = ""
    ipip_address: str = ""

    @classmethod
    def from_records(cls, pools: dict[str, dict], nodes: dict[str, dict], me: str) -> "TunnelInputs":
        mine = nodes.get(keys.node(me)) or {}
        return cls(tuple(pool_encaps(dict(sorted(pools.items())))), bool(pools),
                   tuple(r for _, r in sorted(remote_nodes(nodes, me).items())),
                   mine.get(VXLAN_ADDRESS, ""), mine.get(VXLAN_MAC, ""), mine.get(IPIP_ADDRESS, ""))

    @property
    def wanted(self) -> set[str]:
        return encaps_in_use(self.pools)


def tunnel_handle(node: str, encap: str) -> str:
    """The IPAM handle of a node's tunnel address (like Calico's vxlan-tunnel-addr-NODE)."""
    return f"{encap}-tunnel-addr-{node}"


# --- on agent start ----------------------------------------------------------------------
# what a tunnel setup may fail with; the agent still serves pods and plain routes without it
SETUP_ERRORS = (NetlinkError, OSError, IpamError, DatastoreUnavailable)  # PoolExhausted is an IpamError


def setup_node_tunnels(ds: Datastore, ipam: Ipam, node: str,
                       address: str) -> tuple[dict, list[Failure]]:
    """Tunnel addresses and devices for this node: the fields for its node record, and
    what could not be set up (for `node status`).

    A tunnel address stays assigned across restarts (same handle), and the VTEP MAC is
    reused from the record, so a restarted agent publishes exactly what it did before.
    """
    pools = {e.key: e.value for e in ds.list(keys.POOLS)}
    old = ds.get(keys.node(node))
    previous = old.value if old else {}
    fields: dict = {}
    failures: list[Failure] = []
    encaps = wanted_encaps(pools)
    if "vxlan" in encaps:
        try:
            ip = ipam.assign(tunnel_handle(node, "vxlan"), {"tunnel": "vxlan"}).ip
            mac = VxlanTunnel().ensure(address, ip, previous.get(VXLAN_MAC) or None)
            fields.update({VXLAN_ADDRESS: ip, VXLAN_MAC: mac})
            log.info(json.dumps({"event": "vxlan-tunnel", "address": ip, "mac": mac}))
        except SETUP_ERRORS as e:
            failures.append(Failure("vxlan.calico setup", str(e)))
            log.error(json.dumps({"event": "vxlan-setup-failed", "error": str(e)}))
    if "ipip" in encaps:
        ipip = IpipTunnel()
        if not ipip.available():
            log.warning(json.dumps({"event": "ipip-unavailable", "reason":
                                    "IPIP unavailable: this kernel has no ipip support"}))
            return fields, failures
        try:
            ip = ipam.assign(tunnel_handle(node, "ipip"), {"tunnel": "ipip"}).ip
            ipip.ensure(ip)
            fields[IPIP_ADDRESS] = ip
            log.info(json.dumps({"event": "ipip-tunnel", "address": ip}))
        except SETUP_ERRORS as e:
            failures.append(Failure("tunl0 setup", str(e)))
            log.error(json.dumps({"event": "ipip-setup-failed", "error": str(e)}))
    return fields, failures


# --- every routing sync ------------------------------------------------------------------
@dataclass
class TunnelState:
    """What the route planner needs from the tunnels, and what to tell the operator."""

    pools: list[PoolEncap] = field(default_factory=list)
    remotes: dict[str, RemoteNode] = field(default_factory=dict)
    supported: set[str] = field(default_factory=lambda: {"none"})
    notes: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)


class TunnelSync:
    """Keeps vxlan.calico / tunl0 and the per-peer VXLAN entries equal to the datastore."""

    def __init__(self, node: str, address: str):
        self.node = node
        self.address = address
        self.vxlan = VxlanTunnel()
        self.ipip = IpipTunnel()
        self._logged: set[str] = set()

    def sync(self, inputs: TunnelInputs) -> TunnelState:
        """Make the devices match inputs; what failed goes to notes (as before) and failures."""
        state = TunnelState(pools=list(inputs.pools),
                            remotes={r.address: r for r in inputs.remotes})
        encaps = inputs.wanted
        if "vxlan" in encaps:
            self._sync_vxlan(inputs, state)
        elif inputs.any_pool and self.vxlan.mac() is not None:  # no pools: not synced yet, keep
            self.vxlan.remove()
            log.info(json.dumps({"event": "vxlan-removed", "reason": "no pool uses vxlan"}))
        if "ipip" in encaps:
            try:
                self.ipip.ensure(inputs.ipip_address or None)
                state.supported.add("ipip")
            except EncapUnavailable as e:
                state.failures.append(Failure(self.ipip.device, str(e)))
                state.notes.append(f"{e} (a pool asks for ipip; cross-subnet routes of that "
                                   f"pool are not installed)")
        for note in state.notes:
            if note not in self._logged:
                log.warning(json.dumps({"event": "tunnel-note", "note": note}))
                self._logged.add(note)
        return state

    def _sync_vxlan(self, inputs: TunnelInputs, state: TunnelState) -> None:
        if not (inputs.vxlan_address and inputs.vxlan_mac):
            state.notes.append("VXLAN pool but no VXLAN tunnel address published for this "
                               "node (restart the agent to allocate one)")
            return
        try:
            self.vxlan.ensure(self.address, inputs.vxlan_address, inputs.vxlan_mac)
        except (NetlinkError, OSError) as e:
            failure = Failure(self.vxlan.device, str(e))
            state.failures.append(failure)
            state.notes.append(f"vxlan: {failure}")
            return
        result = self.vxlan.sync_peers(inputs.remotes)
        state.notes += [f"vxlan: {e}" for e in result.errors]
        state.failures += [Failure(self.vxlan.device, e) for e in result.errors]
        if result.changed:
            log.info(json.dumps({"event": "vxlan-peers", "added": result.added,
                                 "removed": result.removed}))
        state.supported.add("vxlan")
