"""Our nftables table deleted, flushed, or the whole ruleset flushed by another tool: a real
agent (etcd, a pod and a policy in its ruleset) restores exactly its table at its next resync
(lowered to 2 s here); another owner's table in the same namespace is never touched."""
from __future__ import annotations

import time

from calico_lite import keys
from policy.manifests import policy_to_dict
from policy.model import LabelSelector, NetworkPolicy
from tests.faults.agent_node import agent_node, wait_until
from tests.nft_node import normalized
from tests.nslib import sh

FOREIGN = """table inet bsother {
  chain input {
    type filter hook input priority 10; policy accept;
    ip saddr 192.0.2.1 drop
  }
}
"""


def table(node, name: str) -> dict | None:
    p = sh("nft", "-j", "list", "table", "inet", name, netns=node.netns, check=False)
    return normalized(p.stdout) if p.returncode == 0 else None


def restored(node) -> int:
    e = node.ds("get", key=keys.policy_status(node.name))
    return (e[0] or {}).get("table_restored", 0) if e else 0


def test_our_table_is_restored_after_others_flush_or_delete_it_and_theirs_is_left_alone():
    with agent_node("bs") as node:
        node.put_pod_records()
        node.ds("put", key=keys.k8s_policy("a", "deny"), value=policy_to_dict(
            NetworkPolicy("a", "deny", LabelSelector.of({"app": "x"}), ("Ingress",), ())))
        node.start_agent("--policy-resync", "2")
        wait_until(lambda: (node.ds("get", key=keys.policy_status(node.name)) or [{}])[0]
                   .get("local_pods") == 1, "the pod in the agent's ruleset")
        ours = table(node, "calico-lite")
        assert ours and ours["chain"], ours
        sh("nft", "-f", "-", netns=node.netns, input=FOREIGN)
        theirs = table(node, "bsother")

        for n, breakage in enumerate([("delete", "table", "inet", "calico-lite"),
                                      ("flush", "table", "inet", "calico-lite"),
                                      ("flush", "ruleset")], start=1):
            sh("nft", *breakage, netns=node.netns)
            t0 = time.monotonic()
            assert table(node, "calico-lite") != ours, breakage
            wait_until(lambda: table(node, "calico-lite") == ours,
                       f"our table back after `nft {' '.join(breakage)}`")
            print(f"\n[info] `nft {' '.join(breakage)}`: our table back after "
                  f"{time.monotonic() - t0:.1f} s (resync 2 s)")
            wait_until(lambda: restored(node) >= n, "the restore in the policy status")
            if breakage != ("flush", "ruleset"):
                assert table(node, "bsother") == theirs, "another owner's table was changed"
        assert table(node, "bsother") is None, "another owner's table was recreated by us"
        log = node.log_text()
        assert log.count('"event": "policy-table-restored", "table": "inet calico-lite"') == 3, log[-3000:]
        # `nft flush ruleset` took the pods' ARP anti-spoofing table too: back as well
        assert log.count('"event": "policy-table-restored", "table": "arp calico-lite"') == 1, log[-3000:]
        assert sh("nft", "list", "table", "arp", "calico-lite", netns=node.netns, check=False).returncode == 0
        assert node.agent_alive()
        # nothing to restore: the resyncs that follow leave the table alone
        before = log.count("policy-table-restored")
        wait_until(lambda: node.log_text().count('"event": "policy-sync"') >=
                   log.count('"event": "policy-sync"') + 2, "two more resyncs")
        assert node.log_text().count("policy-table-restored") == before
        assert table(node, "calico-lite") == ours
