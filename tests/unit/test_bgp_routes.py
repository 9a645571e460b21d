"""desired_routes: the pure choice of kernel routes from learned BGP paths."""
import pytest

from bgp.model import LearnedPath, Route
from bgp.routes import RouteApplier, Skipped, desired_routes

SUBNETS = ["10.99.1.0/24"]


def lp(nh, peer="10.99.1.1", path=(65001, 64602)):
    return LearnedPath(next_hop=nh, peer=peer, as_path=tuple(path))


def test_plain_route_via_peer_node():
    plan = desired_routes({"10.244.2.0/26": {lp("10.99.1.12")}}, {"10.244.1.0/26"}, SUBNETS)
    assert plan.routes == [Route("10.244.2.0/26", ("10.99.1.12",))]
    assert plan.skipped == []
    assert list(plan) == plan.routes and len(plan) == 1


def test_own_prefix_echoed_back_is_never_installed():
    learned = {"10.244.1.0/26": {lp("10.99.1.1", path=(65001, 64601))},
               "10.244.2.0/26": {lp("10.99.1.12")}}
    plan = desired_routes(learned, {"10.244.1.0/26"}, SUBNETS)
    assert [r.prefix for r in plan.routes] == ["10.244.2.0/26"]
    assert plan.skipped == [Skipped("10.244.1.0/26", "10.99.1.1", "own prefix")]


def test_borrowed_32_inside_own_block_is_installed():
    plan = desired_routes({"10.244.1.7/32": {lp("10.99.1.12")}}, {"10.244.1.0/26"}, SUBNETS)
    assert plan.routes == [Route("10.244.1.7/32", ("10.99.1.12",))]


def test_several_next_hops_make_one_ecmp_route_sorted():
    learned = {"10.244.9.0/26": {lp("10.99.1.13", "10.99.1.13", (64603,)),
                                 lp("10.99.1.2", "10.99.1.2", (64602,))}}
    plan = desired_routes(learned, set(), SUBNETS)
    assert plan.routes == [Route("10.244.9.0/26", ("10.99.1.2", "10.99.1.13"))]


def test_same_next_hop_from_two_peers_is_one_hop():
    learned = {"10.244.2.0/26": {lp("10.99.1.12", "10.99.1.1"), lp("10.99.1.12", "10.99.1.2")}}
    assert desired_routes(learned, set(), SUBNETS).routes == [Route("10.244.2.0/26", ("10.99.1.12",))]


def test_shortest_as_path_wins():
    learned = {"10.244.2.0/26": {lp("10.99.1.12", "10.99.1.1", (65001, 64602)),
                                 lp("10.99.1.3", "10.99.1.3", (65003, 65001, 64602))}}
    assert desired_routes(learned, set(), SUBNETS).routes == [Route("10.244.2.0/26", ("10.99.1.12",))]


def test_next_hop_off_subnet_is_skipped_with_reason():
    learned = {"10.244.2.0/26": {lp("10.99.2.12")}, "10.244.3.0/26": {lp("10.99.1.13")}}
    plan = desired_routes(learned, set(), SUBNETS)
    assert plan.routes == [Route("10.244.3.0/26", ("10.99.1.13",))]
    assert plan.skipped == [Skipped("10.244.2.0/26", "10.99.2.12", "next hop not on a local subnet")]


def test_off_subnet_path_does_not_spoil_usable_one():
    learned = {"10.244.2.0/26": {lp("10.99.2.12", "10.99.2.1"), lp("10.99.1.12")}}
    plan = desired_routes(learned, set(), SUBNETS)
    assert plan.routes == [Route("10.244.2.0/26", ("10.99.1.12",))]
    assert len(plan.skipped) == 1


def test_next_hop_self_and_as_loop_skipped():
    learned = {"10.244.2.0/26": {lp("10.99.1.11")},
               "10.244.3.0/26": {lp("10.99.1.13", path=(65001, 64601, 64603))}}
    plan = desired_routes(learned, set(), SUBNETS, local_addresses=["10.99.1.11"], local_as=64601)
    assert plan.routes == []
    assert {s.reason.split()[0] for s in plan.skipped} == {"next", "AS"}


def test_multiple_local_subnets_and_order():
    learned = {"10.244.3.0/26": {lp("10.99.2.5")}, "10.244.2.0/26": {lp("10.99.1.5")},
               "10.244.2.0/25": {lp("10.99.1.5")}}
    plan = desired_routes(learned, [], ["10.99.1.0/24", "10.99.2.0/24"])
    assert [r.prefix for r in plan.routes] == ["10.244.2.0/25", "10.244.2.0/26", "10.244.3.0/26"]


def test_empty_and_bad_input():
    assert desired_routes({}, [], SUBNETS).routes == []
    assert desired_routes({"10.244.2.0/26": set()}, [], SUBNETS).routes == []
    with pytest.raises(ValueError, match="not an IPv4 prefix"):
        desired_routes({"nonsense": {lp("10.99.1.5")}}, [], SUBNETS)


def test_applier_refuses_reserved_protocols():
    for proto in (0, 2, 4, 256):
        with pytest.raises(ValueError):
            RouteApplier(proto=proto)
