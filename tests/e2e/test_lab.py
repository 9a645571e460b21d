"""The walking skeleton end to end: real etcd, FRR, ExaBGP, namespaces and the CNI shim."""
from __future__ import annotations

import json
import os
import signal

import pytest

from tests.conftest import lab_cli
from tests.e2e.labutil import lab_name, lab_namespaces, probe, run_dir, running_lab, status

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lab():
    with running_lab(lab_name("lab")) as name:
        for node in ("r1n1", "r1n2", "r2n1", "r2n2"):
            lab_cli("lab", "pod", "add", f"default/p-{node}", "--node", node, "--name", name,
                    "--serve", "tcp:80,udp:80")
        lab_cli("lab", "wait", "--name", name)
        yield name


def test_status_shows_four_nodes_with_established_sessions_and_pods(lab):
    s = status(lab)
    assert s["etcd"] == "healthy"
    assert [(n["name"], n["rack"]) for n in s["nodes"]] == [
        ("r1n1", "rack1"), ("r1n2", "rack1"), ("r2n1", "rack2"), ("r2n2", "rack2")]
    for n in s["nodes"]:
        assert set(n) >= {"name", "rack", "address", "netns", "agent", "cni_bin_dir",
                          "cni_conf_dir", "bgp"}
        assert n["agent"] == "running" and n["netns"] == f"{lab}-{n['name']}"
        assert n["bgp"] and all(b["state"] == "Established" for b in n["bgp"])
        assert os.access(os.path.join(n["cni_bin_dir"], "calico-lite"), os.X_OK)
    pods = {p["name"]: p for p in s["pods"]}
    assert set(pods) == {"p-r1n1", "p-r1n2", "p-r2n1", "p-r2n2"}
    assert len({p["ip"] for p in pods.values()}) == 4
    assert all(p["ip"].startswith("10.244.") for p in pods.values())


@pytest.mark.parametrize("protocol", ["tcp", "udp"])
def test_every_pod_reaches_every_other_same_rack_and_cross_rack(lab, protocol):
    rows = probe(lab, "--protocol", protocol)
    assert len(rows) == 12
    failed = [(r["from"], r["to"]) for r in rows if not r["connected"]]
    assert not failed, f"unreachable: {failed}"
    pairs = {(r["from"], r["to"]) for r in rows}
    assert ("default/p-r1n1", "default/p-r1n2") in pairs  # same rack
    assert ("default/p-r1n1", "default/p-r2n2") in pairs  # across the spine


def test_pod_wiring_is_calico_style(lab):
    out = lab_cli("lab", "exec", "default/p-r1n1", "--name", lab, "--", "ip", "-j", "route").stdout
    routes = json.loads(out)
    assert {"dst": "default", "gateway": "169.254.1.1", "dev": "eth0"}.items() <= routes[0].items() \
        or any(r.get("dst") == "default" and r.get("gateway") == "169.254.1.1" for r in routes)
    assert any(r.get("dst") == "169.254.1.1" and r.get("scope") == "link" for r in routes)
    node_ns = f"{lab}-r1n1"
    links = json.loads(os.popen(f"ip -n {node_ns} -j link show").read())
    cali = [link for link in links if link["ifname"].startswith("cali")]
    assert len(cali) == 1 and cali[0]["address"] == "ee:ee:ee:ee:ee:ee"
    host_routes = json.loads(os.popen(f"ip -n {node_ns} -j route show dev {cali[0]['ifname']}").read())
    assert host_routes and host_routes[0]["scope"] == "link"
    proxy = os.popen(f"ip netns exec {node_ns} cat /proc/sys/net/ipv4/conf/{cali[0]['ifname']}/proxy_arp").read()
    assert proxy.strip() == "1"


def test_learned_routes_carry_our_protocol_and_never_the_nodes_own_block(lab):
    s = json.loads(lab_cli("node", "status", "--lab", lab, "--json").stdout)
    by_node = {n["node"]: n for n in s}
    for name, n in by_node.items():
        own = set(n["blocks"])
        assert own and not own & {r["prefix"] for r in n["routes"]}
        kernel = os.popen(f"ip -n {lab}-{name} route show proto 88").read()
        for block in (b for other in by_node.values() if other is not n for b in other["blocks"]):
            assert block in kernel, f"{name} lacks a route to {block}"
        for block in own:
            assert block not in kernel


