"""The datastore side of the tunnels: pools and node records to planner input (pure)."""
import pytest

from bgp.model import PoolEncap, RemoteNode
from calico_lite import keys
from calico_lite.blocks import Pool
from calico_lite.lab.plan import PlanError, make_plan
from calico_lite.tunnels import pool_encaps, remote_nodes, tunnel_handle, wanted_encaps


def pools(*ps: Pool) -> dict:
    return {keys.pool(p.name): p.to_dict() for p in ps}


def test_enabled_pools_become_planner_input():
    got = pool_encaps(pools(Pool("a", "10.1.0.0/16", encapsulation="vxlan", encap_mode="CrossSubnet"),
                            Pool("b", "10.2.0.0/16", disabled=True)))
    assert got == [PoolEncap("10.1.0.0/16", "vxlan", "CrossSubnet")]


@pytest.mark.parametrize("encap,mode,want", [
    ("none", "Never", set()), ("none", "Always", set()), ("vxlan", "Never", set()),
    ("vxlan", "CrossSubnet", {"vxlan"}), ("vxlan", "Always", {"vxlan"}),
    ("ipip", "Never", set()), ("ipip", "CrossSubnet", {"ipip"}), ("ipip", "Always", {"ipip"})])
def test_wanted_encapsulations(encap, mode, want):
    assert wanted_encaps(pools(Pool("a", "10.1.0.0/16", encapsulation=encap, encap_mode=mode))) == want


def test_disabled_pool_wants_no_tunnel_and_two_pools_add_up():
    assert wanted_encaps(pools(Pool("a", "10.1.0.0/16", encapsulation="vxlan", encap_mode="Always",
                                    disabled=True))) == set()
    assert wanted_encaps(pools(Pool("a", "10.1.0.0/16", encapsulation="vxlan", encap_mode="Always"),
                               Pool("b", "10.2.0.0/16", encapsulation="ipip", encap_mode="Always"))) \
        == {"vxlan", "ipip"}


def test_remote_nodes_by_address_without_this_node():
    nodes = {keys.node("n1"): {"name": "n1", "address": "10.99.1.11", "vxlanTunnelAddress": "10.244.0.0",
                               "vxlanTunnelMac": "66:00:00:00:00:01"},
             keys.node("n2"): {"name": "n2", "address": "10.99.2.11", "vxlanTunnelAddress": "10.244.0.64",
                               "vxlanTunnelMac": "66:00:00:00:00:02"},
             keys.node("n3"): {"name": "n3", "address": "10.99.2.12"},
             keys.node("n4"): {"name": "n4"}}
    assert remote_nodes(nodes, "n1") == {
        "10.99.2.11": RemoteNode("10.99.2.11", "10.244.0.64", "66:00:00:00:00:02"),
        "10.99.2.12": RemoteNode("10.99.2.12")}


def test_tunnel_handles_name_node_and_encapsulation():
    assert tunnel_handle("r1n1", "vxlan") == "vxlan-tunnel-addr-r1n1"


def test_lab_plan_carries_the_encapsulation_and_refuses_unknown_ones():
    assert make_plan("lab", bgp="mesh", encap="vxlan").encap == "vxlan"
    assert make_plan("lab").encap == "none"
    with pytest.raises(PlanError, match="--encap 'gre'"):
        make_plan("lab", encap="gre")
