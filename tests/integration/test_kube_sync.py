"""kube-sync against the real kube-apiserver v1.34 and etcd (tests/kube_cluster.py).

What kubectl does to namespaces, pods, NetworkPolicies, Nodes, Services and EndpointSlices
must reach etcd in the
records the agents read, through an API server restart, a 410 Gone after etcd compaction,
and kube-sync's own absence. kube-sync runs as its own process with a service-account token.
"""
from __future__ import annotations

import json
import os
import signal

import pytest

from calico_lite import keys
from tests.kube_cluster import KubeCluster
from tests.nslib import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

RESYNC = 2.0  # short, so the periodic resync is exercised too


@pytest.fixture(scope="module")
def cluster():
    c = KubeCluster()
    try:
        c.up()
        c.start_kube_sync(RESYNC)
        wait_for(lambda: all((c.get(keys.kube_sync_status(k)) or {}).get("synced") for k in
                             ("namespaces", "pods", "networkpolicies", "nodes", "services",
                              "endpointslices")),
                 "kube-sync synced", timeout=60, interval=0.2)
        yield c
    finally:
        print(c.log("kube-sync")[-5000:])
        print(c.paths.log("kube-apiserver").read_text()[-3000:] if c.paths.log("kube-apiserver").exists() else "")
        c.close()


def namespace(name: str, **labels: str) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def pod(ns: str, name: str, **labels: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": ns, "name": name, "labels": labels},
            "spec": {"automountServiceAccountToken": False, "containers": [
                {"name": "c", "image": "example.invalid/web:1",
                 "ports": [{"name": "http", "containerPort": 80}]}]}}


def policy(ns: str, name: str, port=80, cidr: str = "10.0.0.0/8") -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"namespace": ns, "name": name},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [
                {"from": [{"ipBlock": {"cidr": cidr}}], "ports": [{"protocol": "TCP", "port": port}]}]}}


def node(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}


def arrived(c: KubeCluster, key: str, check=lambda v: True):
    return wait_for(lambda: (lambda v: v if v is not None and check(v) else None)(c.get(key)),
                    f"{key} in etcd", timeout=60, interval=0.1)


def gone(c: KubeCluster, key: str) -> None:
    wait_for(lambda: c.get(key) is None, f"{key} removed from etcd", timeout=60, interval=0.1)


def labels_of(c, key):
    return (c.get(key) or {}).get("labels", {})


