"""The netlink fast path of incremental updates (policy.batch_plan + policy.nfnl) against the
real kernel: it leaves exactly the table the libnftables path leaves, and a batch the kernel
refuses changes nothing and says why.

Two namespaces of our own: `fast` has the default applier (element-only updates go as our own
nfnetlink batch), `slow` an applier with the netlink path switched off (every update is nft
text through libnftables). Both get the same update() calls; after each, their normalized
`nft -j list table` must be equal.
"""
from __future__ import annotations

import os
import random
from collections import Counter

import pytest
from hypothesis import given, settings

from policy.applier import RulesetApplier
from policy.batch_plan import plan_batch
from policy.nfnl import Batch, BatchError
from policy.model import (
    ContainerPort, IPBlock, LabelSelector, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicyRule, Pod,
)
from tests.nft_node import assert_equal_tables, nft_nodes
from tests.nslib import sh
from tests.policy_events import NODE_IP, Replay, events

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces and nftables")


@pytest.fixture(scope="module")
def nodes():
    with nft_nodes("nfb", ("fast", "slow")) as made:
        yield made


def reset(nodes) -> None:
    fast, slow = nodes
    for n in nodes:
        n.call(n.applier.remove)
        n.call(n.applier.close)
    fast.applier = fast.call(RulesetApplier)
    slow.applier = slow.call(lambda: RulesetApplier(netlink=False))


def both(nodes, ruleset, context: str):
    fast, slow = nodes
    r = fast.call(fast.applier.update, ruleset)
    s = slow.call(slow.applier.update, ruleset)
    assert s.path == "libnftables" and r.mode in ("update", "noop") and not r.refused, (context, r)
    assert_equal_tables(fast, slow, context)
    return r


@settings(max_examples=10, deadline=None)
@given(seq=events)
def test_random_events_netlink_path_equals_libnftables_path(nodes, seq):
    """Any event (tests.policy_events: policies, pods, namespaces of every kind)."""
    reset(nodes)
    replay = Replay()
    for n in nodes:
        n.call(n.applier.sync, replay.inc.ruleset())
    for i, event in enumerate(seq):
        replay.apply(event)
        both(nodes, replay.inc.ruleset(), f"event {i}: {event}")


PORTS = [ContainerPort("http", "TCP", 8080), ContainerPort("dns", "UDP", 53)]


def policies() -> list[NetworkPolicy]:
    """Fixed policies whose sets the pod and namespace events below keep moving: pod peers,
    namespace peers, egress named ports (a three-field concatenation) and an ipBlock."""
    sel = LabelSelector.of
    anywhere = lambda labels: NetworkPolicyPeer(pod_selector=sel(labels), namespace_selector=sel({}))  # noqa: E731
    http, dns = NetworkPolicyPort("TCP", "http"), NetworkPolicyPort("UDP", "dns")
    return [
        NetworkPolicy("a", "from-x", sel({}), ("Ingress",), (NetworkPolicyRule((anywhere({"app": "x"}),), (http,)),)),
        NetworkPolicy("b", "to-y", sel({"app": "x"}), ("Egress",), (), (NetworkPolicyRule((anywhere({"app": "y"}),),
                                                                                           (http, dns)),)),
        NetworkPolicy("c", "from-team-z", sel({}), ("Ingress",), (NetworkPolicyRule(
            (NetworkPolicyPeer(namespace_selector=sel({"team": "z"})),
             NetworkPolicyPeer(ip_block=IPBlock("192.0.2.0/24", ("192.0.2.128/25",)))),),)),
    ]


