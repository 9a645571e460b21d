"""Parsing of ExaBGP 5.x API lines (captured from a real ExaBGP 5.0.15 against FRR 8.4)."""
import pytest

from bgp.messages import (Ack, EndOfRib, MessageError, NeighborList, Notification, Other,
                          PeerStateChange, Shutdown, Update, parse_as_path, parse_line)
from bgp.model import LearnedPath
from tests.bgp_lines import ANNOUNCE, DOWN, EOR, HEAD, NEIGH, SHUTDOWN, UP, WITHDRAW


def test_acks():
    assert parse_line("done\n") == Ack(ok=True, text="done")
    assert parse_line("error") == Ack(ok=False, text="error")


def test_state_up_and_down():
    assert parse_line(UP) == PeerStateChange(peer="10.99.1.1", peer_as=65001, local="10.99.1.11",
                                             state="up")
    down = parse_line(DOWN)
    assert isinstance(down, PeerStateChange)
    assert down.state == "down" and "shutting down" in down.reason


def test_announce_with_5x_as_path():
    ev = parse_line(ANNOUNCE)
    path = LearnedPath(next_hop="10.99.1.12", peer="10.99.1.1", as_path=(65001, 64602))
    assert ev == Update(peer="10.99.1.1",
                        announced=(("10.244.2.0/26", path), ("10.244.3.0/26", path)), withdrawn=())


def test_withdraw():
    assert parse_line(WITHDRAW) == Update(peer="10.99.1.1", announced=(), withdrawn=("10.244.2.0/26",))


def test_announce_and_withdraw_in_one_update_and_compact_nlri():
    line = (HEAD + '"type": "update", ' + NEIGH + ', "message": { "update": { "attribute": '
            '{ "as-path": [65001] }, "announce": { "ipv4 unicast": { "10.99.1.12": '
            '[ "10.244.9.0/26" ] } }, "withdraw": { "ipv4 unicast": [ "10.244.8.0/26" ] } } } } }')
    ev = parse_line(line)
    assert ev.announced == (("10.244.9.0/26", LearnedPath("10.99.1.12", "10.99.1.1", (65001,))),)
    assert ev.withdrawn == ("10.244.8.0/26",)


def test_other_families_are_ignored():
    line = (HEAD + '"type": "update", ' + NEIGH + ', "message": { "update": { "announce": '
            '{ "ipv6 unicast": { "fe80::1": [ { "nlri": "fd00::/64" } ] } } } } } }')
    assert parse_line(line) == Update(peer="10.99.1.1")


def test_eor_shutdown_and_others():
    assert parse_line(EOR) == EndOfRib(peer="10.99.1.1", family="ipv4 unicast")
    assert parse_line(SHUTDOWN) == Shutdown()
    keepalive = HEAD + '"type": "keepalive", ' + NEIGH + ', "direction": "receive" } }'
    assert isinstance(parse_line(keepalive), Other)
    assert parse_line("some text answer") == Other(kind="text", text="some text answer")


def test_notification_from_peer():
    line = (HEAD + '"type": "notification", ' + NEIGH + ', "direction": "receive", "notification": '
            '{ "code": 6, "subcode": 2, "data": "", "message": "" } } }')
    assert parse_line(line) == Notification(peer="10.99.1.1", code=6, subcode=2, message="")


def test_as_path_shapes():
    assert parse_as_path({"0": {"element": "as-sequence", "value": [1, 2]},
                          "1": {"element": "as-set", "value": [3]}}) == (1, 2, 3)
    assert parse_as_path([65001, 64601]) == (65001, 64601)
    assert parse_as_path({}) == ()
    with pytest.raises(MessageError):
        parse_as_path({"0": {"element": "as-sequence"}})


@pytest.mark.parametrize("bad", [
    "{not json",
    "{\"type\": \"update\"}",
    '{"type": "update", "neighbor": {"address": {"peer": "10.0.0.1"}}}',
    '{"type": "state", "neighbor": {}}',
    ('{"type": "update", "neighbor": {"address": {"peer": "10.0.0.1"}, "message": {"update": '
     '{"announce": {"ipv4 unicast": {"nonsense": [{"nlri": "10.0.0.0/24"}]}}}}}}'),
    ('{"type": "update", "neighbor": {"address": {"peer": "10.0.0.1"}, "message": {"update": '
     '{"announce": {"ipv4 unicast": {"10.0.0.2": [{"nlri": "10.0.0.1/24"}]}}}}}}'),
])
def test_malformed_lines_raise_with_context(bad):
    with pytest.raises(MessageError):
        parse_line(bad)


def test_show_neighbor_json_answer():
    line = ('[{"state": "up", "duration": 12, "fsm": "established", "peer": {"address": "10.99.1.1", '
            '"as": 65001}, "local": {"address": "10.99.1.11"}}, {"state": "down", "duration": 3, '
            '"peer": {"address": "10.99.1.2", "as": 65002}}]')
    assert parse_line(line) == NeighborList(peers=(("10.99.1.1", True), ("10.99.1.2", False)))
    with pytest.raises(MessageError):
        parse_line('[{"state": "up"}]')


def test_adj_rib_in_v2_line_is_an_announcement():
    line = ('{"peer": {"address": "10.99.1.1"}, "route": {"nlri": {"prefix": "10.244.2.0/26", '
            '"nexthop": "10.99.1.12", "family": {"afi": "ipv4", "safi": "unicast"}}, "attributes": '
            '{"origin": "igp", "as-path": {"0": {"element": "as-sequence", "value": [65001, 64602]}}}}}')
    path = LearnedPath("10.99.1.12", "10.99.1.1", (65001, 64602))
    assert parse_line(line) == Update(peer="10.99.1.1", announced=(("10.244.2.0/26", path),))
