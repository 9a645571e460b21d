"""The encapsulation each learned route gets: every pool encapsulation x mode x on/off link."""
import itertools

import pytest

from bgp.encap import ENCAPSULATIONS, MODES, NOT_ON_LINK, choose_encap, pool_for
from bgp.model import LearnedPath, PoolEncap, RemoteNode, Route
from bgp.routes import Skipped, desired_routes

SUBNETS = ["10.99.1.0/24"]
SAME = "10.99.1.12"        # a node on our subnet
OTHER = "10.99.2.11"       # a node in another rack
REMOTES = {SAME: RemoteNode(SAME, "10.244.0.65", "66:00:00:00:00:12"),
           OTHER: RemoteNode(OTHER, "10.244.0.129", "66:00:00:00:00:21")}
BLOCK = "10.244.0.128/26"

# (encapsulation, mode, on_link) -> expected Route encap (None: skipped, not routable)
EXPECTED = {
    ("none", "Never", True): "none", ("none", "Never", False): None,
    ("none", "CrossSubnet", True): "none", ("none", "CrossSubnet", False): None,
    ("none", "Always", True): "none", ("none", "Always", False): None,
    ("ipip", "Never", True): "none", ("ipip", "Never", False): None,
    ("ipip", "CrossSubnet", True): "none", ("ipip", "CrossSubnet", False): "ipip",
    ("ipip", "Always", True): "ipip", ("ipip", "Always", False): "ipip",
    ("vxlan", "Never", True): "none", ("vxlan", "Never", False): None,
    ("vxlan", "CrossSubnet", True): "none", ("vxlan", "CrossSubnet", False): "vxlan",
    ("vxlan", "Always", True): "vxlan", ("vxlan", "Always", False): "vxlan",
}


def lp(nh, path=(64512,)):
    return LearnedPath(next_hop=nh, peer=nh, as_path=tuple(path))


def plan_for(encapsulation, mode, hop, remotes=REMOTES, supported=ENCAPSULATIONS, prefix=BLOCK):
    return desired_routes({prefix: {lp(hop)}}, set(), SUBNETS, local_addresses=["10.99.1.11"],
                          pools=[("10.244.0.0/16", encapsulation, mode)], remotes=remotes,
                          supported_encaps=supported)


def test_table_covers_every_combination():
    assert set(EXPECTED) == set(itertools.product(ENCAPSULATIONS, MODES, (True, False)))


@pytest.mark.parametrize("encapsulation,mode,on_link", sorted(EXPECTED))
def test_every_encapsulation_mode_and_link(encapsulation, mode, on_link):
    hop = SAME if on_link else OTHER
    want = EXPECTED[(encapsulation, mode, on_link)]
    assert choose_encap(on_link, PoolEncap("10.244.0.0/16", encapsulation, mode)) == want
    plan = plan_for(encapsulation, mode, hop)
    if want is None:
        assert plan.routes == []
        assert plan.skipped == [Skipped(BLOCK, hop, NOT_ON_LINK)]
        return
    gateway = REMOTES[hop].vtep_ip if want == "vxlan" else hop
    assert plan.routes == [Route(BLOCK, (gateway,), want)]
    assert plan.skipped == []


def test_no_pool_behaves_like_encapsulation_none():
    assert choose_encap(True, None) == "none" and choose_encap(False, None) is None
    plan = desired_routes({BLOCK: {lp(OTHER)}, "10.244.0.64/26": {lp(SAME)}}, set(), SUBNETS)
    assert plan.routes == [Route("10.244.0.64/26", (SAME,))]
    assert plan.skipped == [Skipped(BLOCK, OTHER, NOT_ON_LINK)]


def test_prefix_outside_every_pool_is_plain_even_when_a_pool_encapsulates():
    plan = desired_routes({"10.245.0.0/26": {lp(OTHER)}}, set(), SUBNETS,
                          pools=[("10.244.0.0/16", "vxlan", "Always")], remotes=REMOTES)
    assert plan.routes == [] and plan.skipped[0].reason == NOT_ON_LINK