def random_walk(rnd: random.Random, replay: Replay, steps: int):
    """Pod relabels most, then namespace relabels, pod deletes and (re-)adds."""
    for _ in range(steps):
        i, roll = rnd.randrange(10), rnd.random()
        if roll < 0.15:
            yield ("ns", rnd.choice("abc"), {"team": rnd.choice("xyz")})
        elif roll < 0.3:
            yield ("pod", i, None)
        else:
            local = i % 3 != 2
            yield ("pod", i, Pod("abc"[i % 3], f"pod{i}", f"10.240.0.{i + 1}", {"app": rnd.choice("xyz")},
                                 PORTS[: 1 + i % 2], f"cali{i}" if local else None, "n1" if local else "n2"))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_pod_and_namespace_walk_netlink_path_equals_libnftables_path(nodes, seed):
    """The events the fast path is for, many times over: after each, both kernels agree."""
    reset(nodes)
    replay, rnd, paths = Replay(), random.Random(seed), Counter()
    for pol in policies():
        replay.apply(("policy", pol.key, pol))
    for n in nodes:
        n.call(n.applier.sync, replay.inc.ruleset())
    for i, event in enumerate(random_walk(rnd, replay, 40)):
        replay.apply(event)
        r = both(nodes, replay.inc.ruleset(), f"seed {seed} event {i}: {event}")
        paths[r.path if r.mode == "update" else r.mode] += 1
    assert paths["netlink"] >= 10, paths


def world() -> Replay:
    replay = Replay()
    for name, labels in (("a", {"team": "x"}), ("b", {"team": "y"})):
        replay.apply(("ns", name, labels))
    peer = NetworkPolicyPeer(pod_selector=LabelSelector.of({"app": "x"}), namespace_selector=LabelSelector.of({}))
    replay.apply(("policy", "a/p1", NetworkPolicy("a", "p1", LabelSelector.of({}), ("Ingress",),
                                                  (NetworkPolicyRule((peer,)),))))
    for i in range(4):
        replay.apply(("pod", i, Pod("ab"[i % 2], f"pod{i}", f"10.240.0.{i + 1}", {"app": "x"},
                                    [ContainerPort("http", "TCP", 8080)], f"cali{i}", "n1")))
    return replay


def test_relabels_deletes_and_known_rules_go_as_netlink_batches(nodes):
    """The events the fast path is for really take it, and still match the libnftables path."""
    reset(nodes)
    replay = world()
    for n in nodes:
        n.call(n.applier.sync, replay.inc.ruleset())
    pod = replay.pods[1]
    replay.apply(("pod", 1, Pod(**{**vars(pod), "labels": {"app": "y"}})))
    assert both(nodes, replay.inc.ruleset(), "pod relabel").path == "netlink"
    replay.apply(("ns", "b", {"team": "z"}))
    r = both(nodes, replay.inc.ruleset(), "namespace relabel")
    assert r.path == "netlink" or r.mode == "noop", r
    replay.apply(("pod", 2, None))
    r = both(nodes, replay.inc.ruleset(), "pod delete")
    assert r.path == "netlink" and "map-1" in r.summary and "chain-1" in r.summary, r
    # a new pod whose rules other pods' chains already hold: its chain is replayed from them
    replay.apply(("pod", 5, Pod("a", "pod5", "10.240.0.9", {"app": "x"}, [], "cali5", "n1")))
    r = both(nodes, replay.inc.ruleset(), "pod add")
    assert r.path == "netlink" and "chain+1" in r.summary, r
    # a new policy brings sets and rule texts never seen: libnftables, which the applier learns from
    ports = (NetworkPolicyPort("TCP", 8000, 8100), NetworkPolicyPort("UDP", 53))
    replay.apply(("policy", "a/p2", NetworkPolicy("a", "p2", LabelSelector.of({"app": "x"}), ("Ingress",),
                                                  (NetworkPolicyRule((), ports),))))
    assert both(nodes, replay.inc.ruleset(), "policy add").path == "libnftables"
    replay.apply(("pod", 6, Pod("a", "pod6", "10.240.0.10", {"app": "x"}, [], "cali6", "n1")))
    r = both(nodes, replay.inc.ruleset(), "pod add under the new policy (an anonymous port set)")
    assert r.path == "netlink" and "chain+1" in r.summary, r


