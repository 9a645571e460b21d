"""Health and metrics, the pure parts: readiness from inputs, liveness from heartbeats, the
metrics the agent's observers record (read back from the process's own registry)."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
from prometheus_client import generate_latest

from bgp.model import Failure
from calico_lite import keys
from calico_lite.agent_health import bgp_reason, policy_reason, unix_listening
from calico_lite.health import (Check, Heartbeats, liveness, parse_body, parse_listen, render,
                                run_checks)
from calico_lite.metrics import AgentMetrics, NodeStateCollector, ipam_usage


@dataclass
class Peer:   # the fields of bgp.speaker.PeerState that health and metrics read
    address: str
    state: str
    received: int = 0
    sent: int = 0
    reason: str = ""


def test_parse_listen():
    assert parse_listen("127.0.0.1:9099") == ("127.0.0.1", 9099)
    assert parse_listen("[::1]:9099") == ("::1", 9099)
    assert parse_listen("off") is None
    for bad in ("9099", "127.0.0.1", "host:port", ":9099"):
        with pytest.raises(ValueError):
            parse_listen(bad)


def test_bgp_ready_with_no_peer_or_one_established():
    assert bgp_reason([]) == ""
    assert bgp_reason([Peer("10.0.0.1", "Idle"), Peer("10.0.0.2", "Established")]) == ""
    reason = bgp_reason([Peer("10.0.0.1", "Idle", reason="hold timer expired"),
                         Peer("10.0.0.2", "Connect")])
    assert reason == ("no BGP session Established: 10.0.0.1 Idle (hold timer expired), "
                      "10.0.0.2 Connect")


def test_policy_ready_once_applied_and_not_failing():
    assert policy_reason(None) == "no policy sync yet"
    assert policy_reason({"mode": "full", "error": ""}) == ""
    assert policy_reason({"error": "nft: syntax error"}) == (
        "last policy sync failed, previous rules stay: nft: syntax error")


PROC_NET_UNIX = """\
Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 31337 /run/lab/n1/cni.sock
0000000000000000: 00000003 00000000 00000000 0001 03 31338 /run/lab/n1/cni.sock
0000000000000000: 00000002 00000000 00000000 0001 01 31339 /run/lab/n2/cni.sock
0000000000000000: 00000002 00000000 00000000 0002 01 31340
"""


def test_unix_listening_needs_the_path_and_the_accepting_flag():
    assert unix_listening(PROC_NET_UNIX, "/run/lab/n1/cni.sock")
    assert not unix_listening(PROC_NET_UNIX, "/run/lab/n2/cni.sock")  # bound, not listening
    assert not unix_listening(PROC_NET_UNIX, "/run/lab/n3/cni.sock")


def test_readiness_lists_every_check_and_fails_on_any():
    results = run_checks([Check("datastore", lambda: "etcd at x unreachable"),
                          Check("bgp", lambda: ""), Check("boom", lambda: 1 / 0)])
    assert results == {"datastore": "etcd at x unreachable", "bgp": "ok",
                       "boom": "check failed: ZeroDivisionError: division by zero"}
    code, body = render(results)
    assert code == 503
    assert body.splitlines()[0] == "datastore: etcd at x unreachable"
    assert parse_body(body) == results
    assert render({"datastore": "ok", "bgp": "ok"}) == (200, "datastore: ok\nbgp: ok\n")


def test_liveness_names_loops_silent_past_the_timeout():
    now = [100.0]
    beats = Heartbeats(timeout=30, clock=lambda: now[0])
    beats.beat("routing")
    beats.beat("policy")
    now[0] = 120.0
    beats.beat("routing")
    assert liveness(beats) == (200, "ok\n")
    now[0] = 135.0
    assert beats.stuck() == {"policy": 35.0}
    assert liveness(beats) == (503, "policy: no heartbeat for 35s\n")
    assert liveness(None) == (200, "ok\n")


def test_cni_calls_are_counted_by_verb_and_result():
    m = AgentMetrics()
    for ms in (20.0, 30.0, 40.0):
        m.cni_call({"verb": "ADD", "result": "ok", "ms": ms})
    m.cni_call({"verb": "DEL", "result": "error", "ms": 1.0})
    m.cni_call({"result": "error", "ms": 1.0})   # undecodable: no verb
    get = m.registry.get_sample_value
    assert get("calico_lite_cni_requests_total", {"verb": "ADD", "result": "ok"}) == 3
    assert get("calico_lite_cni_requests_total", {"verb": "ADD", "result": "error"}) == 0
    assert get("calico_lite_cni_requests_total", {"verb": "DEL", "result": "error"}) == 1
    assert get("calico_lite_cni_requests_total", {"verb": "unknown", "result": "error"}) == 1
    assert get("calico_lite_cni_request_seconds_count", {"verb": "ADD"}) == 3
    assert get("calico_lite_cni_request_seconds_sum", {"verb": "ADD"}) == pytest.approx(0.09)
    assert get("calico_lite_cni_request_seconds_bucket", {"verb": "ADD", "le": "0.025"}) == 1


def test_each_agent_has_its_own_registry():
    a, b = AgentMetrics(), AgentMetrics()
    a.cni_call({"verb": "ADD", "result": "ok", "ms": 1.0})
    assert b.registry.get_sample_value("calico_lite_cni_requests_total",
                                       {"verb": "ADD", "result": "ok"}) == 0


def test_route_policy_and_etcd_observers():
    m = AgentMetrics()
    m.routes_applied([])
    m.routes_applied([Failure("route 10.244.2.0/26", "EINVAL"), Failure("route x", "ENOENT")])
    m.policy_synced({"mode": "full", "compile_ms": 10.0, "nft_ms": 15.0, "policies": 2,
                     "local_pods": 3, "rules": 40, "chains": 7, "error": ""})
    m.policy_synced({"error": "nft refused it"})
    m.etcd_error("put")
    m.etcd_retry("txn-conflict")
    get = m.registry.get_sample_value
    assert get("calico_lite_route_syncs_total") == 2
    assert get("calico_lite_route_programming_errors_total") == 2
    assert get("calico_lite_policy_sync_seconds_count", {"mode": "full"}) == 1
    assert get("calico_lite_policy_sync_seconds_sum", {"mode": "full"}) == pytest.approx(0.025)
    assert get("calico_lite_policy_sync_errors_total") == 1
    assert get("calico_lite_policy_ruleset_objects", {"kind": "rules"}) == 40
    assert get("calico_lite_policy_policies") == 2
    assert get("calico_lite_etcd_errors_total", {"operation": "put"}) == 1
    assert get("calico_lite_etcd_retries_total", {"reason": "txn-conflict"}) == 1


def test_ipam_usage_counts_this_nodes_blocks_and_addresses():
    aff = {keys.affinity("n1", "10.244.0.0/26"): {}, keys.affinity("n1", "10.244.0.64/26"): {},
           keys.affinity("n10", "10.244.0.128/26"): {}}
    handles = {keys.handle("a/eth0"): {"ip": "10.244.0.1", "node": "n1"},
               keys.handle("b/eth0"): {"ip": "10.244.0.130", "node": "n1", "borrowed": True},
               keys.handle("c/eth0"): {"ip": "10.244.0.129", "node": "n10"}}
    u = ipam_usage(aff, handles, "n1")
    assert (u.addresses, u.blocks, u.borrowed) == (2, 2, 1)


def test_scrape_time_state_bgp_sessions_and_prefixes():
    m = AgentMetrics()
    peers = [Peer("10.99.1.1", "Established", received=4, sent=2), Peer("10.99.1.2", "Idle")]
    m.registry.register(NodeStateCollector(
        usage=lambda: ipam_usage({keys.affinity("n1", "10.244.0.0/26"): {}}, {}, "n1"),
        peers=lambda: peers))
    get = m.registry.get_sample_value
    assert get("calico_lite_bgp_sessions", {"state": "Established"}) == 1
    assert get("calico_lite_bgp_sessions", {"state": "Idle"}) == 1
    assert get("calico_lite_bgp_sessions", {"state": "OpenSent"}) == 0
    assert get("calico_lite_bgp_prefixes_received", {"peer": "10.99.1.1"}) == 4
    assert get("calico_lite_bgp_prefixes_sent", {"peer": "10.99.1.1"}) == 2
    assert get("calico_lite_ipam_blocks_in_use") == 1
    assert get("calico_lite_ipam_addresses_in_use") == 0
    peers.pop()   # read again at each scrape
    assert get("calico_lite_bgp_sessions", {"state": "Idle"}) == 0
    assert b"# TYPE calico_lite_bgp_sessions gauge" in generate_latest(m.registry)
