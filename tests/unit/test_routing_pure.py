from calico_lite import keys
from calico_lite.agent import pool_overhead
from calico_lite.blocks import Pool
from calico_lite.routing import own_prefixes


def test_own_prefixes_are_affine_blocks_plus_borrowed_addresses():
    aff = {keys.affinity("n1", "10.244.0.0/26"): {}, keys.affinity("n2", "10.244.0.64/26"): {}}
    handles = {keys.handle("c1/eth0"): {"ip": "10.244.0.70", "node": "n1", "borrowed": True},
               keys.handle("c2/eth0"): {"ip": "10.244.0.1", "node": "n1", "borrowed": False},
               keys.handle("c3/eth0"): {"ip": "10.244.0.2", "node": "n2", "borrowed": True}}
    assert own_prefixes(aff, handles, "n1") == {"10.244.0.0/26", "10.244.0.70/32"}
    assert own_prefixes(aff, handles, "n2") == {"10.244.0.64/26", "10.244.0.2/32"}
    assert own_prefixes(aff, handles, "n3") == set()


def test_node_name_prefix_does_not_leak_other_nodes_blocks():
    aff = {keys.affinity("n1", "10.244.0.0/26"): {}, keys.affinity("n10", "10.244.0.64/26"): {}}
    assert own_prefixes(aff, {}, "n1") == {"10.244.0.0/26"}


def test_pool_overhead_takes_the_worst_enabled_encapsulated_pool():
    pools = {"a": Pool("a", "10.1.0.0/16").to_dict(),
             "b": Pool("b", "10.2.0.0/16", encapsulation="ipip", encap_mode="CrossSubnet").to_dict()}
    assert pool_overhead(pools) == 20
    pools["c"] = Pool("c", "10.3.0.0/16", encapsulation="vxlan", encap_mode="Always").to_dict()
    assert pool_overhead(pools) == 50
    pools["c"] = Pool("c", "10.3.0.0/16", encapsulation="vxlan", encap_mode="Always",
                      disabled=True).to_dict()
    assert pool_overhead(pools) == 20
