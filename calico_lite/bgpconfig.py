"""BGP configuration in the datastore, and the pure step from it to one node's SpeakerConfig.

Three kinds of records, as in Calico (BGPConfiguration, BGPPeer, Node.spec.bgp):

    /calico-lite/bgp/config            global: AS number, node-to-node mesh, hold time, GR
    /calico-lite/bgp/peers/NAME        a peer: an address (a ToR, an external RR) or the nodes
                                       a peerSelector picks, for the nodes a nodeSelector picks
    /calico-lite/bgp/nodes/NAME        per node: AS number, router id, labels, RR cluster id
    /calico-lite/bgp/secrets/NAME      a password for TCP MD5 (`{"password": ...}`)
    /calico-lite/bgp/filters/NAME      import/export rules a peer names (calico_lite.bgpexport)

`node_speaker_config` turns those (plus what each agent registered about its node: address,
labels) into the node's SpeakerConfig. It is the only place the topology rules live: mesh,
explicit peers, route reflectors and their clients.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from bgp.bfd import BfdConfig
from bgp.config import PeerConfig, SpeakerConfig
from bgp.export import parse_community, parse_large_community
from bgp.imports import DEFAULT_MAX_PREFIXES
from calico_lite import keys
from calico_lite.peer_selector import SelectorError, parse_selector
from calico_lite.services import ServiceRanges, parse_cidrs

DEFAULT_AS = 64512
DEFAULT_HOLD = 9
DEFAULT_GRACEFUL_RESTART = 10   # s: covers an ExaBGP restart (~2 s); a killed node goes after it
RR_LABEL = "route-reflector"


@dataclass(frozen=True)
class BgpGlobal:
    as_number: int = DEFAULT_AS
    mesh: bool = True
    hold_time: int = DEFAULT_HOLD
    graceful_restart: int = DEFAULT_GRACEFUL_RESTART
    # Service address advertisement (calico_lite.services): CIDRs every node announces
    service_cluster_ips: tuple[str, ...] = ()
    service_external_ips: tuple[str, ...] = ()
    service_loadbalancer_ips: tuple[str, ...] = ()
    max_prefixes: int = DEFAULT_MAX_PREFIXES   # per peer, unless the peer record sets its own

    @classmethod
    def from_dict(cls, d: Mapping) -> "BgpGlobal":
        return cls(as_number=int(d.get("asNumber", DEFAULT_AS)),
                   mesh=bool(d.get("nodeToNodeMesh", True)),
                   hold_time=int(d.get("holdTime", DEFAULT_HOLD)),
                   graceful_restart=int(d.get("gracefulRestart", DEFAULT_GRACEFUL_RESTART)),
                   max_prefixes=int(d.get("maxPrefixes", DEFAULT_MAX_PREFIXES)),
                   **{f: parse_cidrs(d.get(k) or (), k) for f, k in SERVICE_FIELDS.items()})

    def to_dict(self) -> dict:
        return {"asNumber": self.as_number, "nodeToNodeMesh": self.mesh,
                "holdTime": self.hold_time, "gracefulRestart": self.graceful_restart,
                "maxPrefixes": self.max_prefixes,
                **{k: list(getattr(self, f)) for f, k in SERVICE_FIELDS.items()}}

    @property
    def service_ranges(self) -> ServiceRanges:
        return ServiceRanges(self.service_cluster_ips, self.service_external_ips,
                             self.service_loadbalancer_ips)


# BgpGlobal field -> its key in the record (Calico's BGPConfiguration spelling)
SERVICE_FIELDS = {"service_cluster_ips": "serviceClusterIPs",
                  "service_external_ips": "serviceExternalIPs",
                  "service_loadbalancer_ips": "serviceLoadBalancerIPs"}


@dataclass(frozen=True)
class BgpPeer:
    """Either peer_ip + as_number, or peer_selector (those nodes, with their own AS)."""

    name: str
    peer_ip: str = ""
    as_number: int = 0
    node_selector: str = "all()"
    peer_selector: str = ""
    node: str = ""                 # only this node (instead of node_selector)
    password_secret: str = ""
    hold_time: int = 0             # 0: the global hold time
    max_prefixes: int = 0          # 0: the global limit
    # on everything announced to this peer; its BGPFilters, in order (calico_lite.bgpexport)
    communities: tuple[str, ...] = ()
    large_communities: tuple[str, ...] = ()
    filters: tuple[str, ...] = ()
    bfd: BfdConfig | None = None   # BFD with this peer (bgp.bfd), off when None

    def __post_init__(self) -> None:
        if bool(self.peer_ip) == bool(self.peer_selector):
            raise ValueError(f"BGP peer {self.name}: give either a peer IP or a peer selector")
        if self.peer_ip:
            ipaddress.IPv4Address(self.peer_ip)
            if not 0 < self.as_number < 2 ** 32:
                raise ValueError(f"BGP peer {self.name}: AS number {self.as_number} out of range")
        for sel in (self.node_selector, self.peer_selector):
            parse_selector(sel)
        if self.hold_time and not 3 <= self.hold_time <= 65535:
            raise ValueError(f"BGP peer {self.name}: hold time must be 3..65535 s")
        if self.max_prefixes < 0:
            raise ValueError(f"BGP peer {self.name}: max prefixes must be 0 (global) or more")
        try:
            object.__setattr__(self, "communities", tuple(map(parse_community, self.communities)))
            object.__setattr__(self, "large_communities",
                               tuple(map(parse_large_community, self.large_communities)))
        except ValueError as e:
            raise ValueError(f"BGP peer {self.name}: {e}") from None

    @classmethod
    def from_dict(cls, d: Mapping) -> "BgpPeer":
        return cls(name=d["name"], peer_ip=d.get("peerIP", ""), as_number=int(d.get("asNumber", 0)),
                   node_selector=d.get("nodeSelector", "all()"),
                   peer_selector=d.get("peerSelector", ""), node=d.get("node", ""),
                   password_secret=d.get("passwordSecret", ""), hold_time=int(d.get("holdTime", 0)),
                   max_prefixes=int(d.get("maxPrefixes", 0)),
                   communities=tuple(d.get("communities") or ()),
                   large_communities=tuple(d.get("largeCommunities") or ()),
                   filters=tuple(d.get("filters") or ()),
                   bfd=bfd_from(d.get("bfd")))

    def to_dict(self) -> dict:
        return {"name": self.name, "peerIP": self.peer_ip, "asNumber": self.as_number,
                "nodeSelector": self.node_selector, "peerSelector": self.peer_selector,
                "node": self.node, "passwordSecret": self.password_secret,
                "holdTime": self.hold_time, "maxPrefixes": self.max_prefixes,
                "communities": list(self.communities),
                "largeCommunities": list(self.large_communities), "filters": list(self.filters),
                **({"bfd": {"intervalMs": self.bfd.interval_ms, "multiplier": self.bfd.multiplier}}
                   if self.bfd else {})}


def bfd_from(d: Mapping | None) -> BfdConfig | None:
    """A peer record's `bfd` ({intervalMs, multiplier}, absent or null: off)."""
    if not d:
        return None
    return BfdConfig(interval_ms=int(d.get("intervalMs", BfdConfig.interval_ms)),
                     multiplier=int(d.get("multiplier", BfdConfig.multiplier)))


