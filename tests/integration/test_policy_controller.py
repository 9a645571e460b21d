"""The policy controller against a real etcd, a real Cache and real nftables in a scratch namespace:
datastore writes (random event sequences) go incrementally through the controller, and after each
the calculation equals the full compile of the same datastore and the kernel table equals a
fresh full load; the periodic full resync repairs a calculation that drifted."""
from __future__ import annotations

import os
import time

import pytest
from hypothesis import example, given, settings

from calico_lite import keys
from calico_lite.cache import Cache
from calico_lite.policy_inputs import inputs_from, pods_by_workload
from calico_lite.policy_sync import PolicyController, node_tables
from policy.compiler import compile_ruleset
from policy.manifests import policy_to_dict
from policy.model import LabelSelector, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyRule, Pod
from tests.nft_node import assert_equal_tables, nft_nodes
from tests.policy_events import NODE_IP, events

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces and nftables")
NODE = "n1"


@pytest.fixture(scope="module")
def netns_nodes():
    with nft_nodes("pct", ("ctl", "full")) as made:
        yield made


@pytest.fixture(scope="module")
def store(etcd_endpoint):
    """A Datastore and a running Cache on our own key prefix space (emptied per example)."""
    from calico_lite.datastore import Datastore
    ds = Datastore([etcd_endpoint])
    ds.delete_prefix(keys.ROOT)
    cache = Cache(ds)
    cache.start()
    assert cache.synced.wait(20)
    yield ds, cache
    cache.stop()
    ds.delete_prefix(keys.ROOT)
    ds.close()


def write(ds, event) -> None:
    kind, key, value = event
    if kind == "ns":
        if value is None:
            ds.delete(keys.k8s_namespace(key))
        else:
            ds.put(keys.k8s_namespace(key), {"name": key, "labels": value})
    elif kind == "policy":
        if value is None:
            ds.delete(keys.k8s_policy(*key.split("/")))
        else:
            ds.put(keys.k8s_policy(value.namespace, value.name), policy_to_dict(value))
    else:
        wkey = keys.workload("any", f"h{key}")
        for ns in ("a", "b", "c"):
            ds.delete(keys.k8s_pod(ns, f"pod{key}"))
        if value is None:
            ds.delete(wkey)
            return
        ds.put(keys.k8s_pod(value.namespace, value.name),
               {"namespace": value.namespace, "name": value.name, "labels": value.labels,
                "ports": [{"name": p.name, "protocol": p.protocol, "port": p.port} for p in value.ports]})
        ds.put(wkey, {"namespace": value.namespace, "pod": value.name, "ip": value.ip, "node": value.node,
                      "host_ifname": value.interface or f"remote{key}"})


def caught_up(ds, cache) -> int:
    """Wait until the cache reflects every write made so far; its policy-input generation."""
    rev = ds.put(keys.BARRIER, {"t": time.time()})
    deadline = time.monotonic() + 20
    while cache.revision < rev:
        assert time.monotonic() < deadline, "cache did not catch up with etcd"
        time.sleep(0.01)
    return cache.generation


def oracle(cache):
    return compile_ruleset(*inputs_from(cache.items, NODE), [NODE_IP])


def full_table(cache):
    """The oracle with NAT outgoing and host protection from the same datastore: the
    controller's whole table."""
    pods = pods_by_workload(cache.items(keys.K8S_PODS), cache.items(keys.WORKLOADS), NODE)
    return node_tables(oracle(cache), cache.items, NODE, pods)[0]


_SEL = LabelSelector.of
_RELABEL = [  # a pod relabelled into a policy's selection, then its namespace out of a peer's
    ("policy", "a/p1", NetworkPolicy("a", "p1", _SEL({"app": "y"}), ("Ingress",), (NetworkPolicyRule(
        (NetworkPolicyPeer(namespace_selector=_SEL({"team": "x"})),)),))),
    ("ns", "a", {"team": "x"}),
    ("pod", 1, Pod("a", "pod1", "10.240.0.1", {"app": "x"}, [], "cali1", NODE)),
    ("pod", 1, Pod("a", "pod1", "10.240.0.1", {"app": "y"}, [], "cali1", NODE)),
    ("ns", "a", {"team": "y"}),
]


