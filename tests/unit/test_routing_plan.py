"""The routing sync's pure half: frozen inputs to a frozen plan, and the status record."""
import dataclasses

import pytest

from bgp.model import Failure, LearnedPath, PoolEncap, RemoteNode, Route
from calico_lite import keys
from calico_lite.routing import RoutingInputs, RoutingPlan, plan_routes, route_status
from calico_lite.tunnels import TunnelInputs, TunnelState

BLOCK = "10.244.1.0/26"


def inputs(**kw) -> RoutingInputs:
    base = dict(own=frozenset({"10.244.0.0/26"}),
                learned=frozenset({(BLOCK, frozenset({LearnedPath("10.99.1.12", "10.99.1.12", (65002,))})),
                                   ("10.244.0.0/26", frozenset({LearnedPath("10.99.1.12", "10.99.1.12")}))}),
                tunnels=TunnelInputs(), synced=True)
    return RoutingInputs(**{**base, **kw})


def plan(i: RoutingInputs, tunnels: TunnelState | None = None) -> RoutingPlan:
    return plan_routes(i, tunnels or TunnelState(), subnet="10.99.1.0/24", address="10.99.1.11",
                       local_as=65001)


def test_equal_inputs_are_equal_values_and_give_equal_frozen_plans():
    a, b = inputs(), inputs()
    assert a == b and hash(a) == hash(b)
    p = plan(a)
    assert p == plan(b)
    assert p.routes == (Route(BLOCK, ("10.99.1.12",), "none"),)
    assert [s.reason for s in p.skipped] == ["own prefix"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.routes = ()  # type: ignore[misc]


def test_the_tunnels_decide_which_encapsulations_a_route_may_use():
    far = inputs(learned=frozenset({(BLOCK, frozenset({LearnedPath("10.99.2.12", "10.99.2.12")}))}))
    pools = [PoolEncap("10.244.0.0/16", "vxlan", "CrossSubnet")]
    without = plan(far, TunnelState(pools=pools))
    assert without.routes == () and "VXLAN unavailable" in without.skipped[0].reason
    remotes = {"10.99.2.12": RemoteNode("10.99.2.12", "10.244.9.0", "66:00:00:00:00:01")}
    with_vxlan = plan(far, TunnelState(pools=pools, remotes=remotes, supported={"none", "vxlan"}))
    assert with_vxlan.routes == (Route(BLOCK, ("10.244.9.0",), "vxlan"),)


def test_status_names_every_failure_with_its_reason_as_a_record_and_a_note():
    tunnels = TunnelState(notes=["vxlan: vxlan.calico: Cannot assign requested address"],
                          failures=[Failure("vxlan.calico", "Cannot assign requested address")])
    failed = [Failure(f"replace {BLOCK} via 10.99.1.12 (encap none)", "Network is unreachable")]
    s = route_status(frozenset(), plan(inputs()), tunnels, failed)
    assert s["failures"] == [{"what": "vxlan.calico", "reason": "Cannot assign requested address"},
                             {"what": f"replace {BLOCK} via 10.99.1.12 (encap none)",
                              "reason": "Network is unreachable"}]
    assert s["notes"][:2] == ["vxlan: vxlan.calico: Cannot assign requested address",
                              f"not programmed: replace {BLOCK} via 10.99.1.12 (encap none): "
                              "Network is unreachable"]


def test_tunnel_inputs_ignore_record_fields_that_do_not_shape_the_tunnels():
    pools = {"/p/a": {"name": "a", "cidr": "10.1.0.0/16", "encapsulation": "vxlan", "encapMode": "Always"}}
    nodes = {keys.node("n2"): {"address": "10.99.1.12", "started": 1.0}}
    later = {keys.node("n2"): {"address": "10.99.1.12", "started": 2.0}}
    assert TunnelInputs.from_records(pools, nodes, "n1") == TunnelInputs.from_records(pools, later, "n1")
    assert TunnelInputs.from_records(pools, nodes, "n1").wanted == {"vxlan"}
