"""The import policy of every BGP session: which learned prefixes may become kernel routes.

A pure calculation, run before bgp.routes plans the routes, so that a peer announcing what
it should not (a default route, someone else's range, a supernet of our pools, a block
another node owns, a flood of prefixes) never reaches the kernel:

- only prefixes inside a configured pool, of the pool's block size or longer (a block, or a
  /32 a node borrowed from another node's block) are accepted; a default route, a prefix
  outside every pool, and one shorter than the block size (it covers blocks or a pool) are
  rejected;
- a prefix inside a block that the datastore says is affine to node X (or a /32 it says node
  Y holds) is accepted only via that node's address; via a router (an address that is no
  node's) only when the owner is not on one of our subnets (then a router is its way here);
- per peer, at most `max_prefixes` prefixes (in the order the peer sent them) are accepted;
  the rest are rejected until the peer withdraws some;
- then the peer's import filters (bgp.filters, Calico's BGPFilter importV4 rules) may reject
  more of what is left (kind `filter:NAME`): they only narrow the rules above.

The inputs are plain values (calico_lite builds them from etcd); the answer is the accepted
paths plus one `Rejected` per refused path, with a short kind (a metric label) and a reason.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .filters import BgpFilter, decide
from .model import LearnedPath

__all__ = ["DEFAULT_MAX_PREFIXES", "ImportPool", "ImportPolicy", "Rejected", "filter_imports"]

DEFAULT_MAX_PREFIXES = 10000
KINDS = ("default-route", "outside-pools", "covers-pool", "too-short", "wrong-next-hop",
         "max-prefixes", "invalid")


@dataclass(frozen=True)
class ImportPool:
    cidr: str
    block_size: int = 26


@dataclass(frozen=True)
class ImportPolicy:
    """What the filter checks against, as frozen values (equal policy, equal answer)."""

    pools: tuple[ImportPool, ...] = ()
    block_owners: frozenset[tuple[str, str]] = frozenset()    # (block cidr, owner's address)
    address_holders: frozenset[tuple[str, str]] = frozenset()  # (ip, holder node's address)
    node_addresses: frozenset[str] = frozenset()               # every node of the cluster
    local_subnets: tuple[str, ...] = ()
    max_prefixes: frozenset[tuple[str, int]] = frozenset()     # (peer, limit); else default
    default_max_prefixes: int = DEFAULT_MAX_PREFIXES
    filters: tuple[tuple[str, tuple[BgpFilter, ...]], ...] = ()   # (peer, its filters in order)

    def limit(self, peer: str) -> int:
        return dict(self.max_prefixes).get(peer) or self.default_max_prefixes


@dataclass(frozen=True)
class Rejected:
    """A path the import policy refused, and why (`kind` is one of KINDS or `filter:NAME`);
    bgp.export reports what an export filter kept from a peer the same way."""

    peer: str
    prefix: str
    next_hop: str
    kind: str
    reason: str
    direction: str = "import"


@dataclass(frozen=True)
class _Context:
    pools: tuple[tuple[ipaddress.IPv4Network, int], ...]
    owners: dict[ipaddress.IPv4Network, str]
    holders: dict[str, str]
    nodes: frozenset[str]
    subnets: tuple[ipaddress.IPv4Network, ...]


def filter_imports(learned: Mapping[str, Iterable[LearnedPath]], policy: ImportPolicy,
                   order: Mapping[str, Sequence[str]] | None = None, own: Iterable[str] = ()
                   ) -> tuple[dict[str, frozenset[LearnedPath]], tuple[Rejected, ...]]:
    """(prefix -> accepted paths, rejected paths). `order`: per peer, its prefixes in the
    order it sent them (the max-prefix limit keeps the first ones); without it, address order.
    Our `own` prefixes pass untouched and uncounted: peers echo them back, and bgp.routes
    never installs them anyway."""
    ctx = _context(policy)
    mine = set(own)
    accepted: dict[str, set[LearnedPath]] = {p: set(learned[p]) for p in learned if p in mine}
    rejected: list[Rejected] = []
    per_peer: dict[str, list[tuple[str, LearnedPath]]] = {}
    for prefix in sorted((p for p in learned if p not in mine), key=_sort_key):
        for path in sorted(set(learned[prefix]), key=lambda p: (p.peer, p.next_hop)):
            kind, reason = check_path(prefix, path, ctx)
            if kind:
                rejected.append(Rejected(path.peer, prefix, path.next_hop, kind, reason))
            else:
                per_peer.setdefault(path.peer, []).append((prefix, path))
    for peer, items in sorted(per_peer.items()):
        rank = {p: i for i, p in enumerate((order or {}).get(peer, ()))}
        items.sort(key=lambda item: (rank.get(item[0], len(rank)), _sort_key(item[0])))
        limit = policy.limit(peer)
        for i, (prefix, path) in enumerate(items):
            if i < limit:
                accepted.setdefault(prefix, set()).add(path)
            else:
                rejected.append(Rejected(peer, prefix, path.next_hop, "max-prefixes",
                                         f"peer {peer} sent more than its limit of {limit} "
                                         "prefixes"))
    rejected += _import_filters(accepted, dict(policy.filters), mine)
    return {p: frozenset(s) for p, s in accepted.items() if s}, tuple(rejected)


def _import_filters(accepted: dict[str, set[LearnedPath]],
                    chains: Mapping[str, tuple[BgpFilter, ...]], mine: set[str]) -> list[Rejected]:
    """Drop (in place) the accepted paths their peer's import filters reject."""
    out = []
    for prefix in sorted(accepted, key=_sort_key):
        if prefix in mine:
            continue
        for path in sorted(accepted[prefix], key=lambda p: (p.peer, p.next_hop)):
            verdict = decide(prefix, chains.get(path.peer, ()), "import")
            if not verdict.accepted:
                accepted[prefix].discard(path)
                out.append(Rejected(path.peer, prefix, path.next_hop, f"filter:{verdict.filter}",
                                    f"import {verdict.reason}"))
    return out


