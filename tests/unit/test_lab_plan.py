import pytest

import ipaddress

from calico_lite.lab.plan import OUTSIDE_IP, OUTSIDE_SUBNET, POD_POOL, PlanError, make_plan


def test_default_plan_is_two_racks_of_two_on_separate_subnets():
    p = make_plan()
    assert [n.name for n in p.nodes] == ["r1n1", "r1n2", "r2n1", "r2n2"]
    assert [n.address for n in p.nodes] == ["10.99.1.11", "10.99.1.12", "10.99.2.11", "10.99.2.12"]
    assert {n.subnet for n in p.nodes} == {"10.99.1.0/24", "10.99.2.0/24"}
    assert all(n.netns.startswith("lab-") for n in p.nodes)
    assert p.etcd_endpoint == "https://10.97.0.10:2379"
    assert p.etcd_local_endpoint == "https://127.0.0.1:2379"


def test_an_insecure_etcd_lab_says_http():
    p = make_plan(etcd_tls=False)
    assert (p.etcd_endpoint, p.etcd_local_endpoint) == ("http://10.97.0.10:2379", "http://127.0.0.1:2379")


def test_the_outside_host_is_an_infra_namespace_beyond_every_pool_and_node_subnet():
    p = make_plan(name="x")
    assert p.outside_netns == "x-outside" and p.outside_netns in p.infra_netns()
    assert ipaddress.ip_address(OUTSIDE_IP) in ipaddress.ip_network(OUTSIDE_SUBNET)
    taken = [POD_POOL, "10.245.0.0/16", *{n.subnet for n in p.nodes}]
    assert not any(ipaddress.ip_network(OUTSIDE_SUBNET).overlaps(ipaddress.ip_network(c)) for c in taken)


def test_tor_mode_gives_each_node_a_distinct_as():
    p = make_plan(bgp="tor")
    assert len({n.asn for n in p.nodes}) == len(p.nodes)


def test_mesh_mode_puts_every_node_in_one_as():
    p = make_plan(bgp="mesh", racks=2, nodes_per_rack=3)
    assert {n.asn for n in p.nodes} == {64512}


@pytest.mark.parametrize("kw,msg", [({"name": "1lab"}, "lab name"), ({"name": "x" * 13}, "lab name"),
                                    ({"racks": 0}, "--racks"), ({"nodes_per_rack": 41}, "--nodes-per-rack"),
                                    ({"bgp": "ospf"}, "--bgp")])
def test_bad_parameters_are_named(kw, msg):
    with pytest.raises(PlanError, match=msg):
        make_plan(**kw)


def test_unknown_node_lists_the_known_ones():
    with pytest.raises(PlanError, match="r1n1, r1n2"):
        make_plan(racks=1).node("r9n9")

