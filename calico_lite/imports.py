"""The BGP import policy's inputs from the datastore, and the report of what it filtered.

bgp.imports decides (pure, plain values); this module builds its ImportPolicy from the
records etcd holds (pools, affinities, handles, node addresses) and the node's peers, and
reports each rejected path once: one log line when it first appears, one count in the
`calico_lite_bgp_prefixes_filtered_total` counter, and (while it lasts) a row in `node status`.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import Callable

from bgp.config import PeerConfig
from bgp.filters import BgpFilter
from bgp.imports import DEFAULT_MAX_PREFIXES, ImportPolicy, ImportPool, Rejected
from calico_lite import keys
from calico_lite.blocks import IpamError, Pool

log = logging.getLogger("calico-lite.imports")
SHOWN = 100   # rows of `filtered` in a status record; the total is always there


def import_policy(pools: Mapping[str, Mapping], affinities: Mapping[str, Mapping],
                  handles: Mapping[str, Mapping], nodes: Mapping[str, Mapping], *,
                  subnet: str, peers: Iterable[PeerConfig],
                  default_max: int = DEFAULT_MAX_PREFIXES,
                  filters: Mapping[str, tuple[BgpFilter, ...]] | None = None) -> ImportPolicy:
    """The ImportPolicy for one node from datastore records (pure). A record that does not
    parse is left out: it can only make the policy stricter, never let a prefix in."""
    address = {r.get("name") or k.rsplit("/", 1)[-1]: r.get("address", "")
               for k, r in nodes.items() if isinstance(r, Mapping)}
    return ImportPolicy(
        pools=tuple(_pools(pools)),
        block_owners=frozenset(_owners(affinities, address)),
        address_holders=frozenset(_holders(handles, address)),
        node_addresses=frozenset(a for a in address.values() if a),
        local_subnets=(subnet,),
        max_prefixes=frozenset((p.address, p.max_prefixes) for p in peers if p.max_prefixes),
        default_max_prefixes=default_max,
        filters=tuple(sorted((filters or {}).items())))


def _pools(records: Mapping[str, Mapping]) -> Iterable[ImportPool]:
    for key, d in sorted(records.items()):
        try:
            p = Pool.from_dict(dict(d))
        except (IpamError, KeyError, TypeError, ValueError) as e:
            log.warning("pool record %s left out of the BGP import policy: %s", key, e)
            continue
        if p.network.version == 4:
            yield ImportPool(p.cidr, p.block_size)


def _owners(affinities: Mapping[str, Mapping], address: Mapping[str, str]) -> Iterable[tuple[str, str]]:
    for key in affinities:
        node, _, block = key[len(keys.AFFINITIES):].partition("/")
        if address.get(node) and block:
            yield keys.block_cidr(block), address[node]


def _holders(handles: Mapping[str, Mapping], address: Mapping[str, str]) -> Iterable[tuple[str, str]]:
    for h in handles.values():
        if isinstance(h, Mapping) and h.get("ip") and address.get(h.get("node", "")):
            yield str(h["ip"]), address[h["node"]]


class FilterReport:
    """Logs and counts each rejected path once (again only if it went away and came back)."""

    def __init__(self, count: Callable[[Rejected], None] = lambda r: None):
        self.count = count
        self._seen: set[Rejected] = set()

    def report(self, rejected: Iterable[Rejected]) -> list[Rejected]:
        """The rejections not reported before (logged and counted now)."""
        now = set(rejected)
        new = sorted(now - self._seen, key=lambda r: (r.peer, r.prefix, r.next_hop))
        for r in new:
            log.warning(json.dumps({"event": "bgp-prefix-filtered", "peer": r.peer,
                                    "prefix": r.prefix, "via": r.next_hop, "kind": r.kind,
                                    "reason": r.reason, "direction": r.direction}))
            self.count(r)
        over = sorted({r.peer for r in new if r.kind == "max-prefixes"})
        for peer in over:
            n = sum(1 for r in now if r.peer == peer and r.kind == "max-prefixes")
            log.warning(json.dumps({"event": "bgp-max-prefixes-exceeded", "peer": peer,
                                    "ignored": n}))
        self._seen = now
        return new


def filtered_status(rejected: Iterable[Rejected]) -> dict:
    """The `filtered` part of a node's status record: rows (at most SHOWN), the total, and
    a note per peer over its max-prefix limit; what export filters kept from peers apart."""
    rows = sorted(rejected, key=lambda r: (r.peer, r.prefix, r.next_hop))
    exported = [r for r in rows if r.direction == "export"]
    rows = [r for r in rows if r.direction != "export"]
    over: dict[str, int] = {}
    for r in rows:
        if r.kind == "max-prefixes":
            over[r.peer] = over.get(r.peer, 0) + 1
    return {"filtered": [{"peer": r.peer, "prefix": r.prefix, "via": r.next_hop,
                          "kind": r.kind, "reason": r.reason} for r in rows[:SHOWN]],
            "filteredTotal": len(rows),
            "filterNotes": [f"peer {p} is over its max-prefix limit: {n} prefixes ignored"
                            for p, n in sorted(over.items())],
            "exportFiltered": [{"peer": r.peer, "prefix": r.prefix, "kind": r.kind,
                                "reason": r.reason} for r in exported[:SHOWN]],
            "exportFilteredTotal": len(exported)}