def test_labels_and_policies_applied_changed_deleted(cluster):
    c = cluster
    c.apply(namespace("ks-a", team="blue"))
    arrived(c, keys.k8s_namespace("ks-a"), lambda v: v["labels"].get("team") == "blue")
    c.kubectl("label", "namespace", "ks-a", "team=red", "--overwrite")
    arrived(c, keys.k8s_namespace("ks-a"), lambda v: v["labels"].get("team") == "red")

    c.apply(pod("ks-a", "web", app="web"))
    rec = arrived(c, keys.k8s_pod("ks-a", "web"))
    assert rec["labels"] == {"app": "web"} and rec["ports"] == [{"name": "http", "protocol": "TCP", "port": 80}]
    c.kubectl("label", "pod", "-n", "ks-a", "web", "app=db", "--overwrite")
    arrived(c, keys.k8s_pod("ks-a", "web"), lambda v: v["labels"] == {"app": "db"})

    c.apply(policy("ks-a", "allow-web"))
    pol = arrived(c, keys.k8s_policy("ks-a", "allow-web"))
    assert pol["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 80}]
    c.apply(policy("ks-a", "allow-web", port=8080))
    arrived(c, keys.k8s_policy("ks-a", "allow-web"),
            lambda v: v["spec"]["ingress"][0]["ports"][0]["port"] == 8080)

    c.kubectl("delete", "networkpolicy", "-n", "ks-a", "allow-web")
    gone(c, keys.k8s_policy("ks-a", "allow-web"))
    c.kubectl("delete", "pod", "-n", "ks-a", "web", "--wait=false")
    gone(c, keys.k8s_pod("ks-a", "web"))
    c.kubectl("delete", "namespace", "ks-a", "--wait=false")
    gone(c, keys.k8s_namespace("ks-a"))
    status = c.get(keys.kube_sync_status("networkpolicies"))
    assert status["synced"] and int(status["resource_version"]) > 0


def test_malformed_policy_is_refused_by_the_api_server_and_never_reaches_etcd(cluster):
    c = cluster
    c.apply(namespace("ks-bad"))
    for name, bad, message in (("bad-port", policy("ks-bad", "bad-port", port=70000), "70000"),
                               ("bad-cidr", policy("ks-bad", "bad-cidr", cidr="10.0.0.0/33"), "10.0.0.0/33")):
        p = c.kubectl("apply", "-f", "-", input=json.dumps(bad), check=False)
        assert p.returncode != 0 and "is invalid" in p.stderr and message in p.stderr, p.stderr
    c.apply(policy("ks-bad", "good"))  # applied after the refused ones: once it is in etcd...
    arrived(c, keys.k8s_policy("ks-bad", "good"))
    assert set(c.items(keys.K8S_POLICIES + "ks-bad/")) == {keys.k8s_policy("ks-bad", "good")}


def test_resync_rewrites_only_what_differs(cluster):
    c = cluster
    c.apply(namespace("ks-rs", tier="x"), namespace("ks-rs2", tier="y"))
    arrived(c, keys.k8s_namespace("ks-rs"))
    arrived(c, keys.k8s_namespace("ks-rs2"))
    untouched = c.ds("get", key=keys.k8s_namespace("ks-rs2"))
    c.ds("put", key=keys.k8s_namespace("ks-rs"), value={"name": "ks-rs", "labels": {"tier": "tampered"}})
    c.ds("put", key=keys.k8s_namespace("ks-stray"), value={"name": "ks-stray", "labels": {}})
    resyncs = c.get(keys.kube_sync_status("namespaces"))["resyncs"]
    arrived(c, keys.k8s_namespace("ks-rs"), lambda v: v["labels"].get("tier") == "x")
    gone(c, keys.k8s_namespace("ks-stray"))
    wait_for(lambda: c.get(keys.kube_sync_status("namespaces"))["resyncs"] >= resyncs + 2,
             "two more resyncs", timeout=60, interval=0.2)
    assert c.ds("get", key=keys.k8s_namespace("ks-rs2")) == untouched  # same mod_revision


def test_api_server_restart_mid_watch(cluster):
    c = cluster
    c.apply(namespace("ks-restart", phase="before"))
    arrived(c, keys.k8s_namespace("ks-restart"), lambda v: v["labels"].get("phase") == "before")
    error_at = c.get(keys.kube_sync_status("namespaces"))["error_at"]
    c.restart_apiserver()
    c.kubectl("label", "namespace", "ks-restart", "phase=after", "--overwrite")
    arrived(c, keys.k8s_namespace("ks-restart"), lambda v: v["labels"].get("phase") == "after")
    c.apply(policy("ks-restart", "after-restart"))
    arrived(c, keys.k8s_policy("ks-restart", "after-restart"))
    st = wait_for(lambda: (lambda s: s if s["synced"] else None)(c.get(keys.kube_sync_status("namespaces"))),
                  "namespaces synced again", timeout=60, interval=0.2)
    assert st["error_at"] > error_at and st["error"], "the broken watch was not reported"


def test_410_gone_after_etcd_compaction_relists(cluster):
    """kube-sync paused (SIGSTOP) while its kinds change and etcd is compacted past its
    resourceVersion; the API server restarts (a fresh watch cache), so resuming the watch
    can only be answered with 410 Gone, and the relist must converge."""
    c = cluster
    c.apply(namespace("ks-gone", v="1"), policy("ks-gone", "doomed"))
    arrived(c, keys.k8s_policy("ks-gone", "doomed"))
    gone_before = {k: c.get(keys.kube_sync_status(k))["gone"] for k in ("namespaces", "networkpolicies")}
    c.signal_kube_sync(signal.SIGSTOP)
    try:
        c.kubectl("label", "namespace", "ks-gone", "v=2", "--overwrite")
        c.kubectl("delete", "networkpolicy", "-n", "ks-gone", "doomed")
        c.apply(policy("ks-gone", "born"))
        c.apply(*({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"namespace": "ks-gone", "name": f"filler{i}"},
                   "data": {"i": str(i)}} for i in range(60)))
        rev = c.ds("revision")
        c.etcdctl("compact", str(rev))
        c.restart_apiserver()
    finally:
        c.signal_kube_sync(signal.SIGCONT)
    arrived(c, keys.k8s_namespace("ks-gone"), lambda v: v["labels"].get("v") == "2")
    gone(c, keys.k8s_policy("ks-gone", "doomed"))
    arrived(c, keys.k8s_policy("ks-gone", "born"))
    c.kubectl("label", "namespace", "ks-gone", "v=3", "--overwrite")  # and the new watch works
    arrived(c, keys.k8s_namespace("ks-gone"), lambda v: v["labels"].get("v") == "3")
    st = c.get(keys.kube_sync_status("namespaces"))
    assert st["gone"] > gone_before["namespaces"], st