@settings(max_examples=15, deadline=None)
@given(seq=events)
@example(seq=_RELABEL)
def test_controller_incremental_passes_equal_the_full_compile_and_a_full_load(store, netns_nodes, seq):
    ds, cache = store
    ctl_node, full_node = netns_nodes
    ds.delete_prefix(keys.ROOT)
    for n in netns_nodes:
        n.call(n.applier.remove)
    ctl = PolicyController(cache, NODE, [NODE_IP])
    ctl.applier = ctl_node.applier
    status = ctl_node.call(ctl.sync_once, caught_up(ds, cache))
    assert status["calc"] == "full" and status["error"] == ""
    for event in seq:
        write(ds, event)
        status = ctl_node.call(ctl.sync_once, caught_up(ds, cache))
        assert status["calc"] == "incremental" and status["mode"] in ("update", "noop"), status
        assert ctl.calc.ruleset() == oracle(cache), event
        assert ctl_node.call(ctl_node.applier.drift) == "", event   # no false alarm
    full_node.call(full_node.applier.sync, full_table(cache))
    assert_equal_tables(ctl_node, full_node, f"{len(seq)} datastore events")


def test_full_resync_repairs_a_drifted_calculation(store, netns_nodes):
    ds, cache = store
    ctl_node, full_node = netns_nodes
    ds.delete_prefix(keys.ROOT)
    peer = NetworkPolicyPeer(pod_selector=LabelSelector.of({"app": "x"}))
    for event in [("ns", "a", {"team": "x"}),
                  ("pod", 1, Pod("a", "pod1", "10.240.0.1", {"app": "x"}, [], "cali1", NODE)),
                  ("pod", 2, Pod("a", "pod2", "10.240.0.2", {"app": "y"}, [], "cali2", NODE)),
                  ("policy", "a/p1", NetworkPolicy("a", "p1", LabelSelector.of({"app": "y"}), ("Ingress",),
                                                   (NetworkPolicyRule((peer,)),)))]:
        write(ds, event)
    ctl = PolicyController(cache, NODE, [NODE_IP])
    ctl.applier = ctl_node.applier
    ctl_node.call(ctl.sync_once, caught_up(ds, cache))
    ctl.calc.remove_pod(keys.workload("any", "h1"))  # drift: the calculation forgets a pod
    assert ctl.calc.ruleset() != oracle(cache)
    status = ctl_node.call(ctl.sync_once, caught_up(ds, cache), True)
    assert status["calc"] == "full"
    assert ctl.calc.ruleset() == oracle(cache)
    full_node.call(full_node.applier.sync, full_table(cache))
    assert_equal_tables(ctl_node, full_node, "the resync")


def test_a_pool_flag_or_a_new_node_changes_nat_elements_in_an_incremental_update(store, netns_nodes):
    ds, cache = store
    ctl_node, full_node = netns_nodes
    ds.delete_prefix(keys.ROOT)
    ds.put(keys.pool("p1"), {"name": "p1", "cidr": "10.240.0.0/16", "natOutgoing": False})
    ds.put(keys.node(NODE), {"name": NODE, "address": NODE_IP, "subnet": "10.99.1.0/24"})
    ctl = PolicyController(cache, NODE, [NODE_IP])
    ctl.applier = ctl_node.applier
    assert ctl_node.call(ctl.sync_once, caught_up(ds, cache))["nat"]["masquerade"] == []
    ds.put(keys.pool("p1"), {"name": "p1", "cidr": "10.240.0.0/16", "natOutgoing": True})
    ds.put(keys.node("n2"), {"name": "n2", "address": "10.99.2.11", "subnet": "10.99.2.0/24"})
    status = ctl_node.call(ctl.sync_once, caught_up(ds, cache))
    assert status["mode"] == "update" and status["error"] == "", status
    assert status["nat"]["masquerade"] == [{"pool": "p1", "cidr": "10.240.0.0/16"}]
    assert status["nat"]["nodeSubnets"] == ["10.99.1.0/24", "10.99.2.0/24"]
    full_node.call(full_node.applier.sync, full_table(cache))
    assert_equal_tables(ctl_node, full_node, "a pool's flag and a new node")


