"""Many ADDs at once, on one node and across nodes, through the real shim and agents; and an
agent killed with -9 in the middle of ADDs leaves only what `ipam check` explains and
`ipam gc` fixes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import lab_cli
from tests.e2e.labutil import lab_name, run_dir, running_lab, status
from tests.nslib import remove_netns_with_prefix


class Node:
    def __init__(self, lab: str, info: dict):
        self.lab, self.name, self.netns = lab, info["name"], info["netns"]
        self.binary = os.path.join(info["cni_bin_dir"], "calico-lite")
        conflist = json.load(open(os.path.join(info["cni_conf_dir"], "10-calico-lite.conflist")))
        self.conf = json.dumps({**conflist["plugins"][0], "cniVersion": "1.1.0", "name": conflist["name"]})

    def call(self, verb: str, cid: str, netns: str) -> tuple[int, dict]:
        env = {"CNI_COMMAND": verb, "CNI_CONTAINERID": cid, "CNI_NETNS": netns, "CNI_IFNAME": "eth0",
               "CNI_PATH": "/opt/cni/bin", "CNI_ARGS": f"K8S_POD_NAMESPACE=load;K8S_POD_NAME={cid[:8]}"}
        p = subprocess.run([self.binary], input=self.conf, env=env, capture_output=True, text=True,
                           timeout=120)
        return p.returncode, (json.loads(p.stdout) if p.stdout.strip() else {})

    def add_pod(self) -> tuple[str, str, int, dict]:
        cid = uuid.uuid4().hex
        name = f"{self.lab}-l-{cid[:8]}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        code, out = self.call("ADD", cid, f"/var/run/netns/{name}")
        return cid, f"/var/run/netns/{name}", code, out


@pytest.fixture(scope="module")
def lab():
    name = lab_name("cc")
    with running_lab(name):
        try:
            yield name
        finally:
            remove_netns_with_prefix(f"{name}-l-")


def ipam_check(lab: str) -> tuple[int, dict]:
    p = lab_cli("ipam", "check", "--lab", lab, "--json", "--grace", "0", check=False)
    return p.returncode, json.loads(p.stdout)


def test_parallel_adds_on_every_node_never_share_an_address(lab):
    nodes = [Node(lab, n) for n in status(lab)["nodes"]]
    jobs = [n for n in nodes for _ in range(12)]
    with ThreadPoolExecutor(16) as ex:
        results = list(ex.map(lambda n: (n, *n.add_pod()), jobs))
    failed = [(n.name, out) for n, _, _, code, out in results if code != 0]
    assert not failed, failed
    ips = [out["ips"][0]["address"] for *_, out in results]
    assert len(ips) == 48 and len(set(ips)) == 48
    code, report = ipam_check(lab)
    assert code == 0 and report["findings"] == [] and report["in_use"] >= 48
    with ThreadPoolExecutor(16) as ex:
        dels = list(ex.map(lambda r: r[0].call("DEL", r[1], r[2])[0], results))
    assert dels == [0] * 48
    shown = json.loads(lab_cli("ipam", "show", "--lab", lab, "--json").stdout)
    assert sum(b["used"] for b in shown["blocks"]) == 0
    for n in nodes:
        links = subprocess.run(["ip", "-n", n.netns, "-o", "link"], capture_output=True, text=True).stdout
        assert "cali" not in links


def test_kill_9_mid_add_leaves_only_what_check_explains_and_gc_fixes(lab):
    node = Node(lab, status(lab)["nodes"][0])
    agent = json.loads((run_dir(lab) / "state.json").read_text())["pids"][f"agent:{node.name}"]
    with ThreadPoolExecutor(8) as ex:
        futures = [ex.submit(node.add_pod) for _ in range(24)]
        time.sleep(0.15)  # let some ADDs be in flight
        os.kill(agent, signal.SIGKILL)
        results = [f.result() for f in futures]
    failed = [r for r in results if r[2] != 0]
    assert failed and all(out.get("code") == 11 for _, _, _, out in failed), failed[:3]
    for _, netns, _, _ in failed:  # what a runtime does after a failed ADD: drop the sandbox
        subprocess.run(["ip", "netns", "delete", os.path.basename(netns)], check=False)
    code, report = ipam_check(lab)
    kinds = {f["kind"] for f in report["findings"]}
    assert kinds <= {"leaked-handle", "stale-workload"}, report  # nothing unexplained
    done = lab_cli("ipam", "gc", "--lab", lab, "--grace", "0").stdout
    assert f"{len(report['findings'])} released" in done
    code, report = ipam_check(lab)
    assert code == 0 and report["findings"] == [], report
    ok = [r for r in results if r[2] == 0]
    assert report["in_use"] == len(ok)  # every pod that got an address still has it


def test_adds_and_dels_interleaved_on_one_node_never_share_an_address(lab):
    """The one-transaction IPAM path under churn: each wave's ADDs run while the previous
    wave's DELs release addresses in the same block (CAS on the block the agent remembers)."""
    node = Node(lab, status(lab)["nodes"][0])
    used_before, links_before = ipam_used_and_links(lab, node)
    previous: list = []
    with ThreadPoolExecutor(24) as ex:
        for _ in range(4):
            adds = [ex.submit(node.add_pod) for _ in range(12)]
            dels = [ex.submit(node.call, "DEL", cid, netns) for cid, netns, _, _ in previous]
            current = [f.result() for f in adds]
            assert [f.result()[0] for f in dels] == [0] * len(dels)
            assert [r[2] for r in current] == [0] * 12, [r[3] for r in current if r[2]]
            ips = {out["ips"][0]["address"] for *_, out in current}
            assert len(ips) == 12
            previous = current
        assert [f.result()[0] for f in
                [ex.submit(node.call, "DEL", cid, netns) for cid, netns, _, _ in previous]] == [0] * 12
    code, report = ipam_check(lab)
    assert code == 0 and report["findings"] == [], report
    assert ipam_used_and_links(lab, node) == (used_before, links_before)  # earlier tests' pods


def ipam_used_and_links(lab: str, node: Node) -> tuple[int, set[str]]:
    shown = json.loads(lab_cli("ipam", "show", "--lab", lab, "--json").stdout)
    out = subprocess.run(["ip", "-n", node.netns, "-o", "link"], capture_output=True, text=True).stdout
    return (sum(b["used"] for b in shown["blocks"]),
            {w.rstrip(":").split("@")[0] for w in out.split() if w.startswith("cali")})
