"""Service address advertisement in a 2 racks x 2 nodes lab (ToR mode), driven with kubectl
and `lab pod`: every node announces the configured service ranges; a LoadBalancer Service
with `externalTrafficPolicy: Local` is announced as /32s (its cluster IP, external IP and
LoadBalancer IP) by exactly the nodes that run one of its ready endpoints, as its pods come
and go, and by nobody once the last one went. What is checked is what the ToRs' FRR holds."""
from __future__ import annotations

import json
import os
import subprocess
import uuid

import pytest

from tests.conftest import CLI, lab_cli
from tests.e2e.labutil import running_lab, status, vtysh
from tests.nslib import wait_for

pytestmark = pytest.mark.slow
NODES = ("r1n1", "r1n2", "r2n1", "r2n2")
CLUSTER_RANGE, EXTERNAL_RANGE, LB_RANGE = "10.96.0.0/16", "192.0.2.0/24", "198.51.100.0/24"
EXTERNAL_IP, LB_IP = "192.0.2.10", "198.51.100.10"
NS = "svc"
SERVICE = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": NS},
           "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                    "selector": {"app": "web"}, "externalIPs": [EXTERNAL_IP],
                    "ports": [{"name": "http", "port": 80}]}}


def kubectl(lab: str, *args: str, input: str | None = None) -> str:
    p = subprocess.run([*CLI, "lab", "kubectl", "--name", lab, "--", *args], input=input,
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "CALICO_LITE_LAB": ""})
    assert p.returncode == 0, f"kubectl {' '.join(args)}: {p.stderr}"
    return p.stdout


def set_ranges(lab: str, external: str = EXTERNAL_RANGE) -> None:
    lab_cli("bgp", "config", "set", "--lab", lab, "--service-cluster-ip", CLUSTER_RANGE,
            "--service-external-ip", external, "--service-loadbalancer-ip", LB_RANGE)


def announcers(lab: str, prefix: str, addresses: dict[str, str]) -> set[str]:
    """The nodes that announce prefix to their ToR themselves (a path whose AS path is the
    node's own AS alone), over both ToRs."""
    names = {a: n for n, a in addresses.items()}
    out = set()
    for tor in ("tor1", "tor2"):
        paths = json.loads(vtysh(lab, tor, f"show ip bgp {prefix} json")).get("paths", [])
        out |= {names[p["peer"]["peerId"]] for p in paths
                if p["aspath"]["length"] == 1 and p["peer"]["peerId"] in names}
    return out


def anywhere(lab: str, prefix: str) -> bool:
    """Whether either ToR holds any path for prefix (directly or through the spine)."""
    return any(json.loads(vtysh(lab, tor, f"show ip bgp {prefix} json")).get("paths")
               for tor in ("tor1", "tor2"))


def node_status(lab: str, node: str) -> dict:
    return json.loads(lab_cli("node", "status", node, "--lab", lab, "--json").stdout)[0]


@pytest.fixture(scope="module")
def lab():
    with running_lab(f"sv{uuid.uuid4().hex[:5]}") as name:
        yield name


def create_local_service(lab: str) -> tuple[str, ...]:
    """The Service, its LoadBalancer IP patched in as a cloud controller would; its /32s."""
    kubectl(lab, "create", "namespace", NS)
    kubectl(lab, "apply", "-f", "-", input=json.dumps(SERVICE))
    kubectl(lab, "patch", "service", "web", "-n", NS, "--subresource=status", "--type=merge", "-p",
            json.dumps({"status": {"loadBalancer": {"ingress": [{"ip": LB_IP}]}}}))
    cluster_ip = kubectl(lab, "get", "service", "web", "-n", NS, "-o", "jsonpath={.spec.clusterIP}")
    return f"{cluster_ip}/32", f"{EXTERNAL_IP}/32", f"{LB_IP}/32"


def pod_add(lab: str, pod: str, node: str, app: str = "web") -> None:
    lab_cli("lab", "pod", "add", f"{NS}/{pod}", "--node", node, "--label", f"app={app}",
            "--serve", "tcp:80", "--name", lab)


def pod_del(lab: str, pod: str) -> None:
    lab_cli("lab", "pod", "del", f"{NS}/{pod}", "--name", lab)


def set_policy(lab: str, policy: str) -> None:
    kubectl(lab, "patch", "service", "web", "-n", NS, "--type=merge", "-p",
            json.dumps({"spec": {"externalTrafficPolicy": policy}}))


def kernel_destinations(lab: str, node: str) -> set[str]:
    out = subprocess.run(["ip", "-n", f"{lab}-{node}", "-j", "route", "show", "proto", "88"],
                         capture_output=True, text=True, check=True).stdout
    return {r["dst"] for r in json.loads(out or "[]")}


