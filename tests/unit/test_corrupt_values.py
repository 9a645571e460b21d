"""Corrupt datastore values, in the pure parts: decoding, the cache's last good value, the
policy inputs and IPAM's block reader skip what they cannot read and keep everything else."""
from __future__ import annotations

from calico_lite import keys
from calico_lite.cache import Cache
from calico_lite.datastore import Change, CorruptValue, Entry, decode
from calico_lite.ipam import block_of
from calico_lite.policy_inputs import namespaces_from, pods_by_workload

W1, W2 = keys.workload("n1", "h1"), keys.workload("n1", "h2")
GOOD = {"namespace": "a", "pod": "p1", "ip": "10.244.0.1", "node": "n1", "host_ifname": "cali1"}


def test_decode_returns_a_corrupt_value_instead_of_raising():
    assert decode("k", b'{"a": 1}', 3) == {"a": 1}
    bad = decode("k", b"\x00garbage{", 4)
    assert isinstance(bad, CorruptValue) and bad.key == "k" and bad.mod_revision == 4


def test_cache_keeps_the_last_good_value_of_a_corrupted_key():
    cache = Cache(ds=None)   # apply_changes never reaches the datastore
    cache.apply_changes([Change(W1, GOOD, 1), Change(W2, GOOD, 2)])
    cache.apply_changes([Change(W1, decode(W1, b"garbage", 3), 3),
                         Change(W2, "a string, not a record", 4),
                         Change(keys.workload("n1", "h3"), [1, 2], 5)])
    assert cache.items(keys.WORKLOADS) == {W1: GOOD, W2: GOOD}
    cache.apply_changes([Change(W1, None, 6)])   # a deletion still deletes
    assert cache.items(keys.WORKLOADS) == {W2: GOOD}


def test_policy_inputs_leave_out_records_of_the_wrong_shape_only():
    workloads = {W1: GOOD, W2: {**GOOD, "ip": 42},
                 keys.workload("n1", "h3"): {**GOOD, "ip": "10.244.0.999"},
                 keys.workload("n1", "h4"): {**GOOD, "host_ifname": ["x"]}}
    pods = {keys.k8s_pod("a", "p1"): {"labels": "not a map", "ports": [{"port": "x"}]}}
    out = pods_by_workload(pods, workloads, "n1")
    assert list(out) == [W1]
    assert out[W1].labels == {} and out[W1].ip == "10.244.0.1"   # its broken pod record: no labels
    ns = namespaces_from({keys.k8s_namespace("a"): {"name": "a", "labels": {"t": "x"}},
                          keys.k8s_namespace("b"): {"labels": {}},
                          keys.k8s_namespace("c"): {"name": "c", "labels": ["x"]}})
    assert [n.name for n in ns] == ["a"]


def test_a_block_that_is_not_a_block_is_skipped():
    key = keys.block("10.244.0.0/26")
    good = {"cidr": "10.244.0.0/26", "affinity": "n1", "pool": "default", "allocations": {}}
    assert block_of(Entry(key, good, 1)).cidr == "10.244.0.0/26"
    for bad in ("garbage", [1], {"cidr": "nonsense"}, {"allocations": {}},
                {**good, "allocations": {"x": "h"}}):
        assert block_of(Entry(key, bad, 2)) is None, bad