def test_a_refused_batch_changes_nothing_and_says_why(nodes):
    reset(nodes)
    fast, slow = nodes
    replay = world()
    for n in nodes:
        n.call(n.applier.sync, replay.inc.ruleset())
    before = fast.table()
    # an add the kernel would take, then a delete it refuses: the add must not stay either
    batch = Batch("inet", "calico-lite")
    batch.elements(True, "node_ips", "ipv4_addr", ["192.0.2.99"])
    batch.elements(False, "pod_if_addr", "ifname . ipv4_addr", ['"nosuch0" . 10.9.9.9'])
    with pytest.raises(BatchError) as refused:
        fast.call(fast.applier._nfnl.send, batch)
    assert 'delete element inet calico-lite pod_if_addr { "nosuch0" . 10.9.9.9 }' in refused.value.reason
    assert "No such file or directory" in refused.value.reason
    assert "add element" not in refused.value.reason  # only the refused message is named
    assert fast.table() == before, "a refused batch left part of itself in the table"

    # the applier: someone removed an element behind its back, so the next update's delete is
    # refused; the update becomes a full sync that says why (policy_sync puts it in the status)
    sh("nft", "delete", "element", "inet", "calico-lite", "pod_if_addr", '{ "cali3" . 10.240.0.4 }',
       netns=fast.netns)
    replay.apply(("pod", 3, None))
    plan, _ = plan_batch(fast.applier.applied, replay.inc.ruleset())
    assert plan is not None
    r = fast.call(fast.applier.update, replay.inc.ruleset())
    assert r.mode == "sync" and "pod_if_addr" in r.refused and "No such file" in r.refused, r
    slow.call(slow.applier.update, replay.inc.ruleset())
    assert_equal_tables(fast, slow, "the refused update's full sync")


def test_unchanged_ruleset_is_a_noop(nodes):
    reset(nodes)
    replay = world()
    fast, _ = nodes
    fast.call(fast.applier.sync, replay.inc.ruleset())
    replay.apply(("ns", "a", {"team": "x"}))  # same labels: nothing moves
    r = fast.call(fast.applier.update, replay.inc.ruleset())
    assert r.mode == "noop", r
    assert NODE_IP in str(fast.table()["set"]["node_ips"])


def test_a_large_change_is_split_and_still_one_transaction(nodes):
    """1,200 elements: several messages (an attribute holds at most 64 KiB), one batch."""
    reset(nodes)
    fast, _ = nodes
    replay = world()
    fast.call(fast.applier.sync, replay.inc.ruleset())
    before = fast.table()
    elems = [f'"x{i}" . 10.9.{i // 250}.{i % 250 + 1}' for i in range(1200)]
    batch = Batch("inet", "calico-lite")
    batch.elements(True, "pod_if_addr", "ifname . ipv4_addr", elems)
    assert len(batch.messages) > 1
    fast.call(fast.applier._nfnl.send, batch)
    assert len(fast.table()["set"]["pod_if_addr"]["elem"]) == len(before["set"]["pod_if_addr"]["elem"]) + 1200
    undo = Batch("inet", "calico-lite")
    undo.elements(False, "pod_if_addr", "ifname . ipv4_addr", elems + ['"nosuch0" . 10.9.9.9'])
    with pytest.raises(BatchError):   # the last message is refused: none of the 1,200 go
        fast.call(fast.applier._nfnl.send, undo)
    assert len(fast.table()["set"]["pod_if_addr"]["elem"]) == len(before["set"]["pod_if_addr"]["elem"]) + 1200
    undo = Batch("inet", "calico-lite")
    undo.elements(False, "pod_if_addr", "ifname . ipv4_addr", elems)
    fast.call(fast.applier._nfnl.send, undo)
    assert fast.table() == before
