"""Speaker bookkeeping for reconfiguration (stale paths while a session is re-established)
and route reflection, driven with real ExaBGP lines and no process (as test_bgp_speaker_state)."""
import socket

from bgp.speaker import PeerConfig, Speaker, SpeakerConfig
from tests.exabgp_lines import ANNOUNCE, DOWN, EOR, UP, feed, sent


def make(tmp_path, cfg):
    sp = Speaker(cfg, tmp_path)
    ours, theirs = socket.socketpair()
    sp._conn = ours
    return sp, theirs


def test_changed_peer_keeps_its_paths_as_stale_until_end_of_rib(tmp_path):
    cfg = SpeakerConfig(router_id="10.99.1.11", local_address="10.99.1.11", local_as=64601,
                        peers=[PeerConfig("10.99.1.1", 65001)])
    sp, _ = make(tmp_path, cfg)
    feed(sp, UP)
    feed(sp, ANNOUNCE)
    assert set(sp.learned()) == {"10.244.2.0/26", "10.244.3.0/26"}
    new = SpeakerConfig(router_id="10.99.1.11", local_address="10.99.1.11", local_as=64601,
                        peers=[PeerConfig("10.99.1.1", 65001, hold_time=3)])
    sp.reconfigure(new)
    assert sp.cfg == new
    feed(sp, DOWN)                      # ExaBGP re-establishes the session for the new hold time
    assert set(sp.learned()) == {"10.244.2.0/26", "10.244.3.0/26"}, "kept while re-establishing"
    feed(sp, UP)
    assert set(sp.learned()) == {"10.244.2.0/26", "10.244.3.0/26"}
    assert feed(sp, EOR)                # the peer has re-sent everything: stale paths go
    assert sp.learned() == {}


def test_unchanged_peer_going_down_drops_its_paths_at_once(tmp_path):
    cfg = SpeakerConfig(router_id="10.99.1.11", local_address="10.99.1.11", local_as=64601,
                        peers=[PeerConfig("10.99.1.1", 65001)])
    sp, _ = make(tmp_path, cfg)
    feed(sp, UP)
    feed(sp, ANNOUNCE)
    sp.reconfigure(SpeakerConfig(router_id="10.99.1.11", local_address="10.99.1.11",
                                 local_as=64601, peers=[PeerConfig("10.99.1.1", 65001),
                                                        PeerConfig("10.99.1.3", 65001)]))
    assert [p.address for p in sp.peers()] == ["10.99.1.1", "10.99.1.3"]
    feed(sp, DOWN)
    assert sp.learned() == {}


def test_route_reflector_sends_client_paths_to_the_other_client(tmp_path):
    cfg = SpeakerConfig(router_id="10.99.1.11", local_address="10.99.1.11", local_as=65001,
                        cluster_id="1.0.0.1",
                        peers=[PeerConfig("10.99.1.1", 65001, route_reflector_client=True),
                               PeerConfig("10.99.1.2", 65001, route_reflector_client=True)])
    sp, theirs = make(tmp_path, cfg)
    feed(sp, UP)
    feed(sp, UP.replace('"peer": "10.99.1.1"', '"peer": "10.99.1.2"'))
    sent(theirs)
    feed(sp, ANNOUNCE)
    with sp._lock:
        sp._reflect()
    assert sent(theirs) == [
        "neighbor 10.99.1.2 announce route 10.244.2.0/26 next-hop 10.99.1.12 "
        "originator-id 10.99.1.1 cluster-list [ 1.0.0.1 ]",
        "neighbor 10.99.1.2 announce route 10.244.3.0/26 next-hop 10.99.1.12 "
        "originator-id 10.99.1.1 cluster-list [ 1.0.0.1 ]"]
    assert {p.address: p.sent for p in sp.peers()} == {"10.99.1.1": 0, "10.99.1.2": 2}
