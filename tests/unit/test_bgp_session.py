"""The session state machine (bgp.session) driven with real ExaBGP lines and a fake clock:
no process, no socket. Each event's Changes say whether routes must be recomputed and
which commands go to ExaBGP."""
import pytest

from bgp.config import PeerConfig, SpeakerConfig
from bgp.messages import parse_line
from bgp.model import LearnedPath
from bgp.session import RIB_DUMP, SHOW_NEIGHBORS, BgpState, Changes, SyncState
from tests.bgp_lines import ANNOUNCE, DOWN, EOR, SHUTDOWN, UP, WITHDRAW

PEER1, PEER2 = "10.99.1.1", "10.99.1.2"
PATH = LearnedPath("10.99.1.12", PEER1, (65001, 64602))


class Clock:
    """Monotonic time that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(graceful_restart: int = 0, restart_delay: float = 1.0) -> tuple[BgpState, Clock]:
    clock = Clock()
    cfg = SpeakerConfig(router_id="10.99.1.11", local_address="10.99.1.11", local_as=64601,
                        graceful_restart=graceful_restart,
                        peers=[PeerConfig(PEER1, 65001), PeerConfig(PEER2, 65002)])
    return BgpState(cfg, restart_delay=restart_delay, clock=clock, wall_clock=clock), clock


def feed(st: BgpState, line: str) -> Changes:
    return st.handle(parse_line(line))


def from_peer2(line: str) -> str:
    return line.replace(f'"peer": "{PEER1}"', f'"peer": "{PEER2}"').replace(
        '"peer": 65001', '"peer": 65002')


@pytest.fixture
def st():
    return make()[0]


def test_announce_is_diffed_and_idempotent(st):
    changes, added, removed = st.announce({"10.244.1.0/26", "10.244.5.0/26"})
    assert changes.commands == ["announce route 10.244.1.0/26 next-hop self",
                                "announce route 10.244.5.0/26 next-hop self"]
    assert added == {"10.244.1.0/26", "10.244.5.0/26"} and not removed
    assert not changes.changed, "no peer is up: nobody's routes change"
    assert st.announce({"10.244.1.0/26", "10.244.5.0/26"})[0].commands == []
    assert st.announce({"10.244.1.0/26"})[0].commands == [
        "withdraw route 10.244.5.0/26 next-hop self"]
    with pytest.raises(ValueError):
        st.announce({"10.244.1.1/26"})


def test_session_up_learn_withdraw_down(st):
    st.announce({"10.244.1.0/26"})
    up = feed(st, UP)
    assert up.changed
    assert up.commands == ["neighbor 10.99.1.1 announce route 10.244.1.0/26 next-hop self"]
    p = {s.address: s for s in st.peers()}
    assert p[PEER1].state == "Established" and p[PEER1].sent == 1
    assert p[PEER2].state == "Idle" and p[PEER2].sent == 0

    assert feed(st, ANNOUNCE).changed
    assert st.learned() == {"10.244.2.0/26": {PATH}, "10.244.3.0/26": {PATH}}
    assert not feed(st, ANNOUNCE).changed, "the same update again changes nothing"
    assert {s.address: s.received for s in st.peers()}[PEER1] == 2

    assert feed(st, WITHDRAW).changed
    assert set(st.learned()) == {"10.244.3.0/26"}

    assert feed(st, DOWN).changed
    assert st.learned() == {}
    down = {s.address: s for s in st.peers()}[PEER1]
    assert down.state == "Idle" and "shutting down" in down.reason


def test_updates_from_unknown_peers_are_ignored(st):
    assert not feed(st, ANNOUNCE.replace('"peer": "10.99.1.1"', '"peer": "10.99.1.77"')).changed
    assert not feed(st, "done").changed, "acks are the relay connection's business"
    assert st.learned() == {}


def test_connecting_relay_is_told_everything(st):
    st.announce({"10.244.1.0/26"})      # while no relay is connected
    assert st.desired == {"10.244.1.0/26"}
    assert st.connected(adopted=False).commands == [
        "announce route 10.244.1.0/26 next-hop self", SHOW_NEIGHBORS]
    assert st.synced()


def test_adopted_resync_reads_rib_then_neighbours_again(st):
    st.start(adopted=True)
    assert not st.synced() and st.sync is SyncState.READ_BACK
    assert st.connected(adopted=True).commands == [SHOW_NEIGHBORS]
    neighbours = ('[{"state": "up", "peer": {"address": "10.99.1.1"}}, '
                  '{"state": "down", "peer": {"address": "10.99.1.2"}}]')
    first = feed(st, neighbours)
    assert first.changed                 # peer state learned from the answer
    assert first.commands == [RIB_DUMP, SHOW_NEIGHBORS]
    assert not st.synced() and st.sync is SyncState.DUMPING
    rib = ('{"peer": {"address": "10.99.1.1"}, "route": {"nlri": {"prefix": "10.244.2.0/26", '
           '"nexthop": "10.99.1.12", "family": {"afi": "ipv4", "safi": "unicast"}}, "attributes": {}}}')
    assert feed(st, rib).changed
    feed(st, "done")
    assert not st.synced(), "an ack is no proof: the relay may hold the old agent's acks"
    assert feed(st, neighbours).changed
    assert st.synced() and set(st.learned()) == {"10.244.2.0/26"}
    assert [s.state for s in st.peers()] == ["Established", "Idle"]


def test_adopted_with_no_peer_up_is_synced_at_the_first_answer(st):
    st.start(adopted=True)
    st.connected(adopted=True)
    down = feed(st, '[{"state": "down", "peer": {"address": "10.99.1.1"}}]')
    assert down.changed and down.commands == [] and st.synced()


def test_restart_keeps_routes_until_every_peer_sent_end_of_rib():
    st, clock = make(graceful_restart=30)
    feed(st, UP)
    feed(st, from_peer2(UP))
    feed(st, ANNOUNCE)
    gone = st.exabgp_exited("exabgp exited with code -9")
    assert gone.changed and st.learned() == {}
    assert not st.synced() and st.sync is SyncState.RESTARTING, "kernel routes must stay"
    assert {s.reason for s in st.peers()} == {"exabgp exited with code -9"}
    assert st.connected(adopted=False).commands == [SHOW_NEIGHBORS]
    feed(st, UP)
    feed(st, ANNOUNCE)
    assert not feed(st, EOR).changed and not st.synced(), "peer 2 is not back yet"
    feed(st, from_peer2(UP))
    clock.now += 30
    done = feed(st, from_peer2(EOR))
    assert done.changed and st.synced() and st.sync is SyncState.SYNCED
    assert set(st.learned()) == {"10.244.2.0/26", "10.244.3.0/26"}


def test_restart_deadline_ends_the_wait():
    st, clock = make(graceful_restart=30, restart_delay=1.0)
    feed(st, UP)
    st.exabgp_exited("exabgp exited with code 1")
    feed(st, UP)
    clock.now += 31
    assert not st.synced(), "30 s restart time plus 1 s restart delay"
    clock.now += 0.5
    assert st.synced(), "a peer without End-of-RIB does not hold the routes forever"


def test_exabgp_shutting_down_is_a_restart_unless_we_stop_it():
    st, _ = make()
    feed(st, UP)
    feed(st, ANNOUNCE)
    assert feed(st, SHUTDOWN).changed
    assert not st.synced() and st.learned() == {}
    st2, _ = make()
    feed(st2, UP)
    st2.closing = True                   # our stop() or detach()
    assert feed(st2, SHUTDOWN).changed and st2.synced()


def test_stop_withdraws_everything_and_tears_established_sessions_down(st):
    st.announce({"10.244.1.0/26"})
    feed(st, UP)
    assert st.withdraw_all() == ["withdraw route 10.244.1.0/26 next-hop self"]
    assert st.teardown() == ["neighbor 10.99.1.1 teardown 2"]
    feed(st, ANNOUNCE)
    assert st.stopped().changed and st.learned() == {} and st.synced()
    assert {s.state for s in st.peers()} == {"Idle"}