def test_a_node_setting_changes_host_protection_in_an_incremental_update(store, netns_nodes):
    ds, cache = store
    ctl_node, full_node = netns_nodes
    ds.delete_prefix(keys.ROOT)
    write(ds, ("pod", 1, Pod("a", "pod1", "10.240.0.1", {"app": "x"}, [], "cali1", NODE)))
    ds.put(keys.workload("any", "h2"), {"namespace": "a", "pod": "pod2", "ip": "10.240.0.2",
                                         "node": NODE, "host_ifname": "cali2", "mac": "02:00:00:00:00:02"})
    ctl = PolicyController(cache, NODE, [NODE_IP])
    ctl.applier = ctl_node.applier
    status = ctl_node.call(ctl.sync_once, caught_up(ds, cache))
    assert status["hostProtection"] == {"action": "drop", "allow": ["tcp:53", "udp:53", "udp:67"],
                                        "default": True}
    ds.put(keys.node_config(NODE), {"workloadToHostAllow": ["tcp:22", "tcp:20-23"],
                                    "workloadToHostAction": "accept"})
    ds.put(keys.node_config("another-node"), {"workloadToHostAllow": []})   # not ours
    status = ctl_node.call(ctl.sync_once, caught_up(ds, cache))
    assert status["mode"] == "update" and status["error"] == "", status
    assert status["hostProtection"] == {"action": "accept", "allow": ["tcp:20-23"], "default": False}
    full_node.call(full_node.applier.sync, full_table(cache))
    assert_equal_tables(ctl_node, full_node, "a node's host protection setting")
    arp = ctl_node.call(lambda: ctl.arp_applier.applied)
    assert arp.sets["pod_if_addr"].elements == {'"cali1" . 10.240.0.1', '"cali2" . 10.240.0.2'}
    assert arp.sets["pod_if_mac"].elements == {'"cali2" . 02:00:00:00:00:02'}   # cali1: no MAC recorded
    ds.put(keys.node_config(NODE), {"workloadToHostAllow": "tcp:99999"})   # a broken record
    status = ctl_node.call(ctl.sync_once, caught_up(ds, cache))
    assert status["hostProtection"]["action"] == "drop" and status["hostProtection"]["default"]
    assert "tcp:99999" in status["hostProtection"]["problem"]


def test_an_update_the_kernel_refuses_is_replaced_by_a_full_load_and_reported(store, netns_nodes):
    """Someone removed an element behind the controller's back: the next incremental update
    (a netlink batch deleting it) is refused as a whole; the controller loads the whole table
    and its status, which `node status` shows, says which command the kernel refused and why."""
    from calico_lite.cli.node import policy_problems
    from tests.nslib import sh
    ds, cache = store
    ctl_node, full_node = netns_nodes
    ds.delete_prefix(keys.ROOT)
    peer = NetworkPolicyPeer(pod_selector=LabelSelector.of({"app": "x"}))
    for event in [("ns", "a", {"team": "x"}),
                  ("pod", 1, Pod("a", "pod1", "10.240.0.1", {"app": "x"}, [], "cali1", NODE)),
                  ("policy", "a/p1", NetworkPolicy("a", "p1", LabelSelector.of({}), ("Ingress",),
                                                   (NetworkPolicyRule((peer,)),)))]:
        write(ds, event)
    ctl = PolicyController(cache, NODE, [NODE_IP])
    ctl.applier = ctl_node.applier
    ctl_node.call(ctl.sync_once, caught_up(ds, cache))
    sh("nft", "delete", "element", "inet", "calico-lite", "pod_if_addr", '{ "cali1" . 10.240.0.1 }',
       netns=ctl_node.netns)
    write(ds, ("pod", 1, None))
    status = ctl_node.call(ctl.sync_once, caught_up(ds, cache))
    assert status["mode"] == "sync" and status["error"] == "", status
    assert "pod_if_addr" in status["update_refused"] and "No such file" in status["update_refused"], status
    assert any("refused the incremental update" in p for p in policy_problems(status))
    full_node.call(full_node.applier.sync, full_table(cache))
    assert_equal_tables(ctl_node, full_node, "the full load after a refused update")
