"""The BGP import policy (bgp.imports), its inputs from datastore records (calico_lite.imports)
and the report of what it filtered."""
from __future__ import annotations

from bgp.config import PeerConfig
from bgp.imports import ImportPolicy, ImportPool, filter_imports
from bgp.model import LearnedPath
from calico_lite import keys
from calico_lite.bgpconfig import BgpGlobal, BgpPeer, merge_nodes, node_speaker_config
from calico_lite.cli.node import format_node_status
from calico_lite.imports import FilterReport, filtered_status, import_policy

TOR = "10.99.1.1"
N2, N3 = "10.99.1.12", "10.99.1.13"
FAR = "10.99.2.21"   # a node on another subnet
POLICY = ImportPolicy(
    pools=(ImportPool("10.244.0.0/16", 26),),
    block_owners=frozenset({("10.244.2.0/26", N2), ("10.244.3.0/26", N3),
                            ("10.244.9.0/26", FAR)}),
    address_holders=frozenset({("10.244.2.5", N3)}),   # n3 borrowed 10.244.2.5 from n2's block
    node_addresses=frozenset({N2, N3, FAR, "10.99.1.11"}),
    local_subnets=("10.99.1.0/24",))


def path(hop: str, peer: str = TOR) -> LearnedPath:
    return LearnedPath(hop, peer)


def kinds(learned: dict, policy: ImportPolicy = POLICY, **kw) -> tuple[set[str], dict[str, str]]:
    accepted, rejected = filter_imports(learned, policy, **kw)
    return set(accepted), {r.prefix: r.kind for r in rejected}


def test_only_blocks_and_longer_prefixes_inside_the_pools_are_accepted():
    ok, bad = kinds({"0.0.0.0/0": {path(TOR)}, "192.168.7.0/24": {path(TOR)},
                     "10.0.0.0/8": {path(TOR)}, "10.244.0.0/16": {path(TOR)},
                     "10.244.4.0/24": {path(TOR)}, "10.244.5.0/26": {path(TOR)},
                     "10.244.6.17/32": {path(TOR)}})
    assert ok == {"10.244.5.0/26", "10.244.6.17/32"}
    assert bad == {"0.0.0.0/0": "default-route", "192.168.7.0/24": "outside-pools",
                   "10.0.0.0/8": "covers-pool", "10.244.0.0/16": "too-short",
                   "10.244.4.0/24": "too-short"}


def test_an_affine_block_only_via_its_node_or_a_router_when_the_node_is_elsewhere():
    ok, bad = kinds({"10.244.2.0/26": {path(N2, N2), path(N3, N3)},
                     "10.244.3.0/26": {path(TOR)},          # n3 is on our subnet: not via the ToR
                     "10.244.3.16/28": {path(N2, N2)},       # a more specific of n3's block
                     "10.244.9.0/26": {path(TOR)},           # FAR is elsewhere: the ToR carries it
                     "10.244.2.5/32": {path(N3, N3)},        # the borrow, from its holder
                     "10.244.2.6/32": {path(N3, N3)}})       # not borrowed: n2's block
    accepted, rejected = filter_imports({"10.244.2.0/26": {path(N2, N2), path(N3, N3)}}, POLICY)
    assert accepted["10.244.2.0/26"] == frozenset({path(N2, N2)})
    assert [(r.prefix, r.next_hop, r.kind) for r in rejected] == [
        ("10.244.2.0/26", N3, "wrong-next-hop")]
    assert "affine to node 10.99.1.12" in rejected[0].reason
    assert ok == {"10.244.2.0/26", "10.244.9.0/26", "10.244.2.5/32"}
    assert bad == {"10.244.2.0/26": "wrong-next-hop", "10.244.3.0/26": "wrong-next-hop",
                   "10.244.3.16/28": "wrong-next-hop", "10.244.2.6/32": "wrong-next-hop"}


def test_own_prefixes_pass_untouched_and_uncounted():
    learned = {"10.244.1.0/26": {path(TOR)}, "10.244.5.0/26": {path(TOR)}}
    limited = ImportPolicy(pools=POLICY.pools, default_max_prefixes=1,
                           block_owners=frozenset({("10.244.1.0/26", "10.99.1.11")}),
                           local_subnets=POLICY.local_subnets)
    accepted, rejected = filter_imports(learned, limited, own={"10.244.1.0/26"})
    assert set(accepted) == {"10.244.1.0/26", "10.244.5.0/26"} and rejected == ()