def ipam_for(c: KubeCluster, name: str, handles: list[str]) -> None:
    c.ds("put", key=keys.node(name), value={"name": name, "address": "192.0.2.1"})
    for h in handles:
        a = c.ds("assign", node=name, handle=h)
        c.ds("put", key=keys.workload(name, h), value={"ip": a["ip"], "node": name, "pod": h})


def node_ipam(c: KubeCluster, name: str) -> dict:
    """Everything IPAM holds for node `name`."""
    return {"handles": [k for k, v in c.items(keys.HANDLES).items() if v["node"] == name],
            "workloads": list(c.items(f"{keys.WORKLOADS}{name}/")),
            "affinities": list(c.items(keys.affinities(name))),
            "blocks": [k for k, v in c.items(keys.BLOCKS).items() if v.get("affinity") == name],
            "node": c.get(keys.node(name))}


def test_deleted_node_ipam_is_released(cluster):
    c = cluster
    c.apply(node("ks-n1"), node("ks-n2"))
    for name in ("ks-n1", "ks-n2"):
        arrived(c, keys.k8s_node(name))
    ipam_for(c, "ks-n1", ["h1a", "h1b"])
    ipam_for(c, "ks-n2", ["h2a"])
    n2 = node_ipam(c, "ks-n2")
    assert all(node_ipam(c, "ks-n1").values())
    c.kubectl("delete", "node", "ks-n1")
    wait_for(lambda: not any(node_ipam(c, "ks-n1").values()), "ks-n1's IPAM released",
             timeout=60, interval=0.2)
    assert node_ipam(c, "ks-n2") == n2


def test_objects_deleted_while_kube_sync_was_down(cluster):
    c = cluster
    c.apply(namespace("ks-down"), pod("ks-down", "p", app="x"), policy("ks-down", "pol"), node("ks-n3"))
    for key in (keys.k8s_pod("ks-down", "p"), keys.k8s_policy("ks-down", "pol"), keys.k8s_node("ks-n3")):
        arrived(c, key)
    ipam_for(c, "ks-n3", ["h3"])
    c.stop_kube_sync()
    try:
        c.kubectl("delete", "pod", "-n", "ks-down", "p", "--wait=false")
        c.kubectl("delete", "networkpolicy", "-n", "ks-down", "pol")
        c.kubectl("delete", "node", "ks-n3")
        c.kubectl("label", "namespace", "ks-down", "back=yes")
    finally:
        c.start_kube_sync(RESYNC)
    arrived(c, keys.k8s_namespace("ks-down"), lambda v: v["labels"].get("back") == "yes")
    gone(c, keys.k8s_pod("ks-down", "p"))
    gone(c, keys.k8s_policy("ks-down", "pol"))
    gone(c, keys.k8s_node("ks-n3"))
    wait_for(lambda: not any(node_ipam(c, "ks-n3").values()), "ks-n3's IPAM released",
             timeout=60, interval=0.2)


def service(ns: str, name: str, external_ip: str) -> dict:
    """A Service without a selector (its EndpointSlices are the test's, as no pod runs here)."""
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": ns, "name": name},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                     "externalIPs": [external_ip], "ports": [{"name": "http", "port": 80}]}}


def endpointslice(ns: str, name: str, service_name: str, *endpoints: tuple[str, str, bool]) -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"namespace": ns, "name": name,
                         "labels": {"kubernetes.io/service-name": service_name}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip], "nodeName": node_name, "conditions": {"ready": ready}}
                          for ip, node_name, ready in endpoints]}


