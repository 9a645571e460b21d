"""Corrupt datastore values under a real agent and etcd: a block key holding garbage (one of
the node's own blocks), workload records of the wrong type, policy records that do not parse.
The agent logs and skips each key; it neither crashes nor wipes state: the routes and the
rules of the good records stay, a pod ADD still gets an address (outside the garbage block),
later good changes still apply, and a restarted agent comes up the same way."""
from __future__ import annotations


from calico_lite import keys
from calico_lite.policy_inputs import pods_by_workload
from calico_lite.policy_sync import node_tables
from policy.compiler import compile_ruleset
from policy.manifests import policy_to_dict
from policy.model import LabelSelector, Namespace, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyRule
from tests.faults.agent_node import agent_node, wait_until
from tests.nft_node import nft_nodes
from tests.nslib import sh

ROUTE = "10.244.5.0/26"
BAD_BLOCK = "10.244.0.0/26"   # affine to our node, its block key garbage
NS = {keys.k8s_namespace("a"): {"name": "a", "labels": {"team": "a"}}}
PODS = {keys.k8s_pod("a", f"pod{i}"): {"namespace": "a", "name": f"pod{i}",
                                         "labels": {"app": app}, "ports": []}
        for i, app in ((1, "x"), (2, "y"))}
WORKLOADS = {keys.workload("n1", f"h{i}"): {"namespace": "a", "pod": f"pod{i}",
                                             "ip": f"10.244.9.{i}", "node": "n1",
                                             "host_ifname": f"cali{i}"} for i in (1, 2)}


def policy(name: str, app: str) -> dict:
    peer = NetworkPolicyPeer(pod_selector=LabelSelector.of({"app": "y"}))
    return policy_to_dict(NetworkPolicy("a", name, LabelSelector.of({"app": app}), ("Ingress",),
                                        (NetworkPolicyRule((peer,)),)))


def expected_table(node, policies: dict[str, dict], workloads: dict[str, dict]) -> dict:
    """Our table as a fresh full load of the GOOD records makes it (in a scratch netns)."""
    from policy.manifests import policy_from_dict
    pods = pods_by_workload(PODS, workloads, node.name)
    rs = compile_ruleset([policy_from_dict(v) for v in policies.values()], pods.values(),
                         [Namespace("a", {"team": "a"})], [node.address])
    records = {prefix: {k: v for k, v, _ in node.ds("list", prefix=prefix)}
               for prefix in (keys.POOLS, keys.NODES)}
    records[keys.WORKLOADS] = workloads
    # the agent's table holds NAT outgoing and host protection too
    rs = node_tables(rs, lambda prefix: records.get(prefix, {}), node.name, pods)[0]
    with nft_nodes("bsx", ("full",)) as (full,):
        full.call(full.applier.sync, rs)
        return full.table()


def start_with_good_records(node) -> dict[str, dict]:
    """Good records, a route from GoBGP, an agent; returns the policies written."""
    for key, value in {**NS, **PODS, **WORKLOADS}.items():
        node.ds("put", key=key, value=value)
    policies = {keys.k8s_policy("a", "only-y-to-x"): policy("only-y-to-x", "x")}
    for key, value in policies.items():
        node.ds("put", key=key, value=value)
    node.ds("put", key=keys.affinity("n1", BAD_BLOCK), value={"node": "n1"})
    node.ds("put", key=keys.block(BAD_BLOCK), value={"cidr": BAD_BLOCK, "affinity": "n1",
                                                     "pool": "default", "allocations": {}})
    node.cli("bgp", "config", "set", "--mesh", "off", "--as-number", "64601")
    node.cli("bgp", "peer", "add", "gobgp", "--peer-ip", "10.99.1.1", "--as", "65001")
    node.start_gobgp()
    node.start_agent()
    wait_until(node.established, "the agent's session with GoBGP")
    node.announce(ROUTE)
    wait_until(lambda: ROUTE in node.routes("proto", "88"), "the learned route")
    want = expected_table(node, policies, WORKLOADS)
    wait_until(lambda: node.kernel_table() == want, "the rules of the good records")
    return policies


def corrupt(node) -> None:
    """Garbage in a block key, workloads and policies of the wrong shape."""
    node.put_raw(keys.block(BAD_BLOCK), b"\x00garbage{not json")
    node.put_raw(keys.workload("n1", "h2"), b'"a string, not a record"')
    node.ds("put", key=keys.workload("n1", "h3"), value={"namespace": "a", "pod": "pod3",
                                                         "ip": 42, "node": "n1"})
    node.ds("put", key=keys.k8s_policy("a", "only-y-to-x"), value={"spec": "nonsense"})
    node.put_raw(keys.k8s_policy("a", "broken"), b"{policy: yes")


def restart_with_garbage(node, later: dict[str, dict]) -> None:
    """A restarted agent meets the garbage in its first snapshot: it skips it too."""
    node.stop_agent()
    node.start_agent()
    wait_until(node.established, "the session after the restart")
    wait_until(lambda: (node.ds("get", key=keys.policy_status(node.name)) or [{}])[0]
               .get("updated", 0) > 0 and node.agent_alive(), "the restarted agent's sync")
    workloads = {k: v for k, v in WORKLOADS.items() if not k.endswith("/h2")}
    workloads.update({e[0]: e[1] for e in node.ds("list", prefix=keys.workload("n1", "c3"))})
    policies = {k: v for k, v in later.items() if not k.endswith("only-y-to-x")}
    want = expected_table(node, policies, workloads)
    wait_until(lambda: node.kernel_table() == want, "the good records' rules after a restart")
    assert ROUTE in node.routes("proto", "88") and node.agent_alive()
    assert "Traceback" not in node.log_text()


def test_corrupt_records_are_logged_and_skipped_and_nothing_good_is_lost():
    with agent_node("bs") as node:
        policies = start_with_good_records(node)
        corrupt(node)
        # a good change after them still applies
        later = {**policies, keys.k8s_policy("a", "only-y-to-y"): policy("only-y-to-y", "y")}
        node.ds("put", key=keys.k8s_policy("a", "only-y-to-y"), value=later[
            keys.k8s_policy("a", "only-y-to-y")])
        want = expected_table(node, later, WORKLOADS)   # h2 keeps its last good record
        wait_until(lambda: node.kernel_table() == want, "the good change, nothing else lost")

        # an ADD skips the garbage block (never overwritten) and claims the next one
        pod_ns = f"{node.prefix}pod3"
        sh("ip", "netns", "add", pod_ns)
        result = node.cni_add("c3", pod_ns, "pod3")
        ip = result["ips"][0]["address"].split("/")[0]
        assert ip.startswith("10.244.0.") and int(ip.rsplit(".", 1)[1]) >= 64, ip
        block = sh("ip", "netns", "exec", node.netns, "etcdctl", "--endpoints",
                   "http://127.0.0.1:2379", "get", "--print-value-only", keys.block(BAD_BLOCK),
                   env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}).stdout
        assert block.startswith("\x00garbage"), block

        assert node.agent_alive()
        assert ROUTE in node.routes("proto", "88")
        log = node.log_text()
        for key in (keys.block(BAD_BLOCK), keys.workload("n1", "h2"), keys.workload("n1", "h3"),
                    keys.k8s_policy("a", "only-y-to-x"), keys.k8s_policy("a", "broken")):
            assert f'"key": "{key}"' in log, f"{key} not logged"
        assert "Traceback" not in log, log[-3000:]
        restart_with_garbage(node, later)
