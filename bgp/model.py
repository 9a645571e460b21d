"""Plain records shared by the BGP modules (no behaviour, no I/O)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class LearnedPath:
    """One path to a prefix as received from one peer."""

    next_hop: str
    peer: str
    as_path: tuple[int, ...] = ()
    originator_id: str = ""               # set by a route reflector (RFC 4456)
    cluster_list: tuple[str, ...] = ()    # reflectors the path went through, nearest first


@dataclass(frozen=True)
class PeerState:
    """What an operator wants to see per neighbour (`calico-lite bgp status`)."""

    address: str
    peer_as: int
    state: str = "Idle"          # Idle | Connect | Established
    since: float = 0.0           # time.time() of the last state change
    received: int = 0            # prefixes currently learned from this peer
    sent: int = 0                # prefixes we announce to it (0 unless Established)
    reason: str = ""             # why the session last went down
    description: str = ""        # where the peer comes from (mesh, a BGPPeer name, ...)


@dataclass(frozen=True)
class Route:
    """A kernel route to program: one prefix, one or more (ECMP) next hops.

    encap "none" is a plain route via the next hops; "ipip" goes `via NODE dev tunl0 onlink`,
    "vxlan" goes `via REMOTE-VTEP-IP dev vxlan.calico onlink` (next_hops then hold VTEP IPs).
    """

    prefix: str
    next_hops: tuple[str, ...] = field(default=())
    encap: str = "none"


@dataclass(frozen=True)
class PoolEncap:
    """How an IP pool wants its prefixes carried: encapsulation none|ipip|vxlan and mode
    Never|Always|CrossSubnet (Calico's semantics)."""

    cidr: str
    encapsulation: str = "none"
    mode: str = "Never"


@dataclass(frozen=True)
class RemoteNode:
    """Another node as the encapsulation needs it: its underlay address and, for VXLAN,
    the VTEP (tunnel) address and MAC it published."""

    address: str
    vtep_ip: str = ""
    vtep_mac: str = ""


@dataclass(frozen=True)
class Failure:
    """Kernel state we could not program (a route, a tunnel device or entry), and why:
    what the operator reads in `node status`."""

    what: str
    reason: str

    def __str__(self) -> str:
        return f"{self.what}: {self.reason}"


@dataclass
class Changes:
    """What one event did: `changed` (learned paths or peer states: recompute routes),
    `commands` for ExaBGP in order, and `expire_in` (s) when to call expire() again."""

    changed: bool = False
    commands: list[str] = field(default_factory=list)
    expire_in: float | None = None