@dataclass(frozen=True)
class NodeBgp:
    """A node as BGP sees it: the agent's registration merged with the operator's settings."""

    name: str
    address: str
    as_number: int | None = None
    router_id: str = ""
    cluster_id: str = ""           # set: this node is a route reflector
    labels: Mapping[str, str] = field(default_factory=dict)


def merge_nodes(registered: Mapping[str, Mapping], settings: Mapping[str, Mapping],
                kube_nodes: Mapping[str, Mapping] | None = None) -> dict[str, NodeBgp]:
    """Node records (keys.NODES, written by agents) + BGP node settings (keys.BGP_NODES, written
    by `calico-lite node set`) + the Kubernetes Nodes (keys.K8S_NODES, mirrored by kube-sync)
    -> name -> NodeBgp. Settings win; labels are merged: the Kubernetes Node's, then the
    agent's `--label`s, then `node set --label`s (so `rack == "rack1"` selects the nodes an
    operator labelled in Kubernetes, as Calico's node selectors do)."""
    out: dict[str, NodeBgp] = {}
    for key, reg in registered.items():
        name = reg.get("name") or key.rsplit("/", 1)[-1]
        st = settings.get(keys.bgp_node(name), {})
        kube = (kube_nodes or {}).get(keys.k8s_node(name), {})
        labels = {**kube.get("labels", {}), **reg.get("labels", {}), **st.get("labels", {})}
        asn = st.get("asNumber")
        out[name] = NodeBgp(name=name, address=reg.get("address", ""),
                            as_number=int(asn) if asn else None,
                            router_id=st.get("routerId", ""),
                            cluster_id=st.get("routeReflectorClusterId", ""), labels=labels)
    return out


def node_speaker_config(
    node: str,
    nodes: Mapping[str, NodeBgp],
    glob: BgpGlobal | None,
    peers: list[BgpPeer],
    secrets: Mapping[str, str],
    *,
    local_address: str,
    default_as: int,
    default_router_id: str = "",
    static_peers: tuple[PeerConfig, ...] = (),
    listen: bool = False,
) -> tuple[SpeakerConfig, list[str]]:
    """This node's SpeakerConfig and the problems found (a missing secret, a bad selector).

    With no global record (`glob` None) only `static_peers` (the agent's --peer flags) apply,
    as before the datastore held BGP configuration. Otherwise: the mesh (every other node,
    iBGP) if on, plus each BGPPeer whose node selector picks this node; explicit peers win
    over mesh entries for the same address. A route reflector (node with a cluster id) treats
    every iBGP node peer that is not a reflector of the same cluster as its client.
    """
    me = nodes.get(node) or NodeBgp(name=node, address=local_address)
    g = glob or BgpGlobal(as_number=default_as, mesh=False)
    local_as = me.as_number or (g.as_number if glob else default_as)
    chosen = _PeerChoice(node, me, nodes, g, local_as, local_address,
                         {p.address: p for p in static_peers})
    if glob is not None:
        if g.mesh:
            for other in chosen.others(lambda n: True):
                chosen.add(other.address, chosen.node_as(other), 0, None,
                           f"node-to-node mesh ({other.name})")
        for p in sorted(peers, key=lambda p: p.name):
            try:
                chosen.add_peer(p, secrets)
            except SelectorError as e:
                chosen.problems.append(f"BGP peer {p.name}: {e}")
    by_addr = chosen.by_addr
    cfg = SpeakerConfig(router_id=me.router_id or default_router_id or local_address,
                        local_address=local_address, local_as=local_as,
                        peers=[by_addr[a] for a in sorted(by_addr, key=ipaddress.IPv4Address)],
                        listen=listen or glob is not None,
                        graceful_restart=g.graceful_restart if glob is not None else 0,
                        cluster_id=me.cluster_id)
    return cfg, chosen.problems


