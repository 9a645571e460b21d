"""BFD (bgp.bfd): control packets byte for byte, the reception checks of RFC 5880 6.8.6 and
RFC 5881, and the session state machine driven with a fake clock, two sessions talking to
each other as two systems would; then what BFD does to a BGP session (bgp.session)."""
import pytest

from bgp.bfd import (BFD_PORT, BfdConfig, ControlPacket, Diag, PacketError, Session, State,
                     check_ports, decode, new_discriminator)
from bgp.config import PeerConfig, SpeakerConfig, bfd_peers
from bgp.messages import parse_line
from bgp.session import BgpState
from tests.bgp_lines import ANNOUNCE, DOWN, UP

# RFC 5880 4.1: version 1, diag 0 | state Up, P | mult 3 | length 24 | discriminators 1, 2 |
# desired min TX 100 ms, required min RX 300 ms, no echo (all in microseconds)
UP_POLL = bytes.fromhex("20" "e0" "03" "18" "00000001" "00000002" "000186a0" "000493e0" "00000000")


def test_encode_is_rfc5880_section_4_1_byte_for_byte():
    pkt = ControlPacket(state=State.UP, my_discr=1, your_discr=2, detect_mult=3,
                        desired_min_tx=100_000, required_min_rx=300_000, poll=True)
    assert pkt.encode() == UP_POLL
    down = ControlPacket(state=State.DOWN, my_discr=0xDEADBEEF, diag=Diag.DETECTION_EXPIRED,
                         detect_mult=5, desired_min_tx=1_000_000, required_min_rx=300_000,
                         final=True)
    assert down.encode() == bytes.fromhex(
        "21" "50" "05" "18" "deadbeef" "00000000" "000f4240" "000493e0" "00000000")
    assert decode(down.encode()) == down and decode(UP_POLL) == pkt


@pytest.mark.parametrize("data, why", [
    (UP_POLL[:23], "shorter than a control packet"),
    (bytes([0x40]) + UP_POLL[1:], "version 2"),
    (UP_POLL[:3] + bytes([30]) + UP_POLL[4:], "length field 30 with 24 bytes"),
    (UP_POLL[:3] + bytes([20]) + UP_POLL[4:], "length field 20"),
    (UP_POLL[:2] + bytes([0]) + UP_POLL[3:], "detect multiplier 0"),
    (UP_POLL[:1] + bytes([0xE1]) + UP_POLL[2:], "multipoint bit set"),
    (UP_POLL[:1] + bytes([0xE4]) + UP_POLL[2:], "authentication present"),
    (UP_POLL[:4] + bytes(4) + UP_POLL[8:], "my discriminator 0"),
    (UP_POLL[:8] + bytes(4) + UP_POLL[12:], "your discriminator 0 in state Up"),
])
def test_decode_discards_what_rfc5880_6_8_6_discards(data, why):
    with pytest.raises(PacketError, match=why):
        decode(data)


def test_your_discriminator_may_be_zero_only_while_down():
    for state in (State.DOWN, State.ADMIN_DOWN):
        assert decode(ControlPacket(state=state, my_discr=7).encode()).your_discr == 0


def test_rfc5881_ports():
    check_ports(49152, BFD_PORT)
    check_ports(65535, 3784)
    with pytest.raises(PacketError, match="destination port 3785"):
        check_ports(50000, 3785)
    with pytest.raises(PacketError, match="source port 49151 outside"):
        check_ports(49151, 3784)


def test_config_bounds_and_discriminators():
    with pytest.raises(ValueError):
        BfdConfig(interval_ms=5)
    with pytest.raises(ValueError):
        BfdConfig(multiplier=1)
    picks = iter([0, 5, 5, 9])
    assert new_discriminator({5}, lambda bits: next(picks)) == 9   # never 0, never taken


# --- two sessions talking ------------------------------------------------------------------
def pair(interval: int = 100, mult: int = 3) -> tuple[Session, Session]:
    cfg = BfdConfig(interval, mult)
    return Session("10.99.1.1", 11, cfg, rng=lambda: 1.0), Session("10.99.1.11", 22, cfg,
                                                                   rng=lambda: 1.0)


def exchange(a: Session, b: Session, now: float) -> list:
    """Each sends what is due now; the other receives it. The transitions that happened."""
    out = []
    for src, dst in ((a, b), (b, a)):
        pkt = src.due(now)
        if pkt is not None:
            out.append(dst.receive(decode(pkt.encode()), now))
    return [t for t in out if t is not None]


