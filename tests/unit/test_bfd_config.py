"""BFD from the operator's side, pure: the peer record and CLI, the step to a node's
SpeakerConfig, `node status`, the metrics, and the lab's FRR configuration."""
import pytest

from bgp.bfd import BfdConfig, SessionStatus
from calico_lite import keys
from calico_lite.bgpconfig import BgpGlobal, BgpPeer, NodeBgp, node_speaker_config
from calico_lite.cli.app import parse
from calico_lite.cli.bgp import describe_peer
from calico_lite.cli.node import format_node_status
from calico_lite.lab.bgp_records import bgp_records
from calico_lite.lab.frr import FrrRouter, render_frr_config
from calico_lite.lab.plan import make_plan
from calico_lite.metrics import AgentMetrics, NodeStateCollector, ipam_usage


def test_the_peer_record_carries_bfd_and_reads_back():
    p = BgpPeer(name="tor1", peer_ip="10.99.1.1", as_number=65001, bfd=BfdConfig(100, 3))
    d = p.to_dict()
    assert d["bfd"] == {"intervalMs": 100, "multiplier": 3}
    assert BgpPeer.from_dict(d) == p
    off = BgpPeer(name="tor1", peer_ip="10.99.1.1", as_number=65001)
    assert "bfd" not in off.to_dict() and BgpPeer.from_dict(off.to_dict()).bfd is None
    assert BgpPeer.from_dict({**off.to_dict(), "bfd": {}}).bfd is None
    assert BgpPeer.from_dict({**off.to_dict(), "bfd": {"multiplier": 5}}).bfd == BfdConfig(300, 5)
    with pytest.raises(ValueError):
        BgpPeer.from_dict({**off.to_dict(), "bfd": {"intervalMs": 1}})
    assert describe_peer(d) == "10.99.1.1 AS 65001, for nodes matching 'all()', BFD 100 ms x 3"


def test_bfd_reaches_the_nodes_speaker_config_for_the_peers_that_have_it():
    nodes = {"n1": NodeBgp(name="n1", address="10.99.1.11", labels={"rack": "rack1"}),
             "n2": NodeBgp(name="n2", address="10.99.1.12", labels={"rack": "rack1"})}
    peers = [BgpPeer(name="tor1", peer_ip="10.99.1.1", as_number=65001, bfd=BfdConfig(100, 3)),
             BgpPeer(name="tor2", peer_ip="10.99.1.2", as_number=65002)]
    cfg, problems = node_speaker_config("n1", nodes, BgpGlobal(mesh=True), peers, {},
                                        local_address="10.99.1.11", default_as=64512)
    assert not problems
    by = {p.address: p.bfd for p in cfg.peers}
    assert by == {"10.99.1.1": BfdConfig(100, 3), "10.99.1.2": None, "10.99.1.12": None}


def test_cli_peer_add_and_set_take_bfd_options():
    a = parse(["bgp", "peer", "add", "tor1", "--peer-ip", "10.99.1.1", "--as", "65001", "--bfd",
               "--bfd-interval", "100", "--bfd-multiplier", "3"])
    assert (a.bfd, a.bfd_interval, a.bfd_multiplier) == (True, 100, 3)
    s = parse(["bgp", "peer", "set", "tor1", "--bfd", "off"])
    assert s.bfd is False
    with pytest.raises(SystemExit):
        parse(["bgp", "peer", "set", "tor1", "--bfd", "maybe"])


SESSION = SessionStatus(peer="10.99.1.1", state="Down", local_discr=11, remote_discr=0,
                        tx_ms=1000.0, rx_ms=100.0, multiplier=3, remote_multiplier=3,
                        last_down="control detection time expired", flaps=2, since=90.0)


def test_node_status_shows_each_bfd_session():
    s = {"node": "r1n1", "updated": 100.0, "bgp": {}, "bfd": [vars(SESSION)]}
    lines = format_node_status(s, now=100.0).splitlines()
    at = lines.index("  BFD sessions")
    assert [c.strip() for c in lines[at + 2].split("|")[1:-1]] == [
        "PEER ADDRESS", "STATE", "SINCE", "LOCAL DISCR", "REMOTE DISCR", "TX", "RX", "MULT",
        "FLAPS", "LAST DOWN"]
    assert [c.strip() for c in lines[at + 4].split("|")[1:-1]] == [
        "10.99.1.1", "Down", "10s", "11", "0", "1000 ms", "100 ms", "3/3", "2",
        "bfd: control detection time expired"]
    assert "BFD" not in format_node_status({"node": "r1n1", "updated": 100.0}, now=100.0)


def test_metrics_count_bfd_teardowns_per_peer_and_sessions_by_state():
    m = AgentMetrics()
    m.registry.register(NodeStateCollector(usage=lambda: ipam_usage({}, {}, "n1"),
                                           peers=lambda: [],
                                           bfd=lambda: ([SESSION], {"10.99.1.1": 2})))
    get = m.registry.get_sample_value
    assert get("calico_lite_bfd_session_down_total", {"peer": "10.99.1.1"}) == 2
    assert get("calico_lite_bfd_sessions", {"state": "Down"}) == 1
    assert get("calico_lite_bfd_sessions", {"state": "Up"}) == 0


def test_frr_gets_a_bfd_profile_for_its_node_peers_and_starts_bfdd():
    text = render_frr_config("tor1", 65001, "10.98.1.2", neighbors=[("10.98.1.1", 65100)],
                             listen_ranges=[("10.99.1.0/24", "external")], bfd=(100, 3),
                             bfd_neighbors=())
    lines = text.splitlines()
    at = lines.index("bfd")
    assert lines[at:at + 5] == ["bfd", " profile NODES", "  transmit-interval 100",
                                "  receive-interval 100", "  detect-multiplier 3"]
    assert " neighbor NODES bfd" in lines and " neighbor NODES bfd profile NODES" in lines
    assert " neighbor 10.98.1.1 bfd" not in lines            # the spine has no BFD
    assert FrrRouter("ns", "/tmp/x", text).daemons == ("zebra", "bgpd", "bfdd")
    plain = render_frr_config("tor1", 65001, "10.98.1.2", neighbors=[("10.98.1.1", 65100)])
    assert "bfd" not in plain and FrrRouter("ns", "/tmp/x", plain).daemons == ("zebra", "bgpd")


def test_lab_up_bfd_gives_the_tor_peers_bfd():
    on = bgp_records(make_plan(bgp="tor", bfd=True))[keys.bgp_peer("tor-rack1")]
    assert on["bfd"] == {"intervalMs": 100, "multiplier": 3}
    off = bgp_records(make_plan(bgp="tor"))[keys.bgp_peer("tor-rack1")]
    assert "bfd" not in off
