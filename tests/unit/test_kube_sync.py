import pytest

from calico_lite import keys
from calico_lite.kube_sync import namespace_record, pod_record, policy_record, reconcile_plan


def test_namespace_and_pod_records():
    assert namespace_record({"metadata": {"name": "x", "labels": {"a": "1"}}}) == (
        keys.k8s_namespace("x"), {"name": "x", "labels": {"a": "1"}})
    pod = {"metadata": {"namespace": "x", "name": "p", "labels": {"app": "web"}},
           "spec": {"nodeName": "n1", "containers": [
               {"ports": [{"name": "http", "containerPort": 80}]},
               {"ports": [{"containerPort": 53, "protocol": "UDP"}]}]},
           "status": {"podIP": "10.244.0.5"}}
    key, rec = pod_record(pod)
    assert key == keys.k8s_pod("x", "p") and rec["node"] == "n1" and rec["ip"] == "10.244.0.5"
    assert rec["ports"] == [{"name": "http", "protocol": "TCP", "port": 80},
                            {"name": None, "protocol": "UDP", "port": 53}]
    assert pod_record({"metadata": {"namespace": "x", "name": "h"}, "spec": {"hostNetwork": True}}) is None


def test_policy_record_is_validated_and_normalised():
    obj = {"metadata": {"name": "deny", "namespace": "x", "uid": "u", "resourceVersion": "9"},
           "spec": {"podSelector": {}}}
    key, rec = policy_record(obj)
    assert key == keys.k8s_policy("x", "deny")
    assert rec["spec"]["policyTypes"] == ["Ingress"] and "uid" not in rec["metadata"]
    with pytest.raises(Exception, match="port"):
        policy_record({"metadata": {"name": "b", "namespace": "x"},
                       "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": "no_such!"}]}]}})


def test_reconcile_writes_changes_and_deletes_what_the_api_no_longer_has():
    current = {"/a": {"v": 1}, "/b": {"v": 2}, "/gone": {"v": 3}}
    listed = {"/a": {"v": 1}, "/b": {"v": 20}, "/new": {"v": 4}}
    puts, deletes = reconcile_plan(current, listed)
    assert puts == {"/b": {"v": 20}, "/new": {"v": 4}} and deletes == ["/gone"]
