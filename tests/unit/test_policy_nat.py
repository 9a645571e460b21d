"""NAT outgoing as a pure calculation: which pools masquerade, what is never NATed, and that a
pool change is only set elements in an incremental transaction (policy.nat)."""
from __future__ import annotations

from calico_lite.policy_inputs import nat_inputs
from policy.compiler import compile_ruleset
from policy.nat import (ALL_POOLS, MASQ_POOLS, NAT_CHAIN, NODE_SUBNETS, NatPool, nat_chain,
                        nat_sets, nat_state, with_nat)
from policy.ruleset import render_nft, render_update

DEFAULT = NatPool("default-ipv4-ippool", "10.244.0.0/16")
OUT = NatPool("out", "10.245.0.0/16", nat_outgoing=True)
SUBNETS = ["10.99.1.0/24", "10.99.2.0/24"]


def table(state):
    return with_nat(compile_ruleset([], [], [], ["10.99.1.11"]), nat_sets(state), nat_chain())


def test_only_pools_with_the_flag_masquerade_but_every_pool_is_excluded_as_a_destination():
    st = nat_state([DEFAULT, OUT], SUBNETS)
    assert [p.name for p in st.masquerading] == ["out"]
    assert st.masq_cidrs == ("10.245.0.0/16",)
    assert st.pool_cidrs == ("10.244.0.0/15",)   # the two /16s collapse into one interval
    assert st.summary()["masquerade"] == [{"pool": "out", "cidr": "10.245.0.0/16"}]


def test_pod_to_outside_masquerades_pod_to_pod_and_pod_to_node_never():
    st = nat_state([DEFAULT, OUT], SUBNETS)
    assert st.masquerades("10.245.0.5", "10.100.0.10")        # natOutgoing pod -> outside
    assert not st.masquerades("10.244.0.5", "10.100.0.10")    # pool without the flag
    assert not st.masquerades("10.245.0.5", "10.244.3.7")     # to a pod of another pool
    assert not st.masquerades("10.245.0.5", "10.245.9.9")     # to a pod of its own pool
    assert not st.masquerades("10.245.0.5", "10.99.2.12")     # to a node of another rack
    assert not st.masquerades("10.99.1.11", "10.100.0.10")    # the node's own traffic


def test_node_subnets_are_deduplicated_and_nested_ones_collapse():
    st = nat_state([OUT], ["10.99.1.0/24", "10.99.1.0/24", "10.99.0.0/16", "10.98.1.0/24"])
    assert st.node_subnets == ("10.98.1.0/24", "10.99.0.0/16")


def test_malformed_and_ipv6_records_are_left_out_rather_than_breaking_the_set():
    st = nat_state([OUT, NatPool("v6", "fd00::/64", True)], ["not-a-cidr", "10.99.1.0/24"])
    assert st.masq_cidrs == ("10.245.0.0/16",)
    assert st.node_subnets == ("10.99.1.0/24",)


def test_no_pool_with_the_flag_leaves_the_masquerade_set_empty_and_the_chain_in_place():
    rs = table(nat_state([DEFAULT], SUBNETS))
    assert rs.sets[MASQ_POOLS].elements == frozenset()
    assert rs.chains[NAT_CHAIN] == nat_chain()


def test_the_sets_are_interval_sets_and_the_chain_a_srcnat_postrouting_chain():
    text = render_nft(table(nat_state([DEFAULT, OUT], SUBNETS)))
    for name in (MASQ_POOLS, ALL_POOLS, NODE_SUBNETS):
        assert f"set {name} {{\n    type ipv4_addr\n    flags interval" in text
    assert "type nat hook postrouting priority srcnat; policy accept;" in text
    assert (f"ip saddr @{MASQ_POOLS} ip daddr != @{ALL_POOLS} ip daddr != @{NODE_SUBNETS} "
            "masquerade") in text
    assert "type filter hook forward priority filter" in text  # the policy chains as before


def test_with_nat_leaves_the_policy_ruleset_as_it_was():
    rs = compile_ruleset([], [], [], ["10.99.1.11"])
    before = (dict(rs.sets), dict(rs.chains))
    with_nat(rs, nat_sets(nat_state([OUT], SUBNETS)), nat_chain())
    assert (rs.sets, rs.chains) == before


def test_flipping_a_flag_is_an_incremental_update_of_set_elements_only():
    off = table(nat_state([DEFAULT, OUT], SUBNETS))
    on = table(nat_state([NatPool(DEFAULT.name, DEFAULT.cidr, True), OUT], SUBNETS))
    text, summary = render_update(off, on)
    assert text is not None, summary  # not structural: no full sync
    assert text.splitlines() == [
        "delete element inet calico-lite nat_masq_pools { 10.245.0.0/16 }",
        "add element inet calico-lite nat_masq_pools { 10.244.0.0/15 }"]
    assert render_update(on, on)[0] == ""


def test_a_new_node_subnet_adds_one_element():
    a = table(nat_state([OUT], SUBNETS))
    b = table(nat_state([OUT], SUBNETS + ["10.99.5.0/24"]))
    text, _ = render_update(a, b)
    assert text.splitlines() == ["add element inet calico-lite nat_node_subnets { 10.99.5.0/24 }"]


def test_nat_inputs_read_pool_and_node_records():
    pools = {"/calico-lite/ipam/pools/a": {"name": "a", "cidr": "10.244.0.0/16", "natOutgoing": True},
             "/calico-lite/ipam/pools/b": {"name": "b", "cidr": "10.245.0.0/16"}}
    nodes = {"/calico-lite/nodes/n1": {"name": "n1", "subnet": "10.99.1.0/24"},
             "/calico-lite/nodes/n2": {"name": "n2"}}
    assert nat_inputs(pools, nodes) == (
        [NatPool("a", "10.244.0.0/16", True), NatPool("b", "10.245.0.0/16", False)],
        ["10.99.1.0/24"])
