"""calico-lite as an operator installs it: `lab up` applies deploy/ with kubectl, the real
DaemonSet controller and scheduler place the pods, and each lab node's component runs them
(the init container, then the agent, with their probes). Then: a rolling upgrade under a
cross-rack UDP stream, a broken agent seen by Kubernetes, and an uninstall that leaves
nothing behind."""
from __future__ import annotations

import json
import subprocess
import time

import pytest

from calico_lite.lab.lab import Lab
from tests.conftest import REPO, lab_cli
from tests.e2e.labutil import (UdpStream, agent_pid, exabgp_pid, lab_name, pod_ip, running_lab,
                               tor_sessions)
from tests.nslib import wait_for

pytestmark = pytest.mark.slow
NS = "kube-system"


def kubectl(lab: str, *args: str, check: bool = True) -> str:
    return lab_cli("lab", "kubectl", "--name", lab, "--", *args, check=check).stdout


def kget(lab: str, *args: str) -> dict:
    return json.loads(kubectl(lab, "get", "-o", "json", *args))


def node_pods(lab: str) -> dict[str, dict]:
    """node -> its calico-lite-node pod (not terminating)."""
    pods = kget(lab, "pods", "-n", NS, "-l", "k8s-app=calico-lite-node")["items"]
    return {p["spec"]["nodeName"]: p for p in pods if not p["metadata"].get("deletionTimestamp")}