def test_services_and_endpointslices_reach_etcd(cluster):
    """What service advertisement reads: a Service's addresses (its LoadBalancer ingress IP
    patched into its status, as a cloud controller would) and its slices' endpoints."""
    c = cluster
    c.apply(namespace("ks-svc"), service("ks-svc", "web", "192.0.2.5"))
    rec = arrived(c, keys.k8s_service("ks-svc", "web"))
    assert rec["externalIPs"] == ["192.0.2.5"] and rec["externalTrafficPolicy"] == "Local"
    assert rec["ports"] == [{"name": "http", "protocol": "TCP", "port": 80}]
    assert len(rec["clusterIPs"]) == 1 and rec["loadBalancerIPs"] == []
    c.kubectl("patch", "service", "-n", "ks-svc", "web", "--subresource=status", "--type=merge",
              "-p", json.dumps({"status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.7"}]}}}))
    arrived(c, keys.k8s_service("ks-svc", "web"), lambda v: v["loadBalancerIPs"] == ["198.51.100.7"])

    key = keys.k8s_endpointslice("ks-svc", "web-1")
    c.apply(endpointslice("ks-svc", "web-1", "web"))   # served back as `endpoints: null`
    assert arrived(c, key)["endpoints"] == []
    c.apply(endpointslice("ks-svc", "web-1", "web", ("10.244.0.5", "n1", True), ("10.244.0.6", "n2", False)))
    rec = arrived(c, key, lambda v: v["endpoints"])
    assert rec == {"namespace": "ks-svc", "service": "web",
                   "endpoints": [{"node": "n1", "ready": True}, {"node": "n2", "ready": False}]}
    c.apply(endpointslice("ks-svc", "web-1", "web", ("10.244.0.6", "n2", True)))
    arrived(c, key, lambda v: v["endpoints"] == [{"node": "n2", "ready": True}])
    c.kubectl("delete", "endpointslice", "-n", "ks-svc", "web-1")
    gone(c, key)
    c.kubectl("delete", "service", "-n", "ks-svc", "web")
    gone(c, keys.k8s_service("ks-svc", "web"))


def test_a_policy_the_api_accepts_but_we_cannot_read_is_reported_and_the_last_good_version_stays(cluster):
    """The API server does not refuse a duplicate policyTypes entry; our parser does. kube-sync
    logs the key and why, reports it in its status, keeps the policy's last good record (never
    a policy silently dropped or opened) and goes on mirroring everything else."""
    c = cluster
    c.apply(namespace("ks-odd"))
    good = policy("ks-odd", "dup")
    c.apply(good)
    arrived(c, keys.k8s_policy("ks-odd", "dup"))
    before = c.get(keys.k8s_policy("ks-odd", "dup"))
    errors = c.get(keys.kube_sync_status("networkpolicies"))["errors"]
    odd = policy("ks-odd", "dup", port=8080)
    odd["spec"]["policyTypes"] = ["Ingress", "Ingress"]
    p = c.kubectl("apply", "-f", "-", input=json.dumps(odd), check=False)
    assert p.returncode == 0, p.stderr   # accepted by the API server
    status = wait_for(lambda: (s := c.get(keys.kube_sync_status("networkpolicies")))["errors"] > errors and s,
                      "the refused policy in kube-sync's status", timeout=60, interval=0.2)
    assert keys.k8s_policy("ks-odd", "dup") in status["error"] and "policyTypes" in status["error"], status
    c.apply(policy("ks-odd", "after"))    # the rest still flows, the odd one keeps its last good record
    arrived(c, keys.k8s_policy("ks-odd", "after"))
    wait_for(lambda: c.get(keys.kube_sync_status("networkpolicies"))["synced"], "synced again",
             timeout=60, interval=0.2)
    assert c.get(keys.k8s_policy("ks-odd", "dup")) == before
    log = c.log("kube-sync")
    assert "not mirrored" in log and "Traceback" not in log, log[-3000:]
    c.kubectl("delete", "networkpolicy", "-n", "ks-odd", "dup", "after")
    gone(c, keys.k8s_policy("ks-odd", "dup"))
