"""The faults campaign in a lab (2 racks of 2 nodes, a serving pod on each node, a policy):
etcd stopped, agents SIGKILLed mid-burst, every agent restarted in turn, a ToR restarted, an
uplink cut, ExaBGP killed. Each test runs a numbered UDP stream between racks throughout and
asserts what was lost; recovery times are printed beside the configured hold and
graceful-restart times, never asserted as timings. Short form in CI; `make soak`
(CALICO_LITE_SOAK=1) runs longer outages and more rounds."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from calico_lite import keys
from calico_lite.lab import agents
from calico_lite.lab.frr import FrrRouter
from calico_lite.lab.lab import Lab
from calico_lite.lab.probe import Endpoint, probe_all, probe_from
from plugin.link import host_ifname
from tests.conftest import lab_cli
from tests.e2e.labutil import agent_pid, exabgp_pid, pod_ip, vtysh
from tests.faults.faultlab import (EtcdProcess, Stream, all_leftovers, cni_nodes, drop_sandbox,
                                   agents_synced, duplicates, etcd_get_prefix, fault_lab, form, info, ipam_check,
                                   ipam_gc, workloads)
from tests.nslib import remove_netns_with_prefix, wait_for

pytestmark = pytest.mark.slow
NODES = ("r1n1", "r1n2", "r2n1", "r2n2")
POLICY = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
          "metadata": {"name": "r2n2-from-r1n1", "namespace": "default"},
          "spec": {"podSelector": {"matchLabels": {"app": "r2n2"}}, "policyTypes": ["Ingress"],
                   "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "r1n1"}}}]}]}}


def kubectl_apply(lab: str, doc: dict, tmp: Path) -> None:
    path = tmp / f"{doc['metadata']['name']}.json"
    path.write_text(json.dumps(doc))
    lab_cli("lab", "kubectl", "--name", lab, "--", "apply", "-f", str(path))
    lab_cli("lab", "wait", "--name", lab, "--policy")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with fault_lab("f") as name:
        try:
            for node in NODES:
                lab_cli("lab", "pod", "add", f"default/p-{node}", "--node", node, "--name", name,
                        "--label", f"app={node}", "--serve", "udp:80,tcp:80")
            lab_cli("lab", "wait", "--name", name)
            kubectl_apply(name, POLICY, tmp_path_factory.mktemp("policy"))
            yield name
        finally:
            remove_netns_with_prefix(f"{name}-s-")


def endpoints(lab: str) -> list[Endpoint]:
    plan = Lab(lab).plan
    return [Endpoint("default", f"p-{n}", pod_ip(lab, f"default/p-{n}"),
                     f"/var/run/netns/{plan.pod_netns('default', f'p-{n}')}") for n in NODES]


def matrix(eps: list[Endpoint]) -> dict[tuple[str, str], bool]:
    return {(r["from"], r["to"]): r["connected"] for r in probe_all(eps, 80, "tcp")}


def expected(eps: list[Endpoint], extra_allowed: tuple[str, ...] = ()) -> dict[tuple[str, str], bool]:
    """Everything connects but to p-r2n2, which takes only p-r1n1 (and extra_allowed)."""
    return {(a.ref, b.ref): b.pod != "p-r2n2" or a.pod in ("p-r1n1", *extra_allowed)
            for a in eps for b in eps if a != b}


def kube_sync_pid(lab: str) -> int | None:
    return next((p for k, p in Lab(lab).store.load().pids.items() if k.startswith("kube-sync:")), None)


def node_updated(lab: str, node: str) -> float:
    return json.loads(lab_cli("node", "status", node, "--lab", lab, "--json").stdout)[0]["updated"]


def stream(lab: str, src: str = "r1n1", dst: str = "r2n1", interval: float = 0.01) -> Stream:
    return Stream(lab, f"default/p-{src}", pod_ip(lab, f"default/p-{dst}"), interval)


def changes_go_through(lab: str, eps: list[Endpoint], tmp: Path) -> None:
    """After the outage: a new policy (API -> kube-sync -> etcd -> agents) is enforced, and a
    new pod (node component -> CNI -> IPAM -> BGP) is reachable from the other rack."""
    allow = json.loads(json.dumps(POLICY))
    allow["metadata"]["name"] = "r2n2-from-r1n2"
    allow["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["app"] = "r1n2"
    kubectl_apply(lab, allow, tmp)
    assert matrix(eps) == expected(eps, ("p-r1n2",))
    lab_cli("lab", "kubectl", "--name", lab, "--", "delete", "networkpolicy", "-n", "default",
            "r2n2-from-r1n2")
    lab_cli("lab", "wait", "--name", lab, "--policy")
    lab_cli("lab", "pod", "add", "default/after-etcd", "--node", "r2n1", "--name", lab, "--serve", "tcp:80")
    plan = Lab(lab).plan
    src = f"/var/run/netns/{plan.pod_netns('default', 'p-r1n1')}"
    wait_for(lambda: probe_from(src, pod_ip(lab, "default/after-etcd"), 80, "tcp"),
             "the new pod reachable from the other rack", timeout=30, interval=0.2)
    lab_cli("lab", "pod", "del", "default/after-etcd", "--name", lab)


# --- 1. etcd stopped, then started again ------------------------------------------------------
def test_etcd_outage_keeps_pods_and_policies_and_adds_fail_fast(lab, tmp_path):
    outage = form(10.0, 30.0)
    eps = endpoints(lab)
    assert matrix(eps) == expected(eps)
    pids = {n: agent_pid(lab, n) for n in NODES}
    ks = kube_sync_pid(lab)
    node = next(n for n in cni_nodes(lab) if n.name == "r1n2")
    etcd = EtcdProcess(lab)
    s = stream(lab)
    try:
        time.sleep(0.3)
        etcd.stop()
        t0 = time.monotonic()
        during = matrix(eps)
        adds = [(*node.sandbox(),)]
        adds[0] += node.call("ADD", *adds[0])
        time.sleep(max(0.0, outage - 1 - (time.monotonic() - t0)))
        late = matrix(eps)
        adds.append((*node.sandbox(),))      # a second one late in the outage
        adds[1] += node.call("ADD", *adds[1])
        etcd.start()
        back = time.monotonic()
        # a barrier written in etcd: every agent's watch must see it and its answer reach etcd
        agents_synced(lab)
        synced = time.monotonic() - back
        # through the API server and kube-sync as well (each reconnects to etcd on its own)
        lab_cli("lab", "wait", "--name", lab, "--policy", "--timeout", "120")
        reconnect = time.monotonic() - back
        time.sleep(0.5)
    finally:
        result = s.finish()
        if etcd.argv and not etcd.running():   # the next tests need it
            etcd.start()
    info(f"etcd stopped {outage:.0f}s: stream lost {result['lost_count']}/{result['sent']}; "
         f"ADDs during the outage answered codes {[a[3].get('code') for a in adds]} in "
         f"{[round(a[4], 2) for a in adds]}s; after etcd's restart every agent answered a "
         f"barrier in {synced:.1f}s, the API server and kube-sync in {reconnect:.1f}s")
    assert result["sent"] > outage * 50 and result["lost_count"] == 0, result["lost_runs"]
    assert during == expected(eps) and late == expected(eps), "a policy or a path changed"
    links = subprocess.run(["ip", "-n", node.netns, "-o", "link"], capture_output=True, text=True).stdout
    handles, records = etcd_get_prefix(lab, keys.HANDLES), workloads(lab)
    for cid, netns, code, out, _ in adds:
        assert code != 0 and out.get("code") == 11 and "datastore" in out["msg"], out
        drop_sandbox(netns)
        # it held nothing: no handle, no workload, no veth
        assert not [k for k in handles if cid in k]
        assert not [w for w in records if w["container_id"] == cid]
        assert host_ifname(cid, "eth0") not in links
    # agents and kube-sync resync without a restart: a policy change and a new pod go through
    assert {n: agent_pid(lab, n) for n in NODES} == pids, "an agent was restarted"
    assert kube_sync_pid(lab) == ks, "kube-sync was restarted"
    changes_go_through(lab, eps, tmp_path)
    report = ipam_check(lab)
    assert report["findings"] == [], report


# --- 2. an agent SIGKILLed in the middle of ADDs and DELs, several times --------------------
def burst(node, before: list[tuple[str, str]], adds: int, kill_after: float):
    """ADDs of new sandboxes and DELs of `before` at once, 8 in parallel; the node's agent is
    SIGKILLed after kill_after seconds. Returns (add results, del results)."""
    fresh = [node.sandbox() for _ in range(adds)]
    jobs = [("ADD", c, n) for c, n in fresh] + [("DEL", c, n) for c, n in before]
    random.shuffle(jobs)
    old = agent_pid(node.lab, node.name)
    with ThreadPoolExecutor(8) as ex:
        futures = [(verb, c, n, ex.submit(node.call, verb, c, n)) for verb, c, n in jobs]
        time.sleep(kill_after)
        os.kill(old, signal.SIGKILL)
        done = [(verb, c, n, *f.result()) for verb, c, n, f in futures]
    agents.wait_new_agent(Lab(node.lab).store, node.name, old, timeout=60)
    # the killed agent's socket file stays until the new one binds: wait for an answer
    wait_for(lambda: node.call("STATUS", "", "")[0] == 0, "the new agent serves CNI",
             timeout=60, interval=0.2)
    return [d for d in done if d[0] == "ADD"], [d for d in done if d[0] == "DEL"]


def test_agent_killed_mid_burst_loses_and_leaks_nothing(lab):
    rounds = form(2, 6)
    node = next(n for n in cni_nodes(lab) if n.name == "r1n2")
    s = stream(lab)
    killed_calls = gc_released = 0
    try:
        for r in range(rounds):
            before = [node.sandbox() for _ in range(6)]
            for cid, netns in before:
                code, out, _ = node.call("ADD", cid, netns)
                assert code == 0, out
            adds, dels = burst(node, before, adds=12, kill_after=0.1 + 0.1 * (r % 3))
            bad = [d for d in adds + dels if d[3] != 0 and d[4].get("code") != 11]
            assert not bad, f"a failure other than try-again: {bad[:3]}"
            killed_calls += sum(1 for d in adds + dels if d[3] != 0)
            for _, _, netns, code, _, _ in adds:
                if code != 0:
                    drop_sandbox(netns)        # the runtime gives up the sandbox
            for _, cid, netns, code, _, _ in dels:
                if code != 0:                  # the runtime retries a failed DEL
                    again = node.call("DEL", cid, netns)
                    assert again[0] == 0, again
                drop_sandbox(netns)
            live = {cid: out["ips"][0]["address"].split("/")[0]
                    for _, cid, _, code, out, _ in adds if code == 0}
            report = ipam_check(lab)
            kinds = {f["kind"] for f in report["findings"]}
            assert kinds <= {"leaked-handle", "stale-workload"}, report
            if report["findings"]:
                ipam_gc(lab)
                gc_released += len(report["findings"])
            report = ipam_check(lab)
            assert report["findings"] == [], report
            records = {w["container_id"]: w["ip"] for w in workloads(lab)}
            assert {c: records.get(c) for c in live} == live, "gc touched a live pod"
            assert duplicates(list(records.values())) == []
            wait_for(lambda: not all_leftovers(lab), "no orphan veth, route or nft element",
                     timeout=30, interval=0.5)
            for cid in live:   # the pods of this round go, as pods do
                gone = node.call("DEL", cid, "")
                assert gone[0] == 0, gone
            remove_netns_with_prefix(f"{lab}-s-")
    finally:
        result = s.finish()
    info(f"agent of r1n2 SIGKILLed {rounds}x mid-burst (12 ADDs + 6 DELs, 8 in parallel): "
         f"{killed_calls} calls answered try-again, ipam gc released {gc_released}, "
         f"ipam check clean, no orphan; cross-rack stream lost {result['lost_count']}")
    assert result["lost_count"] == 0, result["lost_runs"]
    assert ipam_check(lab)["findings"] == []
    assert all_leftovers(lab) == {}


# --- 4. every agent restarted in turn under a continuous stream --------------------------------
def test_every_agent_restarted_in_turn_loses_no_packet(lab):
    rounds = form(1, 3)
    exabgp = {n: exabgp_pid(lab, n) for n in NODES}
    streams = [stream(lab, "r1n1", "r2n2"), stream(lab, "r2n1", "r1n2")]
    try:
        time.sleep(0.5)
        for _ in range(rounds):
            for node in NODES:
                old, since = agent_pid(lab, node), time.time()
                # `lab node restart`, with room for the node component's back-off: the agent
                # that test_agent_killed_mid_burst killed again and again is in CrashLoopBackOff
                # (up to 30 s, as a kubelet's), during which its routes and ExaBGP stay
                os.kill(old, signal.SIGTERM)
                agents.wait_new_agent(Lab(lab).store, node, old, timeout=90)
                # the new agent has synced: it published its status (as the old one left it)
                wait_for(lambda: node_updated(lab, node) > since and
                         Lab(lab).node_paths(node).socket.exists(), f"{node} agent back",
                         timeout=60, interval=0.2)
        time.sleep(1.0)
    finally:
        results = [s.finish() for s in streams]
    info(f"{rounds * len(NODES)} agent restarts in turn: streams r1n1->r2n2 and r2n1->r1n2 "
         f"lost {[r['lost_count'] for r in results]} of {[r['sent'] for r in results]}")
    assert all(r["sent"] > 300 for r in results)
    assert [r["lost_count"] for r in results] == [0, 0], [r["lost_runs"] for r in results]
    assert {n: exabgp_pid(lab, n) for n in NODES} == exabgp, "ExaBGP was restarted"


# --- 3. a ToR restarted, an uplink cut and restored, ExaBGP killed ----------------------------
def recovery(src_netns: str, dst_ip: str, since: float, limit: float) -> float:
    """Seconds from `since` until a UDP echo from src to dst comes back."""
    wait_for(lambda: run_probe(src_netns, dst_ip), f"traffic to {dst_ip} again", timeout=limit,
             interval=0.05)
    return time.monotonic() - since


def run_probe(netns: str, ip: str) -> bool:
    from calico_lite.lab.probe import reachable
    from plugin.netns import run_in_netns
    return run_in_netns(netns, lambda: reachable(ip, 80, "udp", timeout=0.2))


def learned_routes(lab: str, node: str) -> dict[str, str]:
    """The node's routes from BGP (proto 88): prefix -> next hop."""
    out = subprocess.run(["ip", "-n", f"{lab}-{node}", "-j", "route", "show", "proto", "88"],
                         capture_output=True, text=True).stdout
    return {r["dst"]: r.get("gateway", "ecmp") for r in json.loads(out or "[]")}


