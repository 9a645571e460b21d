"""The agent's /healthz, /readyz and /metrics in a real one-node lab, asked from inside the
node's namespace (the default address 127.0.0.1:9099 is node-local): counters move by exactly
what the test did through the real shim, and readiness follows etcd (SIGSTOP, SIGCONT)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from calico_lite.health import get_in_netns, readyz
from tests.e2e.labutil import lab_name, run_dir, running_lab, status
from tests.nslib import remove_netns_with_prefix, unique_prefix, wait_for
from tests.runtime_support import CniRuntime, lab_node

pytestmark = pytest.mark.slow
PODS = 9


@pytest.fixture(scope="module")
def node():
    with running_lab(lab_name("hl"), "--racks", "1", "--nodes-per-rack", "1") as name:
        yield lab_node(name)


@pytest.fixture
def pod_netns():
    """PODS fresh pod namespaces, removed afterwards."""
    prefix = unique_prefix("hl")
    try:
        names = [f"{prefix}-p{i}" for i in range(PODS)]
        for n in names:
            subprocess.run(["ip", "netns", "add", n], check=True)
        yield [f"/var/run/netns/{n}" for n in names]
    finally:
        remove_netns_with_prefix(prefix)


def scrape(netns: str) -> dict[tuple, float]:
    """{(sample name, sorted label items): value} of the node agent's /metrics."""
    code, text = get_in_netns(netns, "/metrics")
    assert code == 200, text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def etcd_pid(lab: str) -> int:
    return json.loads((run_dir(lab) / "state.json").read_text())["pids"]["etcd"]


def test_ready_and_live_once_the_node_is_up(node):
    ready = wait_for(lambda: (r := readyz(node.netns))["ready"] and r, "node ready", timeout=60)
    assert ready["status"] == 200
    assert ready["checks"] == {"datastore": "ok", "bgp": "ok", "policy": "ok", "cni": "ok"}
    assert get_in_netns(node.netns, "/healthz") == (200, "ok\n")


def test_bgp_sessions_in_metrics_match_the_peers(node):
    wait_for(lambda: readyz(node.netns)["ready"], "node ready", timeout=60)
    m = scrape(node.netns)
    peers = next(n["bgp"] for n in status(node.lab)["nodes"] if n["name"] == node.name)
    assert peers, "a lab node peers with its top-of-rack router"
    sessions = {labels[0][1]: v for (name, labels), v in m.items() if name == "calico_lite_bgp_sessions"}
    assert sum(sessions.values()) == len(peers)
    assert sessions["Established"] >= 1
    for p in peers:
        assert (("calico_lite_bgp_prefixes_received", (("peer", p["peer"]),))) in m


def test_cni_counters_move_by_exactly_what_was_done(node, pod_netns):
    rt = CniRuntime(node.cni_bin_dir, node.conflist, exec_netns=node.netns)
    before = scrape(node.netns)
    ids = [uuid.uuid4().hex for _ in pod_netns]
    for cid, ns in zip(ids, pod_netns):
        rt.add(cid, ns, f"IgnoreUnknown=1;K8S_POD_NAMESPACE=hl;K8S_POD_NAME=p-{cid[:6]}")
    # one ADD that fails: its namespace does not exist (the plugin never creates one)
    plugin = rt.netconf["plugins"][0]
    failed = rt.exec_plugin(plugin, "ADD", uuid.uuid4().hex, f"{pod_netns[0]}-missing",
                            "IgnoreUnknown=1", rt.plugin_config(plugin, None, {}))
    assert failed.code != 0 and "does not exist" in failed.stdout, failed
    # the IPAM gauge follows the agent's datastore cache: wait for it, then compare exactly
    after_add = wait_for(lambda: (m := scrape(node.netns)) and value(
        m, "calico_lite_ipam_addresses_in_use") == value(
        before, "calico_lite_ipam_addresses_in_use") + PODS and m, "IPAM gauge up by the pods")
    for cid, ns in zip(ids, pod_netns):
        rt.delete(cid, ns)
    after = wait_for(lambda: (m := scrape(node.netns)) and value(
        m, "calico_lite_ipam_addresses_in_use") == value(
        before, "calico_lite_ipam_addresses_in_use") and m, "IPAM gauge back down")

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)
    assert delta("calico_lite_cni_requests_total", verb="ADD", result="ok") == PODS
    assert delta("calico_lite_cni_requests_total", verb="ADD", result="error") == 1
    assert delta("calico_lite_cni_requests_total", verb="DEL", result="ok") == PODS
    assert delta("calico_lite_cni_requests_total", verb="DEL", result="error") == 0
    assert delta("calico_lite_cni_request_seconds_count", verb="ADD") == PODS + 1
    assert delta("calico_lite_cni_request_seconds_count", verb="DEL") == PODS
    assert delta("calico_lite_cni_request_seconds_bucket", verb="ADD", le="+Inf") == PODS + 1
    assert delta("calico_lite_route_programming_errors_total") == 0
    assert value(after_add, "calico_lite_ipam_blocks_in_use") >= 1
    assert value(after_add, "calico_lite_cni_requests_total", verb="ADD", result="ok") == (
        value(before, "calico_lite_cni_requests_total", verb="ADD", result="ok") + PODS)


def test_readiness_names_the_datastore_while_etcd_is_stopped(node, pod_netns):
    wait_for(lambda: readyz(node.netns)["ready"], "node ready", timeout=60)
    rt = CniRuntime(node.cni_bin_dir, node.conflist, exec_netns=node.netns)
    plugin = rt.netconf["plugins"][0]
    before = scrape(node.netns)
    pid = etcd_pid(node.lab)
    os.kill(pid, signal.SIGSTOP)
    try:
        r = wait_for(lambda: (r := readyz(node.netns))["status"] == 503 and r,
                     "not ready while etcd is stopped", timeout=30)
        assert r["checks"]["datastore"].endswith("unreachable (no answer in 2s)"), r
        assert r["checks"]["cni"] == "ok"
        assert get_in_netns(node.netns, "/healthz")[0] == 200   # alive, only not ready
        # an ADD now fails (try again later) and the etcd failure is counted
        out = rt.exec_plugin(plugin, "ADD", uuid.uuid4().hex, pod_netns[0], "IgnoreUnknown=1",
                             rt.plugin_config(plugin, None, {}))
        assert out.code != 0 and '"code": 11' in out.stdout, out
        during = scrape(node.netns)
    finally:
        os.kill(pid, signal.SIGCONT)
    r = wait_for(lambda: (r := readyz(node.netns))["ready"] and r, "ready again", timeout=60)
    assert r["checks"]["datastore"] == "ok"
    assert (value(during, "calico_lite_cni_requests_total", verb="ADD", result="error")
            - value(before, "calico_lite_cni_requests_total", verb="ADD", result="error")) == 1

    def etcd_errors(m: dict) -> float:
        return sum(v for (name, _), v in m.items() if name == "calico_lite_etcd_errors_total")
    assert etcd_errors(during) > etcd_errors(before)