def test_most_specific_pool_decides():
    import ipaddress
    pools = [PoolEncap("10.244.0.0/16", "vxlan", "Always"), PoolEncap("10.244.0.0/24", "ipip", "Always")]
    assert pool_for(ipaddress.IPv4Network("10.244.0.128/26"), pools).encapsulation == "ipip"
    assert pool_for(ipaddress.IPv4Network("10.244.1.0/26"), pools).encapsulation == "vxlan"
    assert pool_for(ipaddress.IPv4Network("10.244.0.0/15"), pools) is None


def test_borrowed_32_uses_the_pool_of_its_address():
    plan = plan_for("vxlan", "CrossSubnet", OTHER, prefix="10.244.0.7/32")
    assert plan.routes == [Route("10.244.0.7/32", ("10.244.0.129",), "vxlan")]


def test_vxlan_without_a_published_vtep_is_skipped_with_reason():
    plan = plan_for("vxlan", "CrossSubnet", OTHER, remotes={OTHER: RemoteNode(OTHER)})
    assert plan.routes == []
    assert plan.skipped == [Skipped(BLOCK, OTHER, f"no VXLAN VTEP published for node {OTHER}")]
    assert plan_for("vxlan", "CrossSubnet", OTHER, remotes={}).skipped[0].reason.startswith("no VXLAN")


def test_ipip_on_a_kernel_without_ipip_is_skipped_and_says_so():
    plan = plan_for("ipip", "CrossSubnet", OTHER, supported=("none", "vxlan"))
    assert plan.routes == []
    assert plan.skipped == [Skipped(BLOCK, OTHER, "IPIP unavailable: this kernel has no ipip support")]
    # on-link next hops need no tunnel, so they still work on such a kernel
    assert plan_for("ipip", "CrossSubnet", SAME, supported=("none",)).routes == [Route(BLOCK, (SAME,))]


def test_ecmp_prefers_plain_next_hops_over_encapsulated_ones():
    learned = {BLOCK: {lp(SAME), lp(OTHER)}}
    plan = desired_routes(learned, set(), SUBNETS, pools=[("10.244.0.0/16", "vxlan", "CrossSubnet")],
                          remotes=REMOTES)
    assert plan.routes == [Route(BLOCK, (SAME,), "none")]
    learned = {BLOCK: {lp(OTHER), lp("10.99.2.12")}}
    remotes = {**REMOTES, "10.99.2.12": RemoteNode("10.99.2.12", "10.244.0.193", "66:00:00:00:00:22")}
    plan = desired_routes(learned, set(), SUBNETS, pools=[("10.244.0.0/16", "vxlan", "CrossSubnet")],
                          remotes=remotes)
    assert plan.routes == [Route(BLOCK, ("10.244.0.129", "10.244.0.193"), "vxlan")]


def test_own_prefix_self_and_loop_rules_still_apply_with_encapsulation():
    learned = {BLOCK: {lp(OTHER)}, "10.244.0.0/26": {lp("10.99.1.11")},
               "10.244.1.0/26": {lp(OTHER, path=(64512, 64601))}}
    plan = desired_routes(learned, {BLOCK}, SUBNETS, local_addresses=["10.99.1.11"], local_as=64601,
                          pools=[("10.244.0.0/16", "vxlan", "Always")], remotes=REMOTES)
    assert plan.routes == []
    assert [s.reason.split()[0] for s in plan.skipped] == ["next", "own", "AS"]


def test_bad_pool_data_is_refused_with_context():
    with pytest.raises(ValueError, match="encapsulation 'gre'"):
        desired_routes({}, set(), SUBNETS, pools=[("10.244.0.0/16", "gre", "Always")])
    with pytest.raises(ValueError, match="mode 'Sometimes'"):
        desired_routes({}, set(), SUBNETS, pools=[("10.244.0.0/16", "vxlan", "Sometimes")])
