from calico_lite.blocks import Block
from calico_lite.ipam_check import check

NOW = 1000.0


def rec(ip, created=0.0, node="n1"):
    return {"ip": ip, "node": node, "created": created}


def run(blocks, handles, workloads, existing=("/ns/a",), grace=60):
    return check(blocks, handles, workloads, lambda p: p in existing, NOW, grace)


def test_consistent_state_is_ok():
    b = Block("10.0.0.0/30", "n1", "p", {0: "a/eth0"})
    r = run([b], {"a/eth0": rec("10.0.0.0")}, {"a/eth0": {"netns": "/ns/a"}})
    assert r.ok and r.in_use == 1 and r.handles == 1


def test_handle_without_workload_is_a_leak_once_past_the_grace_period():
    b = Block("10.0.0.0/30", "n1", "p", {1: "b/eth0"})
    old = run([b], {"b/eth0": rec("10.0.0.1", created=NOW - 120)}, {})
    assert [f.kind for f in old.findings] == ["leaked-handle"]
    young = run([b], {"b/eth0": rec("10.0.0.1", created=NOW - 5)}, {})
    assert young.ok  # an ADD may still be in flight


def test_workload_whose_netns_is_gone_is_stale():
    b = Block("10.0.0.0/30", "n1", "p", {0: "a/eth0"})
    r = run([b], {"a/eth0": rec("10.0.0.0")}, {"a/eth0": {"netns": "/ns/gone", "pod": "x"}})
    assert [f.kind for f in r.findings] == ["stale-workload"]


def test_allocation_without_handle_and_mismatches_are_reported():
    b = Block("10.0.0.0/30", "n1", "p", {0: "a/eth0", 2: "ghost/eth0"})
    r = run([b], {"a/eth0": rec("10.0.0.0"), "c/eth0": rec("10.0.0.3")},
            {"a/eth0": {"netns": "/ns/a"}})
    kinds = sorted(f.kind for f in r.findings)
    assert kinds == ["conflict", "orphan-allocation"]
    assert {f.ip for f in r.findings} == {"10.0.0.2", "10.0.0.3"}


def test_one_ip_held_twice_is_a_conflict():
    b1 = Block("10.0.0.0/30", "n1", "p", {0: "a/eth0"})
    b2 = Block("10.0.0.0/30", "n2", "p", {0: "b/eth0"})
    r = run([b1, b2], {"a/eth0": rec("10.0.0.0"), "b/eth0": rec("10.0.0.0")},
            {"a/eth0": {"netns": "/ns/a"}, "b/eth0": {"netns": "/ns/a"}})
    assert any(f.kind == "conflict" and f.ip == "10.0.0.0" for f in r.findings)


def test_a_nodes_tunnel_address_is_in_use_without_a_workload():
    b = Block("10.0.0.0/30", "n1", "p", {0: "vxlan-tunnel-addr-n1"})
    r = run([b], {"vxlan-tunnel-addr-n1": {**rec("10.0.0.0"), "tunnel": "vxlan"}}, {})
    assert r.ok and r.in_use == 1


def test_a_pod_whose_interface_is_gone_is_reported_and_still_in_use():
    b = Block("10.0.0.0/30", "n1", "p", {0: "a/eth0"})
    w = {"a/eth0": {"netns": "/ns/a", "ifname": "eth0", "pod": "x", "host_ifname": "cali1"}}
    r = check([b], {"a/eth0": rec("10.0.0.0")}, w, lambda p: True, NOW, 60, lambda ns, ifname: False)
    assert [f.kind for f in r.findings] == ["missing-interface"] and r.in_use == 1
    assert "cali1" in r.findings[0].detail
    assert check([b], {"a/eth0": rec("10.0.0.0")}, w, lambda p: True, NOW, 60, lambda ns, ifname: True).ok
