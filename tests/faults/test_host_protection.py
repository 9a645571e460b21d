"""Host and pod security with a real agent, etcd and pods made through the real shim.

Pods cannot reach their node's own ports (SSH, BGP, etcd, the agent's health port) except the
allow list (DNS by default); the node still reaches its pods (a kubelet probe); `node set`
opens a port or turns protection off without an agent restart. A pod cannot send with another
address or MAC, advertise itself as a router, or claim another pod's address by ARP: each
forged frame, built by hand and sent on a raw socket inside the pod, is counted and dropped, and
the same frame sent the honest way (or from outside the pods) does arrive. The agent's socket
and run folder are root-only, and a BGP password shows nowhere it should not.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from bgp.exabgp import CONFIG_NAME
from calico_lite import keys
from tests.conftest import REPO
from tests.faults.agent_node import agent_node, wait_until
from tests.nslib import sh

NODE_PORTS = [22, 179, 2379, 53]   # SSH, BGP, etcd, DNS: listeners on the node's address
HEALTH = 9099                      # the agent's own health port (on 0.0.0.0 here)
PASSWORD = "hp-Md5-S3cret-7f3a"     # a BGP password that must never show up
HOST_MAC = "ee:ee:ee:ee:ee:ee"


def _py(netns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return sh("ip", "netns", "exec", netns, sys.executable, *args, check=check, timeout=60,
              env={**os.environ, "PYTHONPATH": str(REPO)})


def cni_add(node, pod_ns: str, name: str) -> dict:
    res = node.cni_add(f"hp-{name}", pod_ns, name)
    host_if = res["interfaces"][0]["name"]
    return {"ns": pod_ns, "ip": res["ips"][0]["address"].split("/")[0], "host_if": host_if,
            "mac": res["interfaces"][1]["mac"]}


@pytest.fixture(scope="module")
def lab():
    """One node (agent, etcd, ExaBGP with an MD5 peer), node services, two pods."""
    with agent_node("hp") as node:
        sh("ip", "-n", node.netns, "route", "add", "default", "via", "10.99.1.1")  # proxy ARP needs one
        node.cli("bgp", "config", "set", "--mesh", "off", "--as-number", "64601")
        node.cli("bgp", "secret", "set", "tor-md5", "--password", PASSWORD)
        node.cli("bgp", "peer", "add", "tor", "--peer-ip", "10.99.1.1", "--as", "65001",
                 "--password-secret", "tor-md5")
        node.start_agent("--health-listen", f"0.0.0.0:{HEALTH}")
        node.spawn("ports", node.netns, [sys.executable, "-m", "tests.faults.hostports", "serve",
                                         node.address, str(node.root / "udp.log"),
                                         *map(str, NODE_PORTS)], node.root / "ports.log")
        wait_until(lambda: (node.ds("get", key=keys.policy_status(node.name)) or [{}])[0]
                   .get("updated", 0) > 0, "the agent's first policy sync")
        pods = {}
        for name in ("pa", "pb"):
            sh("ip", "netns", "add", f"{node.prefix}{name}")
            pods[name] = cni_add(node, f"{node.prefix}{name}", name)
        node.spawn("pod-server", pods["pa"]["ns"], [sys.executable, "-c", (
            "import socket\ns=socket.create_server(('0.0.0.0',8080))\n"
            "while True: s.accept()[0].close()")], node.root / "pod-server.log")
        wait_until(lambda: (node.ds("get", key=keys.policy_status(node.name)) or [{}])[0]
                   .get("local_pods") == 2, "both pods in the ruleset")
        yield node, pods


def probe(node, pod: dict) -> dict:
    got = json.loads(_py(pod["ns"], "-m", "tests.faults.hostports", "probe", node.address,
                         *map(str, [*NODE_PORTS, HEALTH])).stdout)
    print(f"[info] pod {pod['ip']} -> node {node.address}: {got}")
    return got


def node_reaches_pod(node, pod: dict) -> bool:
    code = f"import socket; socket.create_connection(('{pod['ip']}', 8080), timeout=2).close()"
    return _py(node.netns, "-c", code, check=False).returncode == 0


def status_line(node) -> str:
    out = node.cli("node", "status", node.name).stdout
    return next((line for line in out.splitlines() if "workload to host" in line), out)


def test_pods_reach_only_the_allowed_ports_of_their_node(lab):
    node, pods = lab
    pa = pods["pa"]
    blocked = {"22": "no answer", "179": "no answer", "2379": "no answer", str(HEALTH): "no answer"}
    want = {**blocked, "53": "open", "udp53": "open"}
    wait_until(lambda: probe(node, pa) == want, "only DNS open to the pod")
    assert node_reaches_pod(node, pa), "the node's own probe of a pod"
    assert "drop except tcp:53, udp:53, udp:67" in status_line(node) and "(default)" in status_line(node)
    pid = node.procs["agent"].pid

    node.cli("node", "set", node.name, "--workload-to-host-allow", "tcp:53,udp:53,tcp:22")
    wait_until(lambda: probe(node, pa) == {**want, "22": "open"}, "tcp:22 opened by node set")
    assert "drop except tcp:22, tcp:53, udp:53" in status_line(node)
    node.cli("node", "set", node.name, "--workload-to-host-action", "accept")
    wait_until(lambda: set(probe(node, pa).values()) == {"open"}, "every port open (protection off)")
    assert "accept (protection off)" in status_line(node)
    node.cli("node", "set", node.name, "--workload-to-host-allow", "default",
             "--workload-to-host-action", "default")
    wait_until(lambda: probe(node, pa) == want, "back to the default")
    assert node.procs["agent"].pid == pid and node.agent_alive(), "no agent restart"
    bad = node.cli("node", "set", node.name, "--workload-to-host-allow", "tcp:70000", check=False)
    assert bad.returncode != 0 and "tcp:70000" in bad.stdout + bad.stderr
    assert node_reaches_pod(node, pa)


def counter(node, family: str, chain: str, comment: str) -> int:
    out = sh("nft", "list", "chain", family, "calico-lite", chain, netns=node.netns).stdout
    line = next(line for line in out.splitlines() if comment in line)
    return int(line.split("packets ")[1].split()[0])


def udp_received(node, payload: str) -> bool:
    log = node.root / "udp.log"
    return log.exists() and payload in log.read_text()


def send(ns: str, *args: str) -> None:
    _py(ns, "-m", "tests.faults.frames", *args)


def test_forged_source_address_and_mac_are_dropped(lab):
    node, pods = lab
    pa, pb = pods["pa"], pods["pb"]
    send(pa["ns"], "udp", "eth0", pa["mac"], HOST_MAC, pa["ip"], node.address, "53", "honest-1")
    wait_until(lambda: udp_received(node, "honest-1"), "the honest hand-made frame")
    mac_drops = counter(node, "inet", "host_guard_pre", "its own MAC")
    send(pa["ns"], "udp", "eth0", "02:00:00:00:be:ef", HOST_MAC, pa["ip"], node.address, "53", "mac-2")
    wait_until(lambda: counter(node, "inet", "host_guard_pre", "its own MAC") >= mac_drops + 3,
               "the forged MAC counted")
    send(pa["ns"], "udp", "eth0", pa["mac"], HOST_MAC, pb["ip"], node.address, "53", "ip-3")
    send(pa["ns"], "udp", "eth0", pa["mac"], HOST_MAC, pa["ip"], node.address, "53", "honest-4")
    wait_until(lambda: udp_received(node, "honest-4"), "the honest frame sent after the forged ones")
    assert not udp_received(node, "mac-2") and not udp_received(node, "ip-3")


def neighbours(node, dev: str) -> str:
    return sh("ip", "neigh", "show", "dev", dev, netns=node.netns).stdout


def test_forged_arp_and_router_advertisements_are_dropped(lab):
    node, pods = lab
    pa, pb = pods["pa"], pods["pb"]
    # the frames work: from outside the pods the node takes both
    outside = node.attach("out", "10.99.1.50")
    send(outside, "arp", "eth0", "02:00:00:00:00:50", "10.99.1.77", node.address)
    wait_until(lambda: "10.99.1.77 " in neighbours(node, "eth0"), "an outsider's ARP learned")
    send(outside, "ra", "eth0", "02:00:00:00:00:50")
    wait_until(lambda: "default" in sh("ip", "-6", "route", netns=node.netns).stdout,
               "an outsider's router advertisement taken")
    sh("ip", "-6", "route", "flush", "default", netns=node.netns, check=False)

    arp_drops = counter(node, "arp", "input", "its own address")
    send(pa["ns"], "arp", "eth0", pa["mac"], pb["ip"], "169.254.1.1")   # claims pod b's address
    wait_until(lambda: counter(node, "arp", "input", "its own address") >= arp_drops + 3, "ARP counted")
    ra_drops = counter(node, "inet", "host_guard_pre", "router advertisements")
    send(pa["ns"], "ra", "eth0", pa["mac"])
    wait_until(lambda: counter(node, "inet", "host_guard_pre", "router advertisements") >= ra_drops + 3,
               "RA counted")
    send(pa["ns"], "arp", "eth0", pa["mac"], pa["ip"], "169.254.1.1")   # its own: answered
    wait_until(lambda: pa["ip"] + " " in neighbours(node, pa["host_if"]), "the honest ARP learned")
    assert pb["ip"] + " " not in neighbours(node, pa["host_if"]), neighbours(node, pa["host_if"])
    assert "default" not in sh("ip", "-6", "route", netns=node.netns).stdout


def test_socket_and_run_folder_are_root_only_and_no_password_leaks(lab):
    node, pods = lab
    run = node.root / "run"
    assert stat.S_IMODE(run.stat().st_mode) == 0o700
    assert stat.S_IMODE((node.root / "cni.sock").stat().st_mode) == 0o600
    for path in run.rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} is {oct(mode)}"
    holding = [p.name for p in run.rglob("*") if p.is_file() and PASSWORD in p.read_text(errors="replace")]
    # ExaBGP's configuration must hold it (and shows the test looks for the right text); its
    # output, pid and environment files must not
    assert holding == [CONFIG_NAME], holding
    # errors that name the secret or the peer: a missing secret, a refused password, a bad peer
    node.cli("bgp", "peer", "add", "tor2", "--peer-ip", "10.99.1.2", "--as", "65002",
             "--password-secret", "missing")
    outputs = [node.cli("bgp", "secret", "set", "x", "--password", PASSWORD + ";", check=False),
               node.cli("node", "status", node.name), node.cli("node", "status", "--json"),
               node.cli("bgp", "peer", "list"),
               node.cli("bgp", "peer", "add", "tor", "--peer-ip", "10.99.1.1", "--as", "65001",
                        "--password-secret", "tor-md5", check=False)]
    wait_until(lambda: "missing" in node.cli("node", "status", node.name).stdout,
               "the missing secret reported")
    texts = {f"cli {i}": p.stdout + p.stderr for i, p in enumerate(outputs)}
    texts["agent log"] = node.log_text()
    texts["metrics"] = node.metrics()
    texts["policy status"] = json.dumps(node.ds("get", key=keys.policy_status(node.name)))
    texts["status"] = node.cli("node", "status", node.name).stdout
    print(f"[info] looked for the BGP password in: {', '.join(texts)}")
    leaks = [where for where, text in texts.items() if PASSWORD in text]
    assert not leaks, f"the BGP password shows in {leaks}"
