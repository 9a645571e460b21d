"""The Speaker's bookkeeping of ExaBGP events, driven with real ExaBGP lines but no process:
its relay connection is one end of a socketpair, so we also see the commands it sends."""
import socket

import pytest

from bgp.model import LearnedPath
from bgp.speaker import PeerConfig, Speaker, SpeakerConfig
from tests.exabgp_lines import ANNOUNCE, DOWN, UP, WITHDRAW, feed, sent


@pytest.fixture
def speaker(tmp_path):
    calls = []
    cfg = SpeakerConfig(router_id="10.99.1.11", local_address="10.99.1.11", local_as=64601,
                        peers=[PeerConfig("10.99.1.1", 65001), PeerConfig("10.99.1.2", 65002)])
    sp = Speaker(cfg, tmp_path, on_change=lambda: calls.append(1))
    ours, theirs = socket.socketpair()
    sp._conn = ours
    theirs.settimeout(5)
    yield sp, theirs, calls
    ours.close()
    theirs.close()


def test_announce_is_diffed_and_idempotent(speaker):
    sp, conn, _ = speaker
    sp.announce({"10.244.1.0/26", "10.244.5.0/26"})
    assert sorted(sent(conn)) == ["announce route 10.244.1.0/26 next-hop self",
                                  "announce route 10.244.5.0/26 next-hop self"]
    sp.announce({"10.244.1.0/26", "10.244.5.0/26"})
    assert sent(conn) == []
    sp.announce({"10.244.1.0/26"})
    assert sent(conn) == ["withdraw route 10.244.5.0/26 next-hop self"]
    with pytest.raises(ValueError):
        sp.announce({"10.244.1.1/26"})


def test_session_up_learn_withdraw_down(speaker):
    sp, conn, calls = speaker
    sp.announce({"10.244.1.0/26"})
    sent(conn)
    assert feed(sp, UP)
    assert sent(conn) == ["neighbor 10.99.1.1 announce route 10.244.1.0/26 next-hop self"]
    p = {s.address: s for s in sp.peers()}
    assert p["10.99.1.1"].state == "Established" and p["10.99.1.1"].sent == 1
    assert p["10.99.1.2"].state == "Idle" and p["10.99.1.2"].sent == 0

    assert feed(sp, ANNOUNCE)
    path = LearnedPath("10.99.1.12", "10.99.1.1", (65001, 64602))
    assert sp.learned() == {"10.244.2.0/26": {path}, "10.244.3.0/26": {path}}
    assert not feed(sp, ANNOUNCE), "the same update again changes nothing"
    assert {s.address: s.received for s in sp.peers()}["10.99.1.1"] == 2

    assert feed(sp, WITHDRAW)
    assert set(sp.learned()) == {"10.244.3.0/26"}

    assert feed(sp, DOWN)
    assert sp.learned() == {}
    down = {s.address: s for s in sp.peers()}["10.99.1.1"]
    assert down.state == "Idle" and "shutting down" in down.reason


def test_acks_pair_with_commands_and_errors_are_kept(speaker):
    sp, conn, _ = speaker
    sp.announce({"10.244.1.0/26", "10.244.2.0/26"})
    assert not feed(sp, "done")
    assert not feed(sp, "error")
    assert list(sp.command_errors) == ["announce route 10.244.2.0/26 next-hop self"]


def test_updates_from_unknown_peers_and_garbage_are_ignored(speaker):
    sp, _, _ = speaker
    assert not feed(sp, ANNOUNCE.replace('"peer": "10.99.1.1"', '"peer": "10.99.1.77"'))
    assert not feed(sp, "{broken")
    assert sp.learned() == {}


def test_without_relay_commands_wait_for_the_connection(speaker):
    sp, conn, _ = speaker
    sp._drop_connection()
    sp.announce({"10.244.1.0/26"})
    assert sp.announced() == {"10.244.1.0/26"}


def test_adopted_resync_reads_rib_then_neighbours_again(speaker):
    sp, conn, _ = speaker
    sp._resyncing = True
    sp._refresh = {"10.99.1.1", "10.99.1.2"}
    assert not sp.synced()
    neighbours = '[{"state": "up", "peer": {"address": "10.99.1.1"}}, {"state": "down", "peer": {"address": "10.99.1.2"}}]'
    assert feed(sp, neighbours)          # peer state learned from the answer
    assert sent(conn) == ["show adj-rib in json", "show neighbor json"]
    assert not sp.synced()
    rib = ('{"peer": {"address": "10.99.1.1"}, "route": {"nlri": {"prefix": "10.244.2.0/26", '
           '"nexthop": "10.99.1.12", "family": {"afi": "ipv4", "safi": "unicast"}}, "attributes": {}}}')
    assert feed(sp, rib)
    feed(sp, "done")
    assert not sp.synced(), "an ack is no proof: the relay may hold the old agent's acks"
    assert feed(sp, neighbours)
    assert sp.synced() and set(sp.learned()) == {"10.244.2.0/26"}
    assert [s.state for s in sp.peers()] == ["Established", "Idle"]