def test_del_releases_the_address_and_the_interface(lab):
    ip = lab_cli("lab", "pod", "add", "default/tmp", "--node", "r2n1", "--name", lab).stdout.strip()
    shown = json.loads(lab_cli("ipam", "show", "--lab", lab, "--json").stdout)
    used_before = sum(b["used"] for b in shown["blocks"])
    lab_cli("lab", "pod", "del", "default/tmp", "--name", lab)
    shown = json.loads(lab_cli("ipam", "show", "--lab", lab, "--json").stdout)
    assert sum(b["used"] for b in shown["blocks"]) == used_before - 1
    assert ip not in {p["ip"] for p in status(lab)["pods"]}
    links = os.popen(f"ip -n {lab}-r2n1 -o link show").read()
    assert links.count("cali") == 1  # only p-r2n1's veth is left
    assert f"{lab}-pod-default-tmp" not in lab_namespaces(lab)
    again = lab_cli("lab", "pod", "add", "default/tmp2", "--node", "r2n1", "--name", lab).stdout.strip()
    assert again == ip  # the freed address is handed out again
    lab_cli("lab", "pod", "del", "default/tmp2", "--name", lab)


def test_a_second_lab_runs_beside_the_first(lab):
    with running_lab(lab_name("two"), "--racks", "1", "--nodes-per-rack", "2") as other:
        lab_cli("lab", "pod", "add", "a/one", "--node", "r1n1", "--name", other, "--serve", "tcp:80")
        lab_cli("lab", "pod", "add", "a/two", "--node", "r1n2", "--name", other, "--serve", "tcp:80")
        lab_cli("lab", "wait", "--name", other)
        assert all(r["connected"] for r in probe(other))
        assert all(r["connected"] for r in probe(lab))  # the first is undisturbed
        assert {p["name"] for p in status(other)["pods"]} == {"one", "two"}
    assert lab_namespaces(other) == []


def test_bad_input_is_named(lab):
    p = lab_cli("lab", "pod", "add", "default/x", "--node", "r9n9", "--name", lab, check=False)
    assert p.returncode == 1 and "no node 'r9n9'" in p.stderr and "Traceback" not in p.stderr
    p = lab_cli("lab", "pod", "add", "default/p-r1n1", "--node", "r1n1", "--name", lab, check=False)
    assert p.returncode == 1 and "already exists" in p.stderr
    p = lab_cli("lab", "status", "--name", "nosuchlab", check=False)
    assert p.returncode == 1 and "not up" in p.stderr


def test_down_after_kill_9_leaves_nothing():
    name = lab_name("kill")
    with running_lab(name, "--racks", "1", "--nodes-per-rack", "1"):
        lab_cli("lab", "pod", "add", "a/p", "--node", "r1n1", "--name", name, "--serve", "tcp:80")
        state = json.loads((run_dir(name) / "state.json").read_text())
        pids = list(state["pids"].values())
        for label, pid in state["pids"].items():
            if label.startswith(("agent:", "etcd")):
                os.kill(pid, signal.SIGKILL)
        out = lab_cli("lab", "down", "--name", name).stdout
        assert "namespaces removed" in out
    assert lab_namespaces(name) == []
    assert not run_dir(name).exists()
    alive = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    alive.append(pid)
        except OSError:
            pass
    assert alive == []
    leftovers = os.popen("ps -eo args").read()
    assert f"/labs/{name}/" not in leftovers


def test_down_from_the_process_that_used_the_lab_datastore_survives_it():
    """Lab.datastore() moves the process into the lab's control plane; down() must bring it
    back before removing that namespace, not kill its own caller."""
    name = lab_name("self")
    script = (
        "import os\n"
        "from calico_lite.lab.lab import Lab\n"
        "home = os.readlink('/proc/self/ns/net')\n"
        f"lab = Lab({name!r})\n"
        "try:\n"
        "    lab.up(1, 1, 'tor', log=lambda m: None)\n"
        "    assert lab.datastore().healthy()\n"
        "finally:\n"
        "    lab.down()\n"
        "print('home' if os.readlink('/proc/self/ns/net') == home else 'lost')\n")
    import subprocess
    import sys
    try:
        p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
        assert p.returncode == 0 and p.stdout.strip() == "home", p.stderr[-2000:]
    finally:
        lab_cli("lab", "down", "--name", name, check=False)
    assert lab_namespaces(name) == []
