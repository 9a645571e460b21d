"""Plain records shared by the BGP modules (no behaviour, no I/O)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class LearnedPath:
    """One path to a prefix as received from one peer."""

    next_hop: str
    peer: str
    as_path: tuple[int, ...] = ()


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


@dataclass(frozen=True)
class Route:
    """A kernel route to program: one prefix, one or more (ECMP) next hops."""

    prefix: str
    next_hops: tuple[str, ...] = field(default=())
