import pytest

from calico_lite.lab.plan import PlanError, make_plan


def test_default_plan_is_two_racks_of_two_on_separate_subnets():
    p = make_plan()
    assert [n.name for n in p.nodes] == ["r1n1", "r1n2", "r2n1", "r2n2"]
    assert [n.address for n in p.nodes] == ["10.99.1.11", "10.99.1.12", "10.99.2.11", "10.99.2.12"]
    assert {n.subnet for n in p.nodes} == {"10.99.1.0/24", "10.99.2.0/24"}
    assert all(n.netns.startswith("lab-") for n in p.nodes)
    assert p.etcd_endpoint == "http://10.97.0.10:2379"


def test_tor_mode_peers_each_node_with_its_own_tor_and_distinct_as():
    p = make_plan(bgp="tor")
    assert p.nodes[0].peers == (("10.99.1.1", 65001),)
    assert p.nodes[3].peers == (("10.99.2.1", 65002),)
    assert len({n.asn for n in p.nodes}) == len(p.nodes)
    assert not any(n.listen for n in p.nodes)


def test_mesh_mode_peers_every_other_node_in_one_as():
    p = make_plan(bgp="mesh", racks=2, nodes_per_rack=3)
    for n in p.nodes:
        assert n.listen and n.asn == 64512
        assert {a for a, _ in n.peers} == {m.address for m in p.nodes} - {n.address}


@pytest.mark.parametrize("kw,msg", [({"name": "1lab"}, "lab name"), ({"name": "x" * 13}, "lab name"),
                                    ({"racks": 0}, "--racks"), ({"nodes_per_rack": 41}, "--nodes-per-rack"),
                                    ({"bgp": "ospf"}, "--bgp")])
def test_bad_parameters_are_named(kw, msg):
    with pytest.raises(PlanError, match=msg):
        make_plan(**kw)


def test_unknown_node_lists_the_known_ones():
    with pytest.raises(PlanError, match="r1n1, r1n2"):
        make_plan(racks=1).node("r9n9")