def test_local_service_32s_follow_ready_endpoints_and_ranges_come_from_every_node(lab):
    addresses = {n["name"]: n["address"] for n in status(lab)["nodes"]}
    set_ranges(lab)
    shown = lab_cli("bgp", "config", "show", "--lab", lab).stdout
    assert f"serviceClusterIPs: {CLUSTER_RANGE}" in shown and f"serviceExternalIPs: {EXTERNAL_RANGE}" in shown
    for prefix in (CLUSTER_RANGE, EXTERNAL_RANGE, LB_RANGE):
        wait_for(lambda: announcers(lab, prefix, addresses) == set(NODES),
                 f"{prefix} announced by every node", timeout=60, interval=0.5)
    service_32s = create_local_service(lab)

    def expect(nodes: set[str], why: str) -> None:
        for prefix in service_32s:
            wait_for(lambda: announcers(lab, prefix, addresses) == nodes,
                     f"{prefix} announced by {sorted(nodes)} ({why})", timeout=60, interval=0.5)

    expect(set(), "no endpoint yet")
    pod_add(lab, "web-1", "r1n1")
    expect({"r1n1"}, "web-1 on r1n1")
    pod_add(lab, "web-2", "r2n2")
    pod_add(lab, "other", "r1n2", app="other")   # not selected: r1n2 stays out
    expect({"r1n1", "r2n2"}, "web-2 on r2n2 too")

    advertised = {a["prefix"]: a["reason"] for a in node_status(lab, "r2n2")["services"]}
    assert advertised[f"{EXTERNAL_IP}/32"] == f"{NS}/web external IP, local endpoint"
    assert advertised[CLUSTER_RANGE] == "service cluster IP range"
    assert f"{EXTERNAL_IP}/32" not in {a["prefix"] for a in node_status(lab, "r1n2")["services"]}
    # paths learned for service prefixes are the fabric's, never a node's kernel route
    assert not kernel_destinations(lab, "r1n2") & {CLUSTER_RANGE, EXTERNAL_RANGE, LB_RANGE, *service_32s}

    pod_del(lab, "web-1")
    expect({"r2n2"}, "web-1 deleted: moved to r2n2 alone")
    pod_add(lab, "web-3", "r2n1")
    expect({"r2n1", "r2n2"}, "web-3 on r2n1")
    set_policy(lab, "Cluster")
    expect(set(), "Cluster policy: the ranges suffice")
    set_policy(lab, "Local")
    expect({"r2n1", "r2n2"}, "Local again")
    for pod in ("web-2", "web-3"):
        pod_del(lab, pod)
    expect(set(), "the last endpoint went")
    for prefix in service_32s:
        wait_for(lambda: not anywhere(lab, prefix), f"{prefix} withdrawn from the fabric",
                 timeout=60, interval=0.5)
    assert announcers(lab, CLUSTER_RANGE, addresses) == set(NODES)


def test_clearing_a_range_withdraws_it_from_every_node(lab):
    addresses = {n["name"]: n["address"] for n in status(lab)["nodes"]}
    set_ranges(lab)
    wait_for(lambda: announcers(lab, EXTERNAL_RANGE, addresses) == set(NODES),
             f"{EXTERNAL_RANGE} announced by every node", timeout=60, interval=0.5)
    set_ranges(lab, external="")
    wait_for(lambda: not anywhere(lab, EXTERNAL_RANGE), f"{EXTERNAL_RANGE} withdrawn",
             timeout=60, interval=0.5)
    assert announcers(lab, CLUSTER_RANGE, addresses) == set(NODES)
    assert "serviceExternalIPs" not in lab_cli("bgp", "config", "show", "--lab", lab).stdout


def test_internal_local_service_cluster_ip_32_comes_from_its_endpoints_nodes(lab):
    addresses = {n["name"]: n["address"] for n in status(lab)["nodes"]}
    set_ranges(lab)
    api = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "api", "namespace": NS},
           "spec": {"internalTrafficPolicy": "Local", "selector": {"app": "api"},
                    "ports": [{"name": "http", "port": 80}]}}
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}
    kubectl(lab, "apply", "-f", "-", input=json.dumps(namespace))   # whichever test runs first
    kubectl(lab, "apply", "-f", "-", input=json.dumps(api))
    cluster_ip = kubectl(lab, "get", "service", "api", "-n", NS, "-o", "jsonpath={.spec.clusterIP}")
    pod_add(lab, "api-1", "r1n2", app="api")
    wait_for(lambda: announcers(lab, f"{cluster_ip}/32", addresses) == {"r1n2"},
             f"{cluster_ip}/32 announced by r1n2 alone", timeout=60, interval=0.5)
    pod_del(lab, "api-1")
    wait_for(lambda: not anywhere(lab, f"{cluster_ip}/32"), f"{cluster_ip}/32 withdrawn",
             timeout=60, interval=0.5)