def cmdline(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().decode().split("\0")[:-1]


def in_node(lab: str, node: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", f"{lab}-{node}", *argv], capture_output=True, text=True)


@pytest.fixture(scope="module")
def lab():
    with running_lab(lab_name("ds"), "--racks", "2", "--nodes-per-rack", "1") as name:
        for node in ("r1n1", "r2n1"):
            lab_cli("lab", "pod", "add", f"default/p-{node}", "--node", node, "--name", name,
                    "--serve", "udp:80,tcp:80")
        yield name


def test_the_agents_are_the_daemonsets_pods_run_as_the_manifest_says(lab):
    ds = kget(lab, "ds", "-n", NS, "calico-lite-node")
    assert ds["status"]["numberReady"] == ds["status"]["desiredNumberScheduled"] == 2
    pods = node_pods(lab)
    assert sorted(pods) == ["r1n1", "r2n1"]
    paths = Lab(lab).node_paths("r1n1")
    for node, pod in pods.items():
        assert pod["status"]["podIP"] == pod["status"]["hostIP"]      # hostNetwork
        argv = cmdline(agent_pid(lab, node))
        # args from the manifest, $(NODE_NAME) and $(NODE_IP) from fieldRef, $(ETCD_ENDPOINTS)
        # from the ConfigMap, the hostPath /var/run/calico-lite as the node's folder
        assert argv[argv.index("--name") + 1] == node
        assert argv[argv.index("--address") + 1] == pod["status"]["hostIP"]
        assert argv[argv.index("--etcd-endpoints") + 1].startswith(("https://10.97.0.10:2379",
                                                                     "http://10.97.0.10:2379"))
        assert argv[argv.index("--run-dir") + 1] == str(Lab(lab).node_paths(node).run_dir)
        st = {s["name"]: s for s in pod["status"]["containerStatuses"]}
        assert st["agent"]["ready"] and st["agent"]["state"].get("running")
        assert pod["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    # install-cni (the init container) wrote the conflist naming the node's own socket
    conflist = json.loads((paths.conf_dir / "10-calico-lite.conflist").read_text())
    assert conflist["plugins"][0]["agent_socket"] == str(paths.socket)
    assert (paths.bin_dir / "calico-lite").is_file()
    # lab status shows each agent's pod
    status = json.loads(lab_cli("lab", "status", "--name", lab, "--json").stdout)
    assert {n["name"]: n["agent_pod"] for n in status["nodes"]} == \
        {n: p["metadata"]["name"] for n, p in pods.items()}
    # kube-sync is its Deployment's pod, with health on 127.0.0.1:9098 in its node
    dep = kget(lab, "deploy", "-n", NS, "calico-lite-kube-sync")
    assert dep["status"]["availableReplicas"] == 1
    ks = kget(lab, "pods", "-n", NS, "-l", "k8s-app=calico-lite-kube-sync")["items"][0]
    ready = in_node(lab, ks["spec"]["nodeName"], "curl", "-s", "http://127.0.0.1:9098/readyz").stdout
    assert "pods: ok" in ready and "datastore: ok" in ready, ready
    metrics = in_node(lab, ks["spec"]["nodeName"], "curl", "-s", "http://127.0.0.1:9098/metrics").stdout
    assert 'calico_lite_kube_sync_synced{kind="networkpolicies"} 1.0' in metrics


def test_the_api_server_accepts_deploy_as_shipped(lab):
    """deploy/ and deploy/cleanup/ as an operator downloads them, validated by the API server
    of the version we build (`--dry-run=server`: schema, defaults, admission), nothing stored."""
    out = kubectl(lab, "apply", "--dry-run=server", "-f", str(REPO / "deploy"),
                  "-f", str(REPO / "deploy" / "cleanup"))
    for kind in ("daemonset.apps/calico-lite-node", "deployment.apps/calico-lite-kube-sync",
                 "daemonset.apps/calico-lite-cleanup", "secret/calico-lite-etcd"):
        assert kind in out, out
    assert "server dry run" in out
    broken = (REPO / "deploy" / "calico-lite.yaml").read_text().replace(
        "maxUnavailable: 1", "maxUnavailable: one-at-a-time")
    p = lab_cli("lab", "kubectl", "--name", lab, "--", "apply", "--dry-run=server", "-f", "-",
                check=False, input=broken)
    assert p.returncode != 0 and "maxUnavailable" in p.stderr, p.stderr


def test_a_broken_agent_is_not_ready_in_kubernetes(lab):
    """BGP cut on r1n1 (tcp/179 dropped in its namespace): after the hold time its /readyz
    fails, the readiness probe says so, the pod and the DaemonSet count it unready; the cut
    healed, it is Ready again."""
    rule = ["nft", "add", "table", "inet", "tdscut"]
    assert in_node(lab, "r1n1", *rule).returncode == 0
    try:
        in_node(lab, "r1n1", "nft", "add", "chain", "inet", "tdscut", "out",
                "{ type filter hook output priority 0; }")
        in_node(lab, "r1n1", "nft", "add", "rule", "inet", "tdscut", "out", "tcp", "dport", "179", "drop")
        in_node(lab, "r1n1", "nft", "add", "rule", "inet", "tdscut", "out", "tcp", "sport", "179", "drop")
        wait_for(lambda: not node_pods(lab)["r1n1"]["status"]["containerStatuses"][0]["ready"],
                 "r1n1's agent pod not ready", timeout=60)
        cond = {c["type"]: c["status"] for c in node_pods(lab)["r1n1"]["status"]["conditions"]}
        assert cond["Ready"] == "False"
        assert kget(lab, "ds", "-n", NS, "calico-lite-node")["status"]["numberReady"] == 1
    finally:
        in_node(lab, "r1n1", "nft", "delete", "table", "inet", "tdscut")
    wait_for(lambda: node_pods(lab)["r1n1"]["status"]["containerStatuses"][0]["ready"],
             "r1n1's agent pod ready again", timeout=60)


def test_rolling_upgrade_loses_no_packet(lab):
    """`kubectl rollout restart` then a new image tag: the DaemonSet controller replaces the
    agents one node at a time (maxUnavailable 1, waiting for readiness) while a UDP stream
    crosses the racks; ExaBGP and the ToR sessions stay, nothing is lost."""
    before = {n: p["metadata"]["name"] for n, p in node_pods(lab).items()}
    exabgp = {n: exabgp_pid(lab, n) for n in before}
    sessions = tor_sessions(lab, "tor1", "10.99.1.11")
    stream = UdpStream(lab, "default/p-r1n1", pod_ip(lab, "default/p-r2n1"))
    try:
        time.sleep(0.5)
        t0 = time.monotonic()
        kubectl(lab, "rollout", "restart", "-n", NS, "ds/calico-lite-node")
        kubectl(lab, "rollout", "status", "-n", NS, "ds/calico-lite-node", "--timeout=180s")
        restart_s = time.monotonic() - t0
        after_restart = {n: p["metadata"]["name"] for n, p in node_pods(lab).items()}
        t1 = time.monotonic()
        kubectl(lab, "set", "image", "-n", NS, "ds/calico-lite-node",
                "agent=calico-lite:0.1.1-lab", "install-cni=calico-lite:0.1.1-lab")
        kubectl(lab, "rollout", "status", "-n", NS, "ds/calico-lite-node", "--timeout=180s")
        upgrade_s = time.monotonic() - t1
        time.sleep(1.0)
    finally:
        result = stream.finish()
    after = node_pods(lab)
    print(f"\n[info] rollout restart of 2 nodes {restart_s:.1f}s, image upgrade {upgrade_s:.1f}s; "
          f"stream: sent {result['sent']}, lost {result['lost_count']}, longest outage "
          f"{result['longest_outage_s']}s")
    assert result["sent"] > 300
    assert result["lost_count"] == 0, f"lost probes during the rollout: {result['lost'][:20]}"
    assert all(after_restart[n] != before[n] for n in before), "rollout restart replaced no pod"
    assert all(after[n]["metadata"]["name"] != after_restart[n] for n in before)
    assert {p["spec"]["containers"][0]["image"] for p in after.values()} == {"calico-lite:0.1.1-lab"}
    assert {n: exabgp_pid(lab, n) for n in before} == exabgp, "ExaBGP was restarted"
    assert tor_sessions(lab, "tor1", "10.99.1.11") == sessions, "the ToR session flapped"
    rows = json.loads(lab_cli("lab", "probe", "--name", lab, "--json").stdout)
    assert all(r["connected"] for r in rows), [r for r in rows if not r["connected"]]


def leftovers(lab: str, node: str) -> list[str]:
    paths = Lab(lab).node_paths(node)
    p = in_node(lab, node, str(REPO / ".venv" / "bin" / "calico-lite"), "node", "cleanup", "--check",
                "--run-dir", str(paths.run_dir), "--cni-bin-dir", str(paths.bin_dir),
                "--cni-conf-dir", str(paths.conf_dir))
    return [line[len("left: "):] for line in p.stdout.splitlines() if line.startswith("left: ")]


def test_uninstall_then_cleanup_leaves_every_node_as_before():
    """`kubectl delete -f` of the manifests stops the agents (they detach, as for an
    upgrade); deploy/cleanup/ then removes the rest on every node: conflist, shim, nftables
    table, proto-88 routes, the VXLAN device, ExaBGP."""
    with running_lab(lab_name("un"), "--racks", "2", "--nodes-per-rack", "1", "--encap", "vxlan") as lab:
        lab_cli("lab", "pod", "add", "default/a", "--node", "r1n1", "--name", lab, "--serve", "tcp:80")
        lab_cli("lab", "pod", "add", "default/b", "--node", "r2n1", "--name", lab, "--serve", "tcp:80")
        assert all(r["connected"] for r in json.loads(lab_cli("lab", "probe", "--name", lab, "--json").stdout))
        installed = {n: leftovers(lab, n) for n in ("r1n1", "r2n1")}
        assert all(any("vxlan.calico" in x for x in v) and any("calico-lite" in x for x in v)
                   for v in installed.values()), installed   # the check sees an installed node
        kubectl(lab, "delete", "pod", "-n", "default", "a", "b", "--wait=true")
        kubectl(lab, "delete", "-f", str(Lab(lab).kube.root / "calico-lite.yaml"), "--wait=true")
        wait_for(lambda: not kget(lab, "pods", "-n", NS)["items"], "calico-lite's pods gone", timeout=60)
        assert all(agent_pid(lab, n) is None for n in ("r1n1", "r2n1"))
        kubectl(lab, "apply", "-f", str(REPO / "deploy" / "cleanup"))
        kubectl(lab, "rollout", "status", "-n", NS, "ds/calico-lite-cleanup", "--timeout=120s")
        kubectl(lab, "delete", "-f", str(REPO / "deploy" / "cleanup"), "--wait=true")
        for node in ("r1n1", "r2n1"):
            assert leftovers(lab, node) == [], node
            assert exabgp_pid(lab, node) is None