def check_path(prefix: str, path: LearnedPath, ctx: _Context) -> tuple[str, str]:
    """("", "") when the path passes the pool and ownership rules, else (kind, reason)."""
    try:
        net = ipaddress.IPv4Network(prefix)
    except ValueError:
        return "invalid", f"{prefix!r} is not an IPv4 prefix"
    if net.prefixlen == 0:
        return "default-route", "a default route is never imported"
    pool = next(((p, size) for p, size in ctx.pools if net.subnet_of(p)), None)
    if pool is None:
        covered = [str(p) for p, _ in ctx.pools if p.subnet_of(net)]
        if covered:
            return "covers-pool", f"covers the pool {covered[0]}"
        return "outside-pools", "outside every IP pool"
    pool_net, size = pool
    if net.prefixlen < size:
        return "too-short", (f"shorter than the block size /{size} of pool {pool_net} "
                             "(it covers blocks)")
    return _ownership(net, path.next_hop, pool_net, size, ctx)


def _ownership(net: ipaddress.IPv4Network, next_hop: str, pool: ipaddress.IPv4Network,
               size: int, ctx: _Context) -> tuple[str, str]:
    """The next hop must be the node the datastore says holds the prefix (if it says)."""
    block = net.supernet(new_prefix=size) if net.prefixlen > size else net
    holder = ctx.holders.get(str(net.network_address)) if net.prefixlen == 32 else None
    what = f"address {net.network_address} is held by" if holder else f"block {block} is affine to"
    owner = holder or ctx.owners.get(block)
    if not owner or next_hop == owner:
        return "", ""
    if next_hop in ctx.nodes:
        return "wrong-next-hop", f"{what} node {owner}, not the next hop {next_hop}"
    if any(ipaddress.IPv4Address(owner) in s for s in ctx.subnets):
        return "wrong-next-hop", (f"{what} node {owner} on our subnet; only it may be "
                                  f"the next hop, not {next_hop}")
    return "", ""


def _context(policy: ImportPolicy) -> _Context:
    pools = tuple(sorted(((ipaddress.IPv4Network(p.cidr), p.block_size) for p in policy.pools),
                         key=lambda t: t[0].prefixlen, reverse=True))  # most specific first
    return _Context(pools=pools,
                    owners={ipaddress.IPv4Network(b): a for b, a in policy.block_owners},
                    holders=dict(policy.address_holders), nodes=policy.node_addresses,
                    subnets=tuple(ipaddress.IPv4Network(s) for s in policy.local_subnets))


def _sort_key(prefix: str):
    try:
        n = ipaddress.IPv4Network(prefix)
        return (0, int(n.network_address), n.prefixlen, "")
    except ValueError:
        return (1, 0, 0, prefix)