def test_max_prefixes_keeps_the_first_ones_the_peer_sent():
    learned = {f"10.244.{i}.0/26": {path(TOR)} for i in range(10, 15)}
    learned["10.244.20.0/26"] = {path("10.99.1.2", "10.99.1.2")}
    policy = ImportPolicy(pools=POLICY.pools, max_prefixes=frozenset({(TOR, 3)}))
    order = {TOR: ("10.244.14.0/26", "10.244.10.0/26", "10.244.13.0/26",
                   "10.244.11.0/26", "10.244.12.0/26")}
    ok, bad = kinds(learned, policy, order=order)
    assert ok == {"10.244.14.0/26", "10.244.10.0/26", "10.244.13.0/26", "10.244.20.0/26"}
    assert bad == {"10.244.11.0/26": "max-prefixes", "10.244.12.0/26": "max-prefixes"}
    # rejected paths do not use up the limit
    learned["192.168.0.0/24"] = {path(TOR)}
    assert kinds(learned, policy, order=order)[1]["192.168.0.0/24"] == "outside-pools"
    assert len(kinds(learned, policy, order=order)[0]) == 4


def test_policy_from_records_with_peer_limits_from_the_bgp_config():
    pools = {keys.pool("default"): {"name": "default", "cidr": "10.244.0.0/16", "blockSize": 26},
             keys.pool("broken"): {"name": "broken", "cidr": "not a cidr"},
             keys.pool("junk"): "garbage"}
    nodes = {keys.node("n2"): {"name": "n2", "address": N2}, keys.node("x"): "garbage"}
    aff = {keys.affinity("n2", "10.244.2.0/26"): {}, keys.affinity("gone", "10.244.7.0/26"): {}}
    handles = {keys.handle("c/eth0"): {"ip": "10.244.2.9", "node": "n2"}, keys.handle("j"): 7}
    glob = BgpGlobal(max_prefixes=500)
    cfg, _ = node_speaker_config(
        "n1", merge_nodes({keys.node("n2"): nodes[keys.node("n2")]}, {}), glob,
        [BgpPeer("tor", peer_ip=TOR, as_number=65001, max_prefixes=5)], {},
        local_address="10.99.1.11", default_as=64512)
    limits = {p.address: p.max_prefixes for p in cfg.peers}
    assert limits == {TOR: 5, N2: 500}
    policy = import_policy(pools, aff, handles, nodes, subnet="10.99.1.0/24", peers=cfg.peers)
    assert policy.pools == (ImportPool("10.244.0.0/16", 26),)
    assert policy.block_owners == frozenset({("10.244.2.0/26", N2)})
    assert policy.address_holders == frozenset({("10.244.2.9", N2)})
    assert policy.limit(TOR) == 5 and policy.limit(N2) == 500 and policy.limit("1.2.3.4") == 10000
    # a limit alone never makes the speaker reconfigure ExaBGP
    assert PeerConfig(TOR, 65001, max_prefixes=5) == PeerConfig(TOR, 65001)
    assert BgpGlobal.from_dict(glob.to_dict()) == glob
    assert BgpPeer.from_dict(BgpPeer("t", peer_ip=TOR, as_number=1, max_prefixes=3).to_dict()).max_prefixes == 3


def test_each_rejection_is_reported_once_and_shown_in_node_status():
    counted = []
    report = FilterReport(counted.append)
    _, rejected = filter_imports({"0.0.0.0/0": {path(TOR)}, "192.168.7.0/24": {path(TOR)}}, POLICY)
    assert len(report.report(rejected)) == 2
    assert report.report(rejected) == [] and len(counted) == 2
    assert report.report(rejected[:1]) == [] and len(report.report(rejected)) == 1  # came back
    status = {"node": "n1", **filtered_status(rejected)}
    assert status["filteredTotal"] == 2
    text = format_node_status(status)
    assert f"0.0.0.0/0          via {TOR} from {TOR}: a default route is never imported" in text
    assert "192.168.7.0/24" in text and "filtered by the import policy: 2" in text