def restart_tor(lab: str, tor: str) -> None:
    st = Lab(lab)
    plan = st.plan
    netns = next(t.netns for t in plan.tors if t.name == tor)
    rundir = st.store.dir / "frr" / tor
    router = FrrRouter(netns, rundir, (rundir / "bgpd.conf").read_text())
    router.stop()
    router.start()
    for daemon, pid in router.pids().items():
        st.store.add_pid(f"frr:{tor}:{daemon}", pid)


def test_routing_faults_recover_within_hold_and_restart_times(lab):
    hold, gr = 3, 10
    lab_cli("bgp", "config", "set", "--hold-time", str(hold), "--graceful-restart", str(gr), "--lab", lab)
    wait_for(lambda: f"Hold time is {hold}" in vtysh(lab, "tor2", "show bgp neighbors 10.99.2.11"),
             "the new hold time negotiated", timeout=60, interval=0.5)
    plan = Lab(lab).plan
    src = f"/var/run/netns/{plan.pod_netns('default', 'p-r1n1')}"
    dst = pod_ip(lab, "default/p-r2n1")
    limit = hold + gr + 60
    assert run_probe(src, dst)
    measured = {}

    routes = {n: learned_routes(lab, n) for n in ("r1n1", "r2n1")}
    assert all(routes.values()), routes
    t0 = time.monotonic()
    restart_tor(lab, "tor1")
    measured["ToR tor1 restarted (traffic back)"] = recovery(src, dst, t0, limit)
    wait_for(lambda: learned_routes(lab, "r1n1") == routes["r1n1"], "r1n1's routes back", timeout=limit)
    measured["ToR tor1 restarted (r1n1's BGP routes back)"] = time.monotonic() - t0

    r2n1 = f"{lab}-r2n1"
    defaults = json.loads(subprocess.run(["ip", "-n", r2n1, "-j", "route", "show", "default"],
                                         capture_output=True, text=True, check=True).stdout)
    uplink = defaults[0]["dev"]
    cut = hold + 2
    subprocess.run(["ip", "-n", r2n1, "link", "set", uplink, "down"], check=True)
    time.sleep(cut)
    subprocess.run(["ip", "-n", r2n1, "link", "set", uplink, "up"], check=True)
    t0 = time.monotonic()
    for r in defaults:   # what the node's network configuration does when its link comes back
        subprocess.run(["ip", "-n", r2n1, "route", "replace", "default", "via", r["gateway"],
                        "dev", r["dev"]], check=True)
    measured[f"uplink of r2n1 cut {cut}s, restored (traffic back)"] = recovery(src, dst, t0, limit)
    # the kernel dropped the routes through the downed link; BGP brings them back
    wait_for(lambda: learned_routes(lab, "r2n1") == routes["r2n1"], "r2n1's routes back", timeout=limit)
    measured[f"uplink of r2n1 cut {cut}s, restored (its BGP routes back)"] = time.monotonic() - t0

    old = exabgp_pid(lab, "r2n1")
    s = stream(lab, interval=0.02)
    try:
        time.sleep(0.5)
        os.kill(old, signal.SIGKILL)
        t0 = time.monotonic()
        wait_for(lambda: exabgp_pid(lab, "r2n1") not in (None, old), "a new ExaBGP on r2n1", timeout=limit)
        wait_for(lambda: "Established" in vtysh(lab, "tor2", "show bgp neighbors 10.99.2.11"),
                 "r2n1's session back", timeout=limit, interval=0.2)
        measured["ExaBGP of r2n1 killed (session back)"] = time.monotonic() - t0
        time.sleep(1.0)
    finally:
        result = s.finish()
    measured["ExaBGP of r2n1 killed (longest traffic outage)"] = result["longest_outage_s"]
    wait_for(lambda: learned_routes(lab, "r2n1") == routes["r2n1"], "r2n1's routes after ExaBGP's restart",
             timeout=limit)
    for what, took in measured.items():
        info(f"{what}: after {took:.2f}s (hold time {hold}s, graceful restart {gr}s)")
    assert run_probe(src, dst)
    rows = json.loads(lab_cli("lab", "probe", "--name", lab, "--json").stdout)
    assert [r for r in rows if not r["connected"] and r["to"] != "default/p-r2n2"] == []
