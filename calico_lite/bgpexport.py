"""Communities and BGP filters from the datastore, as bgp.export and bgp.imports take them.

Pools carry communities for their blocks (`pool set --community`), peer records carry
communities for everything announced to them and the names of their filters (`bgp peer
set`), and `/calico-lite/bgp/filters/NAME` holds the filters' rules (`bgp filter add`).
Here those records become frozen values per peer address; a record that does not parse,
or a filter a peer names that does not exist, is left out and reported as a problem (shown
by `node status`).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

from bgp.config import PeerConfig
from bgp.export import Attributes, ExportPolicy, PeerExport
from bgp.filters import BgpFilter
from calico_lite.blocks import IpamError, Pool


def filters_from(items: Mapping[str, Mapping]) -> tuple[dict[str, BgpFilter], list[str]]:
    """keys.BGP_FILTERS entries -> name -> BgpFilter, and the records that did not parse."""
    out, problems = {}, []
    for key, d in sorted(items.items()):
        try:
            f = BgpFilter.from_dict(d)
            out[f.name] = f
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            problems.append(f"BGP filter record {key}: {e}")
    return out, problems


def peer_filters(peers: Iterable[PeerConfig], filters: Mapping[str, BgpFilter]
                 ) -> tuple[dict[str, tuple[BgpFilter, ...]], list[str]]:
    """peer address -> the filters it names, in order (missing ones left out, reported)."""
    out, problems = {}, []
    for p in peers:
        missing = [n for n in p.filters if n not in filters]
        problems += [f"{p.description or p.address}: BGP filter {n} not found; left out"
                     for n in missing]
        chain = tuple(filters[n] for n in p.filters if n in filters)
        if chain:
            out[p.address] = chain
    return out, problems


def export_policy(peers: Iterable[PeerConfig], pools: Mapping[str, Mapping],
                  chains: Mapping[str, tuple[BgpFilter, ...]]) -> ExportPolicy:
    """The ExportPolicy: pool communities, and per peer its communities and filters."""
    pool_attrs = []
    for d in pools.values():
        try:
            pool = Pool.from_dict(dict(d))
        except (IpamError, KeyError, TypeError, ValueError):
            continue   # calico_lite.imports logs a broken pool record already
        if pool.network.version == 4 and (pool.communities or pool.large_communities):
            pool_attrs.append((pool.cidr, Attributes(pool.communities, pool.large_communities)))
    per_peer = []
    for p in peers:
        attrs = Attributes(p.communities, p.large_communities)
        if attrs != Attributes() or chains.get(p.address):
            per_peer.append((p.address, PeerExport(attrs, chains.get(p.address, ()))))
    return ExportPolicy(pools=tuple(sorted(pool_attrs)), peers=tuple(sorted(per_peer)))


def export_status(policy: ExportPolicy, announced: Mapping[str, Mapping[str, Attributes]]) -> dict:
    """What `node status` shows of it: per peer its communities, filters and how many
    prefixes go to it; per pool its communities."""
    peers = []
    for address in sorted(announced):
        pe = policy.peer(address)
        peers.append({"peer": address, "communities": list(pe.attributes.communities),
                      "largeCommunities": list(pe.attributes.large_communities),
                      "filters": [f.name for f in pe.filters],
                      "announced": len(announced[address])})
    return {"exports": peers,
            "poolCommunities": [{"cidr": c, "communities": list(a.communities),
                                 "largeCommunities": list(a.large_communities)}
                                for c, a in policy.pools]}
