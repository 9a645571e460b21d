"""Pure IPAM arithmetic: pools split into blocks, blocks hold numbered addresses.

No I/O here, so every rule about which address or block comes next is unit-tested.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Iterator

from bgp.encap import ENCAPSULATIONS, MODES as ENCAP_MODES  # one table of encapsulations
from bgp.export import parse_community, parse_large_community


class IpamError(Exception):
    """Invalid pool or block data (what is wrong and where)."""


@dataclass(frozen=True)
class Pool:
    name: str
    cidr: str
    block_size: int = 26
    encapsulation: str = "none"
    encap_mode: str = "Never"
    nat_outgoing: bool = False
    disabled: bool = False
    # BGP communities on the pool's blocks and borrowed /32s (bgp.export)
    communities: tuple[str, ...] = ()
    large_communities: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        try:
            net = ipaddress.ip_network(self.cidr, strict=True)
        except ValueError as e:
            raise IpamError(f"pool {self.name}: cidr {self.cidr!r}: {e}") from None
        if not net.prefixlen <= self.block_size <= net.max_prefixlen:
            raise IpamError(f"pool {self.name}: blockSize {self.block_size} must be between "
                            f"the pool's prefix length {net.prefixlen} and {net.max_prefixlen}")
        if self.encapsulation not in ENCAPSULATIONS:
            raise IpamError(f"pool {self.name}: encapsulation {self.encapsulation!r} "
                            f"is not one of {', '.join(ENCAPSULATIONS)}")
        if self.encap_mode not in ENCAP_MODES:
            raise IpamError(f"pool {self.name}: encapsulation mode {self.encap_mode!r} "
                            f"is not one of {', '.join(ENCAP_MODES)}")
        try:
            object.__setattr__(self, "communities", tuple(map(parse_community, self.communities)))
            object.__setattr__(self, "large_communities",
                               tuple(map(parse_large_community, self.large_communities)))
        except ValueError as e:
            raise IpamError(f"pool {self.name}: {e}") from None

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(self.cidr)

    def block_cidrs(self) -> Iterator[str]:
        """Every block of the pool, in address order."""
        for net in self.network.subnets(new_prefix=self.block_size):
            yield str(net)

    def to_dict(self) -> dict:
        return {"name": self.name, "cidr": self.cidr, "blockSize": self.block_size,
                "encapsulation": self.encapsulation, "encapMode": self.encap_mode,
                "natOutgoing": self.nat_outgoing, "disabled": self.disabled,
                **({"communities": list(self.communities)} if self.communities else {}),
                **({"largeCommunities": list(self.large_communities)}
                   if self.large_communities else {})}

    @classmethod
    def from_dict(cls, d: dict) -> "Pool":
        return cls(name=d["name"], cidr=d["cidr"], block_size=int(d.get("blockSize", 26)),
                   encapsulation=d.get("encapsulation", "none"),
                   encap_mode=d.get("encapMode", "Never"),
                   nat_outgoing=bool(d.get("natOutgoing", False)),
                   disabled=bool(d.get("disabled", False)),
                   communities=tuple(d.get("communities") or ()),
                   large_communities=tuple(d.get("largeCommunities") or ()))


@dataclass
class Block:
    """An address block with the node it is affine to and its assignments (offset -> handle)."""
    cidr: str
    affinity: str | None
    pool: str
    allocations: dict[int, str] = field(default_factory=dict)
    empty_since: float | None = None  # set when the last address is released

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(self.cidr)

    @property
    def size(self) -> int:
        return self.network.num_addresses

    def free_offset(self) -> int | None:
        """Lowest unassigned offset, or None when full."""
        for offset in range(self.size):
            if offset not in self.allocations:
                return offset
        return None

    def address(self, offset: int) -> str:
        if not 0 <= offset < self.size:
            raise IpamError(f"offset {offset} outside block {self.cidr}")
        return str(self.network.network_address + offset)

    def offset(self, ip: str) -> int:
        addr = ipaddress.ip_address(ip)
        if addr not in self.network:
            raise IpamError(f"{ip} is not in block {self.cidr}")
        return int(addr) - int(self.network.network_address)

    def to_dict(self) -> dict:
        d = {"cidr": self.cidr, "affinity": self.affinity, "pool": self.pool,
             "allocations": {str(k): v for k, v in sorted(self.allocations.items())}}
        if self.empty_since is not None and not self.allocations:
            d["emptySince"] = self.empty_since
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Block":
        return cls(cidr=d["cidr"], affinity=d.get("affinity"), pool=d.get("pool", ""),
                   allocations={int(k): v for k, v in d.get("allocations", {}).items()},
                   empty_since=d.get("emptySince"))


def handle_id(container_id: str, ifname: str) -> str:
    """The handle that records one attachment: containerID/ifname, the pair CNI identifies it by."""
    return f"{container_id}/{ifname}"


def pool_containing(pools: list[Pool], ip: str) -> Pool | None:
    addr = ipaddress.ip_address(ip)
    return next((p for p in pools if addr in p.network), None)
