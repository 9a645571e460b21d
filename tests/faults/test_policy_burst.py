"""1,000 policy changes in a burst under a real agent (its own etcd, real nftables, three
pods wired by the CNI shim): the final table equals a fresh full sync of the same records,
and a flow that every intermediate state denies is never let through.

Pod t has a default-deny ingress policy that stays for the whole burst; the burst creates,
modifies and deletes other policies, many of them selecting t and allowing other ports,
protocols and peers (c over TCP 80 or UDP 82-90, o on every port, an ipBlock that excepts c,
a namespace selector c's namespace does not match), so no intermediate state allows UDP
c -> t:80. A probe in c sends to t:80 from a new source port every few milliseconds during
the burst and t counts what arrives: it must be 0. A second probe to t:81, which a policy
allows throughout, must arrive: the probe works while the table is churning. The writes go
to the datastore as `policy apply` (with --etcd-endpoints) writes them, the last ones through
the CLI itself. CI: 1,000 changes; `make soak` (CALICO_LITE_SOAK=1): 5,000.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time

import yaml

from calico_lite import keys
from calico_lite.policy_inputs import inputs_from, pods_by_workload
from calico_lite.policy_sync import node_tables
from policy.compiler import compile_ruleset
from policy.manifests import policy_to_dict
from policy.model import (IPBlock, LabelSelector, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort,
                          NetworkPolicyRule)
from tests.conftest import REPO
from tests.faults.agent_node import AgentNode, agent_node, wait_until
from tests.nft_node import nft_nodes
from tests.nslib import sh

SOAK = os.environ.get("CALICO_LITE_SOAK", "") not in ("", "0")
CHANGES = 5000 if SOAK else 1000
NAMES = 40            # the burst's policies: burst-0 .. burst-39 in namespace a
PROBED, CONTROL = 80, 81


# --- the node, its pods and what a full sync makes of the datastore ----------------------------

def full_sync_table(node: AgentNode) -> dict:
    """Our table as a fresh full load of every record in etcd makes it (in a scratch netns):
    policy, NAT outgoing and host protection (policy_sync.node_tables)."""
    records = {}
    for prefix in (keys.K8S_POLICIES, keys.K8S_PODS, keys.WORKLOADS, keys.K8S_NAMESPACES,
                   keys.POOLS, keys.NODES, keys.NODE_CONFIG):
        records[prefix] = {k: v for k, v, _ in node.ds("list", prefix=prefix)}
    policies, _, namespaces = inputs_from(records.__getitem__, node.name)
    pods = pods_by_workload(records[keys.K8S_PODS], records[keys.WORKLOADS], node.name)
    rs = compile_ruleset(policies, pods.values(), namespaces, [node.address])
    rs = node_tables(rs, records.__getitem__, node.name, pods)[0]
    with nft_nodes("pbx", ("full",)) as (full,):
        full.call(full.applier.sync, rs)
        return full.table()


def converged(node: AgentNode) -> dict:
    want = full_sync_table(node)
    wait_until(lambda: node.kernel_table() == want, "the agent's table = a fresh full sync", 120)
    return want


# --- the policies ----------------------------------------------------------------------------

def sel(**labels: str) -> LabelSelector:
    return LabelSelector.of(labels)


def ingress(name: str, pods: LabelSelector, *rules: NetworkPolicyRule, ns: str = "a") -> NetworkPolicy:
    return NetworkPolicy(ns, name, pods, ("Ingress",), tuple(rules))


def rule(*peers: NetworkPolicyPeer, ports: tuple[NetworkPolicyPort, ...] = ()) -> NetworkPolicyRule:
    return NetworkPolicyRule(tuple(peers), ports)


def pods(**labels: str) -> NetworkPolicyPeer:
    return NetworkPolicyPeer(pod_selector=sel(**labels))


def variants(name: str, ips: dict[str, str]) -> list[NetworkPolicy]:
    """What a burst policy may become: none of them allows UDP c -> t:80."""
    t = sel(app="t")
    return [
        ingress(name, t, rule(pods(app="c"), ports=(NetworkPolicyPort("TCP", PROBED),))),
        ingress(name, t, rule(pods(app="c"), ports=(NetworkPolicyPort("UDP", 82, 90),))),
        ingress(name, t, rule(pods(app="o"))),
        ingress(name, t, rule(NetworkPolicyPeer(ip_block=IPBlock(f"{ips['o']}/32")))),
        ingress(name, t, rule(NetworkPolicyPeer(ip_block=IPBlock("10.244.0.0/16", (f"{ips['c']}/32",))))),
        ingress(name, t, rule(NetworkPolicyPeer(namespace_selector=sel(team="b")))),
        ingress(name, t, rule(NetworkPolicyPeer(pod_selector=sel(app="c"), namespace_selector=sel(team="b")))),
        ingress(name, LabelSelector(), rule(pods(app="o"), ports=(NetworkPolicyPort("UDP", PROBED),))),
        ingress(name, t, rule(pods(app="c"), ports=(NetworkPolicyPort("UDP", CONTROL),))),
        ingress(name, sel(app="c"), rule()),   # c open to everyone
        NetworkPolicy("a", name, sel(app="c"), ("Egress",), (), (rule(),)),   # c may send anywhere
        NetworkPolicy("a", name, t, ("Egress",), (), ()),   # t may send nothing
        ingress(name, sel(app="o"), rule(pods(app="c"), ports=(NetworkPolicyPort("UDP", PROBED),))),
    ]


def write_base(node: AgentNode) -> None:
    for ns, team in (("a", "a"), ("b", "b")):
        node.ds("put", key=keys.k8s_namespace(ns), value={"name": ns, "labels": {"team": team}})
    for pod in ("t", "c", "o"):
        node.ds("put", key=keys.k8s_pod("a", pod),
                value={"namespace": "a", "name": pod, "labels": {"app": pod}, "ports": []})
    for pol in (ingress("deny-t", sel(app="t")),
                ingress("allow-81", sel(app="t"), rule(pods(app="c"), ports=(NetworkPolicyPort("UDP", CONTROL),)))):
        node.ds("put", key=keys.k8s_policy("a", pol.name), value=policy_to_dict(pol))


def burst(node: AgentNode, ips: dict[str, str], changes: int) -> dict[str, int]:
    """`changes` puts and deletes of the burst policies, as fast as the datastore takes them;
    the last 20 as one `calico-lite policy apply -f` of 20 documents. A short pause every 25
    changes lets the agent apply intermediate states (it coalesces what arrives together)."""
    rnd = random.Random(12)
    live: set[str] = set()
    done = {"put": 0, "delete": 0}
    for n in range(changes - 20):
        if n % 25 == 24:
            time.sleep(0.05)   # let the agent apply some of the intermediate states
        name = f"burst-{rnd.randrange(NAMES)}"
        if name in live and rnd.random() < 0.3:
            node.ds("delete", key=keys.k8s_policy("a", name))
            live.discard(name)
            done["delete"] += 1
        else:
            node.ds("put", key=keys.k8s_policy("a", name), value=policy_to_dict(rnd.choice(variants(name, ips))))
            live.add(name)
            done["put"] += 1
    docs = [policy_to_dict(rnd.choice(variants(f"burst-{i}", ips))) for i in range(20)]
    manifest = node.root / "burst.yaml"
    manifest.write_text(yaml.safe_dump_all(docs))
    node.cli("policy", "apply", "-f", str(manifest))
    done["put"] += 20
    return done


class Probe:
    """udpcount in c (sender) and t (receiver), for PROBED and CONTROL."""

    def __init__(self, node: AgentNode, t_ip: str):
        self.state, self.sent_state = node.root / "counts.json", node.root / "sent.json"
        self.stop = node.root / "probe.stop"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        run = lambda pod, *a: subprocess.Popen(  # noqa: E731
            ["ip", "netns", "exec", f"{node.prefix}{pod}", sys.executable, "-m", "tests.faults.udpcount", *a],
            cwd=REPO, env=env)
        self.recv = run("t", "recv", str(self.state), str(self.stop), str(PROBED), str(CONTROL))
        wait_until(self.state.exists, "the receiver listening")
        self.send = run("c", "send", t_ip, str(self.sent_state), str(self.stop), "0.003", str(PROBED), str(CONTROL))

    def counts(self, sent: bool = False) -> dict[int, int]:
        """Received (or sent) so far, per port."""
        path = self.sent_state if sent else self.state
        return ({int(k): v for k, v in json.loads(path.read_text()).items() if k.isdigit()}
                if path.exists() else {})

    def finish(self) -> None:
        self.stop.touch()
        for p in (self.send, self.recv):
            p.wait(30)


def test_a_burst_of_policy_changes_never_lets_a_denied_flow_through_and_ends_as_a_full_sync():
    with agent_node("pb") as node:
        sh("ip", "route", "add", "default", "via", "10.99.1.1", netns=node.netns)   # proxy ARP needs one
        write_base(node)
        node.start_agent("--policy-resync", "2")   # full resyncs during the burst too
        wait_until(lambda: (node.root / "cni.sock").exists(), "the agent's CNI socket")
        ips = {pod: node.add_pod(pod) for pod in ("t", "c", "o")}
        converged(node)
        probe = Probe(node, ips["t"])
        try:
            before = wait_until(lambda: (c := probe.counts())[CONTROL] >= 20 and c, "the control probe arriving")
            assert before[PROBED] == 0, before
            sent_before = probe.counts(sent=True)
            syncs = node.log_text().count('"event": "policy-sync"')
            t0 = time.monotonic()
            done = burst(node, ips, CHANGES)
            written = time.monotonic() - t0
            want = converged(node)
            settled = time.monotonic() - t0
            mid, sent = probe.counts(), probe.counts(sent=True)
            syncs = node.log_text().count('"event": "policy-sync"') - syncs
            # the probe can fail: once a policy allows c -> t:80, it arrives
            allow = ingress("allow-80", sel(app="t"), rule(pods(app="c"), ports=(NetworkPolicyPort("UDP", PROBED),)))
            node.ds("put", key=keys.k8s_policy("a", "allow-80"), value=policy_to_dict(allow))
            wait_until(lambda: probe.counts()[PROBED] > 0, "the probe once c -> t:80 is allowed")
        finally:
            probe.finish()
        during = {p: sent[p] - sent_before.get(p, 0) for p in (PROBED, CONTROL)}
        policies = len(node.ds("list", prefix=keys.K8S_POLICIES))
        print(f"\n[burst] {CHANGES} changes ({done['put']} puts, {done['delete']} deletes) written in "
              f"{written:.1f} s; the agent applied {syncs} states; table = full sync after {settled:.1f} s; {policies} policies, "
              f"{sum(len(r) for r in want['rule'].values())} rules at the end; probes during the "
              f"burst: t:{PROBED} sent {during[PROBED]}, got through {mid[PROBED]}; control t:{CONTROL} "
              f"sent {during[CONTROL]}, arrived {mid[CONTROL] - before[CONTROL]}")
        assert mid[PROBED] == 0, (f"{mid[PROBED]} probes of a flow every state denies got through "
                              f"(arrived, sent): {json.loads(probe.state.read_text())['arrivals']}")
        assert mid[CONTROL] > before[CONTROL], "the control probe stopped arriving during the burst"
        assert node.agent_alive() and "Traceback" not in node.log_text()
