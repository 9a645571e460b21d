"""Load: pods created and deleted in waves on the 4 nodes of a lab, 20 CNI calls in parallel,
through each node's shim and agent as a runtime calls them, while a UDP stream crosses the
racks. Nothing may be lost: no address handed out twice, no leak (`ipam check` clean, no
orphan veth, route or nft element), no probe lost. Agent RSS at start and end and the ADD
p50/p99 are printed (figures, never asserted). Short form: 2 waves of 100 pods; `make soak`:
6 waves of 200."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.e2e.labutil import agent_pid, pod_ip
from tests.faults.faultlab import (Stream, agent_rss_kib, all_leftovers, cni_nodes, drop_sandbox,
                                   duplicates, serving_fault_lab, form, info, ipam_check, percentile,
                                   workloads)
from tests.nslib import wait_for

pytestmark = pytest.mark.slow
PARALLEL = 20


@pytest.fixture(scope="module")
def lab():
    with serving_fault_lab("l") as name:
        yield name


def wave(nodes, pods: int) -> tuple[list[float], list[str], list]:
    """ADD `pods` sandboxes spread over the nodes, PARALLEL at once; check them; DEL them all.
    Returns the ADD durations, the addresses handed out, and the failures."""
    sandboxes = [(n, *n.sandbox()) for i in range(pods) for n in [nodes[i % len(nodes)]]]
    with ThreadPoolExecutor(PARALLEL) as ex:
        adds = list(ex.map(lambda s: (s, s[0].call("ADD", s[1], s[2])), sandboxes))
    failures = [(s[0].name, out) for s, (code, out, _) in adds if code != 0]
    ips = [out["ips"][0]["address"].split("/")[0] for _, (code, out, _) in adds if code == 0]
    held = [w["ip"] for w in workloads(nodes[0].lab)]
    with ThreadPoolExecutor(PARALLEL) as ex:
        dels = list(ex.map(lambda s: (s, s[0].call("DEL", s[1], s[2])), sandboxes))
    failures += [(s[0].name, out) for s, (code, out, _) in dels if code != 0]
    for s in sandboxes:
        drop_sandbox(s[2])
    return [took for _, (code, _, took) in adds if code == 0], ips + held, failures


def test_waves_of_pods_leave_no_duplicate_and_no_leak(lab):
    waves, pods = form(2, 6), form(100, 200)
    nodes = cni_nodes(lab)
    assert len(nodes) == 4
    agents = {n.name: agent_pid(lab, n.name) for n in nodes}
    rss_start = {n: agent_rss_kib(p) for n, p in agents.items()}
    stream = Stream(lab, "default/p-r1n1", pod_ip(lab, "default/p-r2n1"), interval=0.02)
    durations: list[float] = []
    rss_waves: list[int] = []   # the largest agent RSS after each wave: does it level off?
    t0 = time.monotonic()
    try:
        for w in range(waves):
            took, addresses, failures = wave(nodes, pods)
            assert failures == [], failures[:5]
            # the wave's own ADDs plus what the datastore held at its peak (the two serving pods)
            assert duplicates(addresses[:len(took)]) == [], f"wave {w}: an address handed out twice"
            assert duplicates(addresses[len(took):]) == [], f"wave {w}: a workload record shared"
            durations += took
            rss_waves.append(max(agent_rss_kib(p) for p in agents.values()))
    finally:
        result = stream.finish()
    elapsed = time.monotonic() - t0
    rss_end = {n: agent_rss_kib(p) for n, p in agents.items()}
    info(f"load: {waves} waves of {pods} pods on 4 nodes, {PARALLEL} in parallel, "
         f"{waves * pods * 2} CNI calls in {elapsed:.0f}s; "
         f"ADD p50 {percentile(durations, 0.5) * 1000:.0f} ms, "
         f"p99 {percentile(durations, 0.99) * 1000:.0f} ms; agent RSS KiB start {rss_start} end {rss_end} "
         f"(largest after each wave {rss_waves}); "
         f"stream lost {result['lost_count']}/{result['sent']}")
    assert {n.name: agent_pid(lab, n.name) for n in nodes} == agents, "an agent restarted"
    assert result["lost_count"] == 0, result["lost_runs"]
    report = ipam_check(lab)
    assert report["findings"] == [] and report["in_use"] == 2, report
    wait_for(lambda: not all_leftovers(lab), "no orphan veth, route or nft element",
             timeout=30, interval=0.5)
