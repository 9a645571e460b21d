"""Route reflection plan (RFC 4456 rules) for a route-reflector node."""
from bgp.model import LearnedPath
from bgp.reflect import Reflected, ReflectPeer, announce_command, reflection_plan

AS = 64512
PEERS = [ReflectPeer("10.0.0.2", AS, True), ReflectPeer("10.0.0.3", AS, True),
         ReflectPeer("10.0.0.4", AS, False), ReflectPeer("10.0.0.9", 65001, False)]


def plan(learned, **kw):
    return reflection_plan(learned, PEERS, local_as=AS, router_id="10.0.0.1", cluster_id="1.1.1.1", **kw)


def test_client_routes_go_to_every_other_ibgp_peer_with_next_hop_kept():
    learned = {"10.0.0.2": {"10.244.2.0/26": LearnedPath("10.0.0.2", "10.0.0.2")}}
    out = plan(learned)
    want = Reflected("10.0.0.2", "10.0.0.2", ("1.1.1.1",))
    assert out == {"10.0.0.3": {"10.244.2.0/26": want}, "10.0.0.4": {"10.244.2.0/26": want}}


def test_non_client_routes_go_to_clients_only_and_ebgp_is_never_reflected():
    learned = {"10.0.0.4": {"10.244.4.0/26": LearnedPath("10.0.0.4", "10.0.0.4")},
               "10.0.0.9": {"10.9.0.0/16": LearnedPath("10.0.0.9", "10.0.0.9", (65001,))}}
    out = plan(learned)
    assert set(out) == {"10.0.0.2", "10.0.0.3"}
    assert all(set(r) == {"10.244.4.0/26"} for r in out.values())


def test_loops_own_prefixes_and_targets_filter():
    learned = {"10.0.0.2": {"10.244.2.0/26": LearnedPath("10.0.0.2", "10.0.0.2", (), "10.0.0.2", ("1.1.1.1",)),
                            "10.244.5.0/26": LearnedPath("10.0.0.2", "10.0.0.2", (), "10.0.0.1"),
                            "10.244.1.0/26": LearnedPath("10.0.0.2", "10.0.0.2")},
               "10.0.0.3": {"10.244.3.0/26": LearnedPath("10.0.0.3", "10.0.0.3", (), "10.0.0.7", ("2.2.2.2",))}}
    out = plan(learned, own={"10.244.1.0/26"}, targets=["10.0.0.2"])
    assert out == {"10.0.0.2": {"10.244.3.0/26": Reflected("10.0.0.3", "10.0.0.7", ("1.1.1.1", "2.2.2.2"))}}


def test_command_text():
    r = Reflected("10.0.0.2", "10.0.0.2", ("1.1.1.1",))
    assert announce_command("10.0.0.3", "10.244.2.0/26", r) == (
        "neighbor 10.0.0.3 announce route 10.244.2.0/26 next-hop 10.0.0.2 "
        "originator-id 10.0.0.2 cluster-list [ 1.1.1.1 ]")