def test_three_way_handshake_slow_until_up_then_a_poll_sequence_to_the_fast_interval():
    a, b = pair()
    first = a.due(0.0)
    assert first.state is State.DOWN and first.desired_min_tx == 1_000_000   # 6.8.3: slow
    assert first.required_min_rx == 100_000 and first.your_discr == 0
    b.receive(first, 0.0)
    assert b.state is State.INIT and b.remote_discr == 11
    a.receive(b.due(0.0), 0.0)                       # a: Down + Init -> Up
    assert a.state is State.UP and a.polling
    pa = a.due(0.0)                                  # sent at once on Up
    assert pa.state is State.UP and pa.poll and pa.desired_min_tx == 100_000   # P: faster
    b.receive(pa, 0.0)                               # b: Init + Up -> Up, and answers P
    assert b.state is State.UP and b.polling
    pb = b.due(0.0)                                  # at once, with F (and no P yet)
    assert pb.final and not pb.poll
    a.receive(pb, 0.0)
    assert not a.polling
    pb = b.due(0.1)                                  # b's own Poll Sequence
    assert pb.poll and not pb.final
    a.receive(pb, 0.1)
    pa = a.due(0.1)
    assert pa.final and not pa.poll                  # never P and F together (6.5)
    b.receive(pa, 0.1)
    assert not b.polling
    assert a.tx_interval() == pytest.approx(0.1) and a.detection_time() == pytest.approx(0.3)


def test_tx_is_jittered_between_75_and_100_percent():
    a = Session("p", 1, BfdConfig(100, 3), rng=lambda: 0.0)
    a.due(10.0)
    assert a.next_tx == pytest.approx(10.75)        # slow (1 s) while Down, less 25 %
    a.rng = lambda: 1.0
    a.due(20.0)
    assert a.next_tx == pytest.approx(21.0)


def up_pair() -> tuple[Session, Session]:
    a, b = pair()
    for t in range(6):
        exchange(a, b, t * 1.0)
    assert a.state is b.state is State.UP and not a.polling and not b.polling
    return a, b


def test_silence_for_the_detection_time_is_a_failure():
    a, _b = up_pair()
    last = 5.0
    assert a.tick(last + 0.29) is None
    t = a.tick(last + 0.31)
    assert (t.old, t.new, t.diag) == (State.UP, State.DOWN, Diag.DETECTION_EXPIRED) and t.failure
    assert a.flaps == 1 and a.last_down == "control detection time expired"
    assert a.remote_discr == 0 and a.status().state == "Down"
    assert a.due(10.0).desired_min_tx == 1_000_000   # slow again


def test_the_peer_saying_down_is_a_failure_but_admin_down_is_not():
    a, b = up_pair()
    b.tick(100.0)                              # b timed out: it tells a
    t = a.receive(decode(b.due(100.0).encode()), 100.0)
    assert t.diag is Diag.NEIGHBOR_DOWN and t.failure
    a, b = up_pair()
    b.admin_down(100.0)
    t = a.receive(decode(b.due(100.0).encode()), 100.0)
    assert t.new is State.DOWN and t.remote_admin_down and not t.failure   # RFC 5882 3.2


def test_new_intervals_go_through_a_poll_sequence():
    a, b = up_pair()
    a.reconfigure(BfdConfig(300, 5), 10.0)
    pkt = a.due(10.0)
    assert pkt.poll and pkt.desired_min_tx == 300_000 and pkt.detect_mult == 5
    b.receive(pkt, 10.0)
    assert b.detection_time() == pytest.approx(1.5)


# --- what BFD does to BGP ------------------------------------------------------------------
PEER = "10.99.1.1"


def bgp() -> BgpState:
    cfg = SpeakerConfig(router_id="10.99.1.11", local_address="10.99.1.11", local_as=64601,
                        peers=[PeerConfig(PEER, 65001, bfd=BfdConfig(100, 3))])
    st = BgpState(cfg)
    st.handle(parse_line(UP))
    st.handle(parse_line(ANNOUNCE))
    assert st.learned()
    return st


def test_bfd_down_drops_the_peers_paths_and_tears_the_session_down():
    st = bgp()
    ch = st.bfd_down(PEER, "control detection time expired")
    assert ch.changed and ch.commands == [f"neighbor {PEER} teardown 10"]   # Cease, BFD Down
    assert not st.learned()
    p = st.peers()[0]
    assert p.state == "Idle" and p.reason == "bfd: control detection time expired"
    assert not st.handle(parse_line(ANNOUNCE)).changed, "a queued update must not come back"
    st.handle(parse_line(DOWN))                 # ExaBGP's own report keeps BFD's reason
    assert st.peers()[0].reason == "bfd: control detection time expired"
    st.handle(parse_line(UP))                   # re-established: updates count again
    assert st.handle(parse_line(ANNOUNCE)).changed and st.learned()


def test_bfd_settings_change_no_exabgp_configuration():
    with_bfd = PeerConfig(PEER, 65001, bfd=BfdConfig(100, 3))
    assert with_bfd == PeerConfig(PEER, 65001), "a BFD change must not reload ExaBGP"
    cfg = SpeakerConfig(router_id="10.99.1.11", local_address="10.99.1.11", local_as=64601,
                        peers=[with_bfd, PeerConfig("10.99.1.2", 65002)])
    assert bfd_peers(cfg) == {PEER: BfdConfig(100, 3)}
