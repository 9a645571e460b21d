"""`lab up --no-kubernetes` (lab.nokube): the lab that runs inside the qemu guest for IPIP,
here on this machine with VXLAN across racks. The agents run with the DaemonSet's argv and
environment, pods are made by the plain CNI path, and `lab node stop/start/restart` and
`lab pod add/del` work without a node component."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import lab_cli
from tests.e2e.labutil import lab_name, lab_namespaces, probe, run_dir, running_lab, status

pytestmark = pytest.mark.slow
NODES = ("r1n1", "r2n1")


@pytest.fixture(scope="module")
def lab():
    with running_lab(lab_name("nok"), "--no-kubernetes", "--bgp", "mesh", "--encap", "vxlan",
                     "--racks", "2", "--nodes-per-rack", "1") as name:
        for node in NODES:
            lab_cli("lab", "pod", "add", f"default/p-{node}", "--node", node, "--name", name,
                    "--serve", "tcp:80,udp:80")
        lab_cli("lab", "wait", "--name", name)
        yield name


def agent_pids(lab: str) -> dict[str, int]:
    pids = json.loads((run_dir(lab) / "state.json").read_text())["pids"]
    return {n: pids[f"agent:{n}"] for n in NODES}


def test_agents_run_with_the_daemonsets_argv_and_no_control_plane(lab):
    s = status(lab)
    assert [(n["name"], n["agent"], n["kubelet"], n["ready"]) for n in s["nodes"]] == [
        (n, "running", "stopped", True) for n in NODES]
    assert s["kubernetes"]["apiserver"] == "stopped"
    for node, pid in agent_pids(lab).items():
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
        env = dict(e.split("=", 1) for e in
                   Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0") if "=" in e)
        i = argv.index("node")
        assert argv[i:i + 8] == ["node", "run", "--name", node, "--address",
                                 f"10.99.{node[1]}.11", "--as", "64512"]
        host = run_dir(lab) / "nodes" / node / "host"
        assert argv[argv.index("--cni-socket") + 1] == str(host / "var/run/calico-lite/cni.sock")
        assert env["ETCD_ENDPOINTS"] == "https://10.97.0.10:2379"
        assert Path(env["ETCD_CERT_FILE"]).is_file()   # the Secret's volume, from deploy/
        # install-cni (the init container) put the shim and conflist where pods' CNI looks
        assert (host / "opt/cni/bin/calico-lite").exists()
        assert list((host / "etc/cni/net.d").glob("*.conflist"))


def test_pods_across_racks_connect_and_kubernetes_commands_say_why_not(lab):
    assert {(p["from"], p["to"]) for p in probe(lab) if p["connected"]} == {
        ("default/p-r1n1", "default/p-r2n1"), ("default/p-r2n1", "default/p-r1n1")}
    p = lab_cli("lab", "ns", "add", "x", "--name", lab, check=False)
    assert p.returncode != 0 and "without Kubernetes" in p.stderr


def test_node_restart_stop_start_without_a_node_component(lab):
    before = agent_pids(lab)["r1n1"]
    out = lab_cli("lab", "node", "restart", "r1n1", "--name", lab).stdout
    after = agent_pids(lab)["r1n1"]
    assert after != before and f"pid {after}" in out
    lab_cli("lab", "node", "stop", "r2n1", "--name", lab)
    assert [n["agent"] for n in status(lab)["nodes"]] == ["running", "stopped"]
    lab_cli("lab", "node", "start", "r2n1", "--name", lab)
    lab_cli("lab", "wait", "--name", lab)
    assert [n["agent"] for n in status(lab)["nodes"]] == ["running", "running"]
    assert all(p["connected"] for p in probe(lab))


def test_pod_del_then_add_again(lab):
    lab_cli("lab", "pod", "del", "default/p-r2n1", "--name", lab)
    assert [p["name"] for p in status(lab)["pods"]] == ["p-r1n1"]
    assert f"{lab}-pod-default-p-r2n1" not in lab_namespaces(lab)
    lab_cli("lab", "pod", "add", "default/p-r2n1", "--node", "r2n1", "--name", lab,
            "--serve", "tcp:80")
    lab_cli("lab", "wait", "--name", lab)
    assert all(p["connected"] for p in probe(lab))