@dataclass
class _PeerChoice:
    """The peers node_speaker_config is choosing for one node, by address, as it goes."""

    node: str
    me: NodeBgp
    nodes: Mapping[str, NodeBgp]
    g: BgpGlobal
    local_as: int
    local_address: str
    by_addr: dict[str, PeerConfig]
    problems: list[str] = field(default_factory=list)

    def node_as(self, n: NodeBgp) -> int:
        return n.as_number or self.g.as_number

    def others(self, pick) -> list[NodeBgp]:
        """The other nodes with an address that pick(node) selects, by name."""
        return [o for o in sorted(self.nodes.values(), key=lambda n: n.name)
                if o.name != self.node and o.address and pick(o)]

    def add(self, address: str, asn: int, hold: int, password: str | None,
            description: str, max_prefixes: int = 0, record: BgpPeer | None = None) -> None:
        if address == self.local_address or not address:
            return
        other = next((n for n in self.nodes.values() if n.address == address), None)
        client = bool(self.me.cluster_id and other is not None and asn == self.local_as
                      and other.cluster_id != self.me.cluster_id)
        self.by_addr[address] = PeerConfig(address=address, peer_as=asn,
                                           hold_time=hold or self.g.hold_time,
                                           md5_password=password, description=description,
                                           route_reflector_client=client,
                                           max_prefixes=max_prefixes or self.g.max_prefixes,
                                           **_export_fields(record))

    def add_peer(self, p: BgpPeer, secrets: Mapping[str, str]) -> None:
        """One BGPPeer record: peer back if its peer selector picks this node, then peer
        with what it names if its node (selector) picks this node."""
        me = self.me
        if p.node:
            selected = p.node == self.node
        else:
            selected = parse_selector(p.node_selector).matches(me.labels)
        if p.peer_selector and parse_selector(p.peer_selector).matches(me.labels):
            # the other side of a node-to-node peering (as Calico): peer back with
            # the nodes the record selects, e.g. a route reflector with its clients
            password = secrets.get(p.password_secret) if p.password_secret else None
            if password or not p.password_secret:
                picks = (lambda o: o.name == p.node) if p.node else \
                    (lambda o: parse_selector(p.node_selector).matches(o.labels))
                for other in self.others(picks):
                    if other.address not in self.by_addr:   # an address chosen already stays
                        self.add(other.address, self.node_as(other), p.hold_time, password,
                                 f"peer {p.name} ({other.name})", p.max_prefixes, p)
        if not selected:
            return
        password = None
        if p.password_secret:
            password = secrets.get(p.password_secret)
            if password is None:
                self.problems.append(f"BGP peer {p.name}: secret {p.password_secret} not found; "
                                     "peer left out")
                return
        if p.peer_ip:
            self.add(p.peer_ip, p.as_number, p.hold_time, password, f"peer {p.name}",
                     p.max_prefixes, p)
            return
        sel = parse_selector(p.peer_selector)
        for other in self.others(lambda o: sel.matches(o.labels)):
            self.add(other.address, self.node_as(other), p.hold_time, password,
                     f"peer {p.name} ({other.name})", p.max_prefixes, p)


def _export_fields(p: BgpPeer | None) -> dict:
    """A peer record's communities, filter names and BFD, as PeerConfig carries them."""
    if p is None:
        return {}
    return {"communities": p.communities, "large_communities": p.large_communities,
            "filters": p.filters, "bfd": p.bfd}


def secrets_from(items: Mapping[str, Mapping]) -> dict[str, str]:
    """keys.BGP_SECRETS entries -> name -> password."""
    return {k.rsplit("/", 1)[-1]: str(v.get("password", "")) for k, v in items.items()}


def peers_from(items: Mapping[str, Mapping]) -> tuple[list[BgpPeer], list[str]]:
    out, problems = [], []
    for k, v in items.items():
        try:
            out.append(BgpPeer.from_dict(v))
        except (ValueError, KeyError) as e:
            problems.append(f"BGP peer record {k}: {e}")
    return out, problems
