"""serve_health as kube-sync (or any process) uses it: its own registry, checks and heartbeats,
served over real HTTP inside a namespace made by the test (never the machine's own)."""
from __future__ import annotations

import subprocess

import pytest
from prometheus_client import Counter

from calico_lite.health import Check, Heartbeats, get_in_netns, readyz, serve_health
from calico_lite.metrics import new_registry
from plugin.netns import run_in_netns
from tests.nslib import remove_netns_with_prefix, unique_prefix

ADDR = "127.0.0.1:9099"


@pytest.fixture
def netns():
    prefix = unique_prefix("hs")
    name = f"{prefix}-ks"
    try:
        subprocess.run(["ip", "netns", "add", name], check=True)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield f"/var/run/netns/{name}"
    finally:
        remove_netns_with_prefix(prefix)


def test_kube_sync_style_server_answers_its_own_checks(netns):
    registry = new_registry()
    synced = Counter("calico_lite_kube_sync_writes", "records written", registry=registry)
    now = [0.0]
    beats = Heartbeats(timeout=60, clock=lambda: now[0])
    state = {"api": ""}
    checks = [Check("apiserver", lambda: state["api"]), Check("datastore", lambda: "")]
    server = run_in_netns(netns, lambda: serve_health(ADDR, registry, checks, beats))
    try:
        beats.beat("watch-pods")
        beats.beat("watch-policies")
        synced.inc(3)
        assert get_in_netns(netns, "/healthz") == (200, "ok\n")
        assert get_in_netns(netns, "/readyz") == (200, "apiserver: ok\ndatastore: ok\n")
        code, text = get_in_netns(netns, "/metrics")
        assert code == 200 and "calico_lite_kube_sync_writes_total 3.0" in text

        state["api"] = "API server https://10.96.0.1 unreachable"
        assert readyz(netns, ADDR) == {"ready": False, "status": 503, "checks": {
            "apiserver": "API server https://10.96.0.1 unreachable", "datastore": "ok"}}

        now[0] = 61.0
        beats.beat("watch-pods")
        assert get_in_netns(netns, "/healthz") == (503, "watch-policies: no heartbeat for 61s\n")
        assert get_in_netns(netns, "/nothing")[0] == 404
    finally:
        server.close()


def test_readyz_of_a_node_without_an_agent_says_so(netns):
    r = readyz(netns, ADDR, timeout=2)
    assert r["ready"] is False and r["status"] == 0
    assert r["checks"]["agent"].startswith(f"no answer on {ADDR}: ")
