"""Pure BGP configuration: selectors, and datastore records -> one node's SpeakerConfig."""
from __future__ import annotations

import pytest

from bgp.config import PeerConfig
from calico_lite import keys
from calico_lite.bgpconfig import (BgpGlobal, BgpPeer, NodeBgp, merge_nodes, node_speaker_config,
                                   peers_from)
from calico_lite.peer_selector import SelectorError, parse_selector


@pytest.mark.parametrize("text,labels,want", [
    ('rack == "rack1"', {"rack": "rack1"}, True),
    ('rack == "rack1"', {"rack": "rack2"}, False),
    ('rack == "rack1"', {}, False),
    ("rack != 'rack1'", {}, True),
    ("rack != 'rack1'", {"rack": "rack1"}, False),
    ("has(route-reflector)", {"route-reflector": "true"}, True),
    ("!has(route-reflector)", {"route-reflector": "true"}, False),
    ("all()", {}, True),
    ("", {"a": "b"}, False),
    ('rack == "rack1" && has(x)', {"rack": "rack1"}, False),
    ('rack == "rack1" && has(x)', {"rack": "rack1", "x": ""}, True),
    ('rack == "r2" || (has(x) && x == "1")', {"x": "1"}, True),
    ('rack in {"r1", "r2"}', {"rack": "r2"}, True),
    ('rack not in {"r1", "r2"}', {"rack": "r2"}, False),
    ('kubernetes.io/hostname == "n1"', {"kubernetes.io/hostname": "n1"}, True),
])
def test_selector(text, labels, want):
    assert parse_selector(text).matches(labels) is want


@pytest.mark.parametrize("bad", ['rack = "x"', "rack == x", "has(", "all() &&", '(a == "b"', "a ==", "&&"])
def test_selector_errors_name_the_problem(bad):
    with pytest.raises(SelectorError, match="selector"):
        parse_selector(bad)


def nodes(*spec):
    return {n: NodeBgp(name=n, address=a, **kw) for n, a, kw in spec}


THREE = nodes(("n1", "10.99.1.11", {"labels": {"rack": "rack1"}}),
              ("n2", "10.99.1.12", {"labels": {"rack": "rack1"}}),
              ("n3", "10.99.2.11", {"labels": {"rack": "rack2"}}))


def cfg_for(node, ns=THREE, glob=BgpGlobal(), peers=(), secrets=None, **kw):
    return node_speaker_config(node, ns, glob, list(peers), secrets or {},
                               local_address=ns[node].address, default_as=64999, **kw)


def test_mesh_peers_every_other_node_ibgp():
    cfg, problems = cfg_for("n1")
    assert not problems
    assert cfg.local_as == 64512 and cfg.listen and cfg.graceful_restart == 10
    assert [(p.address, p.peer_as) for p in cfg.peers] == [("10.99.1.12", 64512), ("10.99.2.11", 64512)]
    assert cfg.peers[0].description == "node-to-node mesh (n2)"


def test_no_global_record_keeps_the_command_line_peers():
    static = (PeerConfig("10.99.1.1", 65001),)
    cfg, _ = cfg_for("n1", glob=None, static_peers=static)
    assert cfg.peers == list(static) and cfg.local_as == 64999 and cfg.graceful_restart == 0
    assert not cfg.listen


def test_tor_peer_by_node_selector_with_node_as_and_hold_time():
    ns = {**THREE, "n1": NodeBgp("n1", "10.99.1.11", as_number=64601, labels={"rack": "rack1"})}
    peers = [BgpPeer("tor1", peer_ip="10.99.1.1", as_number=65001, node_selector='rack == "rack1"',
                     hold_time=3),
             BgpPeer("tor2", peer_ip="10.99.2.1", as_number=65002, node_selector='rack == "rack2"')]
    cfg, _ = cfg_for("n1", ns, BgpGlobal(mesh=False), peers)
    assert cfg.local_as == 64601
    assert [(p.address, p.peer_as, p.hold_time) for p in cfg.peers] == [("10.99.1.1", 65001, 3)]
    cfg3, _ = cfg_for("n3", ns, BgpGlobal(mesh=False, hold_time=6), peers)
    assert [(p.address, p.hold_time) for p in cfg3.peers] == [("10.99.2.1", 6)]


def test_password_from_secret_and_missing_secret_reported():
    peers = [BgpPeer("tor", peer_ip="10.99.1.1", as_number=65001, password_secret="s")]
    cfg, problems = cfg_for("n1", glob=BgpGlobal(mesh=False), peers=peers, secrets={"s": "pw"})
    assert cfg.peers[0].md5_password == "pw" and not problems
    cfg, problems = cfg_for("n1", glob=BgpGlobal(mesh=False), peers=peers)
    assert cfg.peers == [] and "secret s not found" in problems[0]


def test_explicit_peer_overrides_the_mesh_entry_for_the_same_address():
    peers = [BgpPeer("n2-md5", peer_ip="10.99.1.12", as_number=64512, password_secret="s")]
    cfg, _ = cfg_for("n1", peers=peers, secrets={"s": "pw"})
    assert [(p.address, p.md5_password) for p in cfg.peers] == [("10.99.1.12", "pw"), ("10.99.2.11", None)]


def test_route_reflector_topology_by_peer_selector():
    ns = nodes(("rr1", "10.99.1.11", {"cluster_id": "1.0.0.1", "labels": {"route-reflector": "true"}}),
               ("rr2", "10.99.2.11", {"cluster_id": "1.0.0.1", "labels": {"route-reflector": "true"}}),
               ("c1", "10.99.1.12", {"labels": {}}),
               ("c2", "10.99.2.12", {"labels": {}}))
    peers = [BgpPeer("to-rr", peer_selector="has(route-reflector)", node_selector="all()")]
    glob = BgpGlobal(mesh=False)
    client, _ = cfg_for("c1", ns, glob, peers)
    assert [p.address for p in client.peers] == ["10.99.1.11", "10.99.2.11"]
    assert not any(p.route_reflector_client for p in client.peers) and not client.cluster_id
    rr, _ = cfg_for("rr1", ns, glob, peers)   # the reverse side of the record: its clients
    assert rr.cluster_id == "1.0.0.1"
    assert [(p.address, p.route_reflector_client) for p in rr.peers] == [
        ("10.99.1.12", True), ("10.99.2.11", False), ("10.99.2.12", True)]


def test_specific_node_peer_and_bad_selector_reported():
    peers = [BgpPeer("only-n2", peer_ip="10.99.9.9", as_number=65009, node="n2")]
    assert cfg_for("n1", glob=BgpGlobal(mesh=False), peers=peers)[0].peers == []
    assert [p.address for p in cfg_for("n2", glob=BgpGlobal(mesh=False), peers=peers)[0].peers] == ["10.99.9.9"]
    ok, problems = peers_from({keys.bgp_peer("x"): {"name": "x", "peerIP": "10.0.0.1", "asNumber": 1,
                                                    "nodeSelector": "rack ="}})
    assert not ok and "selector" in problems[0]


def test_merge_nodes_settings_win_and_labels_merge():
    reg = {keys.node("n1"): {"name": "n1", "address": "10.99.1.11", "labels": {"rack": "rack1", "a": "1"}}}
    st = {keys.bgp_node("n1"): {"asNumber": 64601, "labels": {"a": "2", "route-reflector": "true"},
                                "routeReflectorClusterId": "1.0.0.1"}}
    n = merge_nodes(reg, st)["n1"]
    assert n.as_number == 64601 and n.cluster_id == "1.0.0.1"
    assert dict(n.labels) == {"rack": "rack1", "a": "2", "route-reflector": "true"}
