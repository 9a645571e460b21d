"""The session state machine (bgp.session) on reconfiguration (stale paths while a session
is re-established, a new ExaBGP for a new address) and route reflection, driven with real
ExaBGP lines and a fake clock, no process."""
from bgp.config import PeerConfig, SpeakerConfig
from bgp.messages import parse_line
from bgp.session import STALE_SETTLE, BgpState, SyncState
from tests.bgp_lines import ANNOUNCE, DOWN, EOR, UP


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def config(*peers: PeerConfig, **kw) -> SpeakerConfig:
    return SpeakerConfig(router_id="10.99.1.11", local_address=kw.pop("local_address", "10.99.1.11"),
                         local_as=kw.pop("local_as", 64601), peers=list(peers), **kw)


def make(cfg: SpeakerConfig) -> tuple[BgpState, Clock]:
    clock = Clock()
    return BgpState(cfg, clock=clock, wall_clock=clock), clock


def feed(st: BgpState, line: str):
    return st.handle(parse_line(line))


def test_changed_peer_keeps_its_paths_as_stale_until_end_of_rib():
    st, _ = make(config(PeerConfig("10.99.1.1", 65001)))
    feed(st, UP)
    feed(st, ANNOUNCE)
    assert set(st.learned()) == {"10.244.2.0/26", "10.244.3.0/26"}
    new = config(PeerConfig("10.99.1.1", 65001, hold_time=3))
    assert st.reconfigure(new) == "reload"
    assert st.cfg == new
    feed(st, DOWN)                      # ExaBGP re-establishes the session for the new hold time
    assert set(st.learned()) == {"10.244.2.0/26", "10.244.3.0/26"}, "kept while re-establishing"
    feed(st, UP)
    assert set(st.learned()) == {"10.244.2.0/26", "10.244.3.0/26"}
    assert feed(st, EOR).changed        # the peer has re-sent everything: stale paths go
    assert st.learned() == {}


def test_stale_paths_of_a_peer_without_end_of_rib_go_after_the_settle_time():
    st, clock = make(config(PeerConfig("10.99.1.1", 65001)))
    feed(st, UP)
    feed(st, ANNOUNCE)
    st.reconfigure(config(PeerConfig("10.99.1.1", 65001, hold_time=3)))
    feed(st, DOWN)
    up = feed(st, UP)
    assert up.expire_in is not None and up.expire_in > STALE_SETTLE, "the Speaker sets a timer"
    clock.now += STALE_SETTLE
    assert not st.expire().changed and set(st.learned()) == {"10.244.2.0/26", "10.244.3.0/26"}
    clock.now += up.expire_in - STALE_SETTLE
    assert st.expire().changed
    assert st.learned() == {}


def test_unchanged_peer_going_down_drops_its_paths_at_once():
    st, _ = make(config(PeerConfig("10.99.1.1", 65001)))
    feed(st, UP)
    feed(st, ANNOUNCE)
    assert st.reconfigure(config(PeerConfig("10.99.1.1", 65001),
                                 PeerConfig("10.99.1.3", 65001))) == "reload"
    assert [p.address for p in st.peers()] == ["10.99.1.1", "10.99.1.3"]
    feed(st, DOWN)
    assert st.learned() == {}


def test_removed_peer_is_forgotten_and_same_config_is_unchanged():
    cfg = config(PeerConfig("10.99.1.1", 65001), PeerConfig("10.99.1.3", 65001))
    st, _ = make(cfg)
    assert st.reconfigure(cfg) == "unchanged"
    feed(st, UP)
    feed(st, ANNOUNCE)
    assert st.reconfigure(config(PeerConfig("10.99.1.3", 65001))) == "reload"
    assert [p.address for p in st.peers()] == ["10.99.1.3"] and st.learned() == {}
    assert not feed(st, ANNOUNCE).changed, "updates from a removed peer are ignored"


def test_new_local_address_replaces_exabgp_keeping_routes():
    st, _ = make(config(PeerConfig("10.99.1.1", 65001)))
    feed(st, UP)
    assert st.reconfigure(config(PeerConfig("10.99.1.1", 65001),
                                 local_address="10.99.1.21")) == "restart"
    st.replacing()
    assert not st.synced() and st.sync is SyncState.RESTARTING


def test_route_reflector_sends_client_paths_to_the_other_client():
    st, _ = make(config(PeerConfig("10.99.1.1", 65001, route_reflector_client=True),
                        PeerConfig("10.99.1.2", 65001, route_reflector_client=True),
                        local_as=65001, cluster_id="1.0.0.1"))
    feed(st, UP)
    feed(st, UP.replace('"peer": "10.99.1.1"', '"peer": "10.99.1.2"'))
    assert feed(st, ANNOUNCE).commands == [
        "neighbor 10.99.1.2 announce route 10.244.2.0/26 next-hop 10.99.1.12 "
        "originator-id 10.99.1.1 cluster-list [ 1.0.0.1 ]",
        "neighbor 10.99.1.2 announce route 10.244.3.0/26 next-hop 10.99.1.12 "
        "originator-id 10.99.1.1 cluster-list [ 1.0.0.1 ]"]
    assert {p.address: p.sent for p in st.peers()} == {"10.99.1.1": 0, "10.99.1.2": 2}
    assert st.withdraw_all() == [
        "neighbor 10.99.1.2 withdraw route 10.244.2.0/26 next-hop 10.99.1.12",
        "neighbor 10.99.1.2 withdraw route 10.244.3.0/26 next-hop 10.99.1.12"]


def test_route_reflector_withdraws_what_a_client_no_longer_sends():
    st, _ = make(config(PeerConfig("10.99.1.1", 65001, route_reflector_client=True),
                        PeerConfig("10.99.1.2", 65001, route_reflector_client=True),
                        local_as=65001, cluster_id="1.0.0.1"))
    feed(st, UP)
    feed(st, UP.replace('"peer": "10.99.1.1"', '"peer": "10.99.1.2"'))
    feed(st, ANNOUNCE)
    down = feed(st, DOWN)
    assert down.changed and down.commands == [
        "neighbor 10.99.1.2 withdraw route 10.244.2.0/26 next-hop 10.99.1.12",
        "neighbor 10.99.1.2 withdraw route 10.244.3.0/26 next-hop 10.99.1.12"]
    assert {p.address: p.sent for p in st.peers()} == {"10.99.1.1": 0, "10.99.1.2": 0}
