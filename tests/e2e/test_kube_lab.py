"""Kubernetes in the lab: the real kube-apiserver, controller-manager and scheduler, kubectl
through `lab kubectl`, and the node components (the kubelet stand-in) running pods through
the CNI. Everything is driven with kubectl as a user would."""
from __future__ import annotations

import json
import subprocess
import time

import pytest

from tests.conftest import lab_cli
from tests.e2e.labutil import lab_name, probe, running_lab, status

pytestmark = pytest.mark.slow
NODES = ("r1n1", "r1n2", "r2n1", "r2n2")


def kubectl(lab: str, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    from tests.conftest import CLI
    p = subprocess.run([*CLI, "lab", "kubectl", "--name", lab, "--", *args], input=input,
                       capture_output=True, text=True, timeout=120)
    if check and p.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed ({p.returncode}): {p.stderr}")
    return p


def kjson(lab: str, *args: str) -> dict:
    return json.loads(kubectl(lab, *args, "-o", "json").stdout)


def pod_yaml(ns: str, name: str, ports: tuple[int, ...] = (80,), node: str | None = None) -> str:
    spec = {"containers": [{"name": "app", "image": "registry.example/app:1",
                            "ports": [{"containerPort": p} for p in ports]}]}
    if node:
        spec["nodeName"] = node
    return json.dumps({"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
                       "spec": spec})


@pytest.fixture(scope="module")
def lab():
    with running_lab(lab_name("kube")) as name:
        yield name


def test_kubectl_lists_every_lab_node_ready_with_its_rack_and_address(lab):
    nodes = {n["metadata"]["name"]: n for n in kjson(lab, "get", "nodes")["items"]}
    assert sorted(nodes) == list(NODES)
    addresses = {n["name"]: n["address"] for n in status(lab)["nodes"]}
    for name, n in nodes.items():
        ready = {c["type"]: c["status"] for c in n["status"]["conditions"]}["Ready"]
        assert ready == "True", name
        assert n["metadata"]["labels"]["topology.kubernetes.io/zone"] == f"rack{name[1]}"
        assert {"type": "InternalIP", "address": addresses[name]} in n["status"]["addresses"]
        assert not n["spec"].get("taints"), f"{name} tainted: {n['spec'].get('taints')}"
    leases = {item["metadata"]["name"] for item in kjson(lab, "get", "leases", "-n", "kube-node-lease")["items"]}
    assert leases == set(NODES)


def test_status_names_the_control_plane_and_kubectl_is_within_the_version_skew(lab):
    k = status(lab)["kubernetes"]
    assert k["apiserver"] == k["controller_manager"] == k["scheduler"] == "running"
    assert k["kube_sync"] == "running"
    v = json.loads(kubectl(lab, "version", "-o", "json").stdout)
    server, client = v["serverVersion"], v["clientVersion"]
    assert server["gitVersion"] == k["version"]
    assert abs(int(server["minor"]) - int(client["minor"].rstrip("+"))) <= 1, v


def test_a_pod_applied_with_kubectl_is_scheduled_wired_by_the_cni_and_serves_its_ports(lab):
    kubectl(lab, "create", "namespace", "web")
    kubectl(lab, "apply", "-f", "-", input=pod_yaml("web", "front", ports=(80, 8080)))
    kubectl(lab, "wait", "--for=condition=Ready", "pod/front", "-n", "web", "--timeout=60s")
    pod = kjson(lab, "get", "pod", "front", "-n", "web")
    assert pod["spec"]["nodeName"] in NODES           # placed by the real scheduler
    workload = next(p for p in status(lab)["pods"] if (p["namespace"], p["name"]) == ("web", "front"))
    assert pod["status"]["podIP"] == workload["ip"]    # the address the CNI assigned
    assert pod["status"]["podIPs"] == [{"ip": workload["ip"]}]
    assert pod["status"]["hostIP"] == next(n["address"] for n in status(lab)["nodes"]
                                           if n["name"] == pod["spec"]["nodeName"])
    wide = kubectl(lab, "get", "pods", "-n", "web", "-o", "wide").stdout
    assert workload["ip"] in wide and "Running" in wide
    kubectl(lab, "apply", "-f", "-", input=pod_yaml("web", "back", node="r2n2"))
    kubectl(lab, "wait", "--for=condition=Ready", "pod/back", "-n", "web", "--timeout=60s")
    lab_cli("lab", "wait", "--name", lab)
    for port in ("80", "8080"):
        rows = [r for r in probe(lab, "--port", port) if r["to"] == "web/front"]
        assert rows and all(r["connected"] for r in rows), rows


def test_deleting_a_namespace_runs_cni_del_for_its_pods_and_releases_their_addresses(lab):
    kubectl(lab, "create", "namespace", "doomed")
    for i, node in enumerate(NODES):
        kubectl(lab, "apply", "-f", "-", input=pod_yaml("doomed", f"p{i}", node=node))
    kubectl(lab, "wait", "--for=condition=Ready", "pods", "--all", "-n", "doomed", "--timeout=60s")
    assert len([p for p in status(lab)["pods"] if p["namespace"] == "doomed"]) == 4
    kubectl(lab, "delete", "namespace", "doomed", "--wait", "--timeout=90s")
    assert not [p for p in status(lab)["pods"] if p["namespace"] == "doomed"]
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"{lab}-pod-doomed-" not in netns
    check = lab_cli("ipam", "check", "--lab", lab).stdout
    assert "ok: nothing leaked" in check, check


def test_lab_pod_commands_are_clients_of_the_api(lab):
    lab_cli("lab", "ns", "add", "cli", "--label", "team=blue", "--name", lab)
    ns = kjson(lab, "get", "namespace", "cli")
    assert ns["metadata"]["labels"] == {"team": "blue", "kubernetes.io/metadata.name": "cli"}
    ip = lab_cli("lab", "pod", "add", "cli/one", "--node", "r1n2", "--label", "app=one",
                 "--serve", "tcp:80", "--port", "http:tcp:80", "--port", "dns:udp:53",
                 "--name", lab).stdout.strip()
    pod = kjson(lab, "get", "pod", "one", "-n", "cli")
    assert pod["status"]["podIP"] == ip and pod["spec"]["nodeName"] == "r1n2"
    assert sorted((p.get("name"), p["protocol"], p["containerPort"])
                  for p in pod["spec"]["containers"][0]["ports"]) == [("dns", "UDP", 53), ("http", "TCP", 80)]
    lab_cli("lab", "pod", "label", "cli/one", "tier=db", "app-", "--name", lab)
    assert kjson(lab, "get", "pod", "one", "-n", "cli")["metadata"]["labels"] == {"tier": "db"}
    lab_cli("lab", "pod", "del", "cli/one", "--name", lab)
    assert kubectl(lab, "get", "pod", "one", "-n", "cli", check=False).returncode != 0


def test_a_restarted_node_component_adopts_its_pods_and_cleans_up_what_was_deleted_meanwhile(lab):
    import os
    import signal
    from tests.e2e.labutil import run_dir
    kubectl(lab, "create", "namespace", "adopt")
    for name in ("keep", "gone"):
        kubectl(lab, "apply", "-f", "-", input=pod_yaml("adopt", name, node="r1n1"))
    kubectl(lab, "wait", "--for=condition=Ready", "pods", "--all", "-n", "adopt", "--timeout=60s")
    before = {p["name"]: p["ip"] for p in status(lab)["pods"] if p["namespace"] == "adopt"}
    state = json.loads((run_dir(lab) / "state.json").read_text())
    os.kill(state["pids"]["kubelet:r1n1"], signal.SIGKILL)
    # a forced delete while the node component is down: nobody ran CNI DEL yet
    kubectl(lab, "delete", "pod", "gone", "-n", "adopt", "--force", "--grace-period=0")
    lab_cli("lab", "node", "start", "r1n1", "--component", "kubelet", "--name", lab)
    deadline = time.monotonic() + 30
    while any(p["namespace"] == "adopt" and p["name"] == "gone" for p in status(lab)["pods"]):
        assert time.monotonic() < deadline, "the restarted node component did not clean up"
        time.sleep(0.2)
    after = {p["name"]: p["ip"] for p in status(lab)["pods"] if p["namespace"] == "adopt"}
    assert after == {"keep": before["keep"]}   # adopted, not re-created
    assert "ok: nothing leaked" in lab_cli("ipam", "check", "--lab", lab).stdout
