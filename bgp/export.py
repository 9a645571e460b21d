"""What we announce to each peer, with which communities (pure).

The node announces its own prefixes (blocks, borrowed /32s, Service prefixes). Per peer:

- the peer's export filters (bgp.filters) decide whether a prefix goes to it at all;
- a prefix inside a pool carries the pool's communities, and everything announced to a
  peer carries the peer's communities too (standard RFC 1997 `A:B`, large RFC 8092 `A:B:C`).

`announcements` computes peer -> prefix -> Attributes (and the prefixes the filters kept
back, as bgp.imports.Rejected rows with direction "export"); `export_commands` turns what
ExaBGP was told into what it should be told, with one global command where every peer gets
the same, and `neighbor X ...` commands where they differ.
"""
from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .filters import BgpFilter, decide
from .imports import Rejected

__all__ = ["Attributes", "PeerExport", "ExportPolicy", "parse_community",
           "parse_large_community", "announcements", "export_commands", "route_command"]

WELL_KNOWN = ("no-export", "no-advertise", "no-export-subconfed")
Announced = dict[str, dict[str, "Attributes"]]   # peer -> prefix -> attributes


def parse_community(value: str) -> str:
    """A standard community `A:B` (each 0..65535) or a well-known name, normalised;
    ValueError naming the value otherwise."""
    v = str(value).strip()
    if v.lower() in WELL_KNOWN:
        return v.lower()
    m = re.fullmatch(r"(\d+):(\d+)", v)
    if not m or any(int(x) > 65535 for x in m.groups()):
        raise ValueError(f"community {value!r}: expected A:B with A and B in 0..65535 "
                         f"(or one of {', '.join(WELL_KNOWN)})")
    return f"{int(m[1])}:{int(m[2])}"


def parse_large_community(value: str) -> str:
    """A large community `A:B:C` (each 0..4294967295), normalised; ValueError otherwise."""
    v = str(value).strip()
    m = re.fullmatch(r"(\d+):(\d+):(\d+)", v)
    if not m or any(int(x) > 2 ** 32 - 1 for x in m.groups()):
        raise ValueError(f"large community {value!r}: expected A:B:C with each in "
                         "0..4294967295")
    return ":".join(str(int(x)) for x in m.groups())


@dataclass(frozen=True)
class Attributes:
    """The path attributes we set on one announcement (besides next-hop self)."""

    communities: tuple[str, ...] = ()
    large_communities: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for c in self.communities:
            parse_community(c)
        for c in self.large_communities:
            parse_large_community(c)

    def plus(self, other: "Attributes") -> "Attributes":
        return Attributes(tuple(dict.fromkeys(self.communities + other.communities)),
                          tuple(dict.fromkeys(self.large_communities + other.large_communities)))

    def text(self) -> str:
        """The ExaBGP route attributes, e.g. ` community [65000:100] large-community [1:2:3]`."""
        out = ""
        if self.communities:
            out += f" community [ {' '.join(self.communities)} ]"
        if self.large_communities:
            out += f" large-community [ {' '.join(self.large_communities)} ]"
        return out


@dataclass(frozen=True)
class PeerExport:
    attributes: Attributes = Attributes()
    filters: tuple[BgpFilter, ...] = ()    # in the order the peer names them


@dataclass(frozen=True)
class ExportPolicy:
    """Frozen values (equal policy, equal announcements): pool CIDR -> its communities, and
    peer address -> its communities and filters. Peers not listed get everything, plain."""

    pools: tuple[tuple[str, Attributes], ...] = ()
    peers: tuple[tuple[str, PeerExport], ...] = ()

    def peer(self, address: str) -> PeerExport:
        return dict(self.peers).get(address, PeerExport())

    def pool_attributes(self, prefix: str) -> Attributes:
        """The communities of the most specific pool holding prefix (none outside pools)."""
        net = ipaddress.IPv4Network(prefix)
        inside = [(ipaddress.IPv4Network(c), a) for c, a in self.pools
                  if net.subnet_of(ipaddress.IPv4Network(c))]
        return max(inside, key=lambda t: t[0].prefixlen)[1] if inside else Attributes()


def announcements(prefixes: Iterable[str], peers: Iterable[str], policy: ExportPolicy
                  ) -> tuple[Announced, tuple[Rejected, ...]]:
    """peer -> prefix -> attributes for every peer, and the (peer, prefix) pairs an export
    filter kept back."""
    own = sorted({str(ipaddress.IPv4Network(p)) for p in prefixes}, key=_sort_key)
    pool_attrs = {p: policy.pool_attributes(p) for p in own}
    out: Announced = {}
    rejected: list[Rejected] = []
    for peer in sorted(set(peers)):
        export = policy.peer(peer)
        routes: dict[str, Attributes] = {}
        for prefix in own:
            verdict = decide(prefix, export.filters, "export")
            if verdict.accepted:
                routes[prefix] = pool_attrs[prefix].plus(export.attributes)
            else:
                rejected.append(Rejected(peer, prefix, "self", f"filter:{verdict.filter}",
                                         f"not announced: export {verdict.reason}", "export"))
        out[peer] = routes
    return out, tuple(rejected)


def route_command(verb: str, prefix: str, attrs: Attributes | None = None) -> str:
    return f"{verb} route {prefix} next-hop self" + (attrs.text() if attrs else "")


def export_commands(told: Mapping[str, Mapping[str, Attributes]], plan: Announced,
                    peers: Sequence[str]) -> list[str]:
    """ExaBGP commands turning `told` (what it was told, per peer) into `plan`. A change the
    same for every peer in `peers` is one global command (as many commands as without
    filters or communities), otherwise one `neighbor X` command per peer."""
    everyone = set(peers)
    names = sorted(everyone | set(told) | set(plan))
    prefixes = sorted({p for d in (*told.values(), *plan.values()) for p in d}, key=_sort_key)
    out: list[str] = []
    for prefix in prefixes:
        changes: dict[tuple[str, Attributes | None], list[str]] = {}
        for peer in names:
            was, want = told.get(peer, {}).get(prefix), plan.get(peer, {}).get(prefix)
            if want is None and was is not None:
                changes.setdefault(("withdraw", None), []).append(peer)
            elif want is not None and want != was:
                changes.setdefault(("announce", want), []).append(peer)
        for (verb, attrs), who in changes.items():
            line = route_command(verb, prefix, attrs)
            if everyone and set(who) == everyone:
                out.append(line)
            else:
                out += [f"neighbor {peer} {line}" for peer in who]
    return out


def _sort_key(prefix: str):
    n = ipaddress.IPv4Network(prefix)
    return (int(n.network_address), n.prefixlen)
