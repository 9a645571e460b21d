"""Incremental updates against the real kernel: after any sequence of changes, the table that
update() leaves equals what a fresh full sync of the same Ruleset gives.

Two namespaces of our own, each with a worker thread owning an applier: `inc` only ever gets
update(), `full` gets sync() of the same Ruleset at every step. After each step their normalized
`nft -j list table inet calico-lite` (handles dropped, objects ordered by name, set elements
sorted, rule order inside a chain kept) must be equal. Policy adds/removes must stay on the
incremental path (mode "update"), since they now only add or delete named sets and chains.
"""
from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings

from policy.applier import RulesetApplier
from policy.compiler import compile_ruleset
from policy.manifests import parse_manifests
from policy.model import ContainerPort, Namespace, NetworkPolicy, Pod
from policy.ruleset import Ruleset
from tests.nslib import sh
from tests.nft_node import assert_equal_tables, nft_nodes
from tests.policy_events import Replay, events

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces and nftables")

NODE_IP = "10.241.0.1"


def np(ns: str, name: str, spec: str) -> NetworkPolicy:
    body = "\n".join("  " + line for line in spec.strip("\n").splitlines())
    (pol,) = parse_manifests(f"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
                             f"metadata: {{name: {name}, namespace: {ns}}}\nspec:\n{body}\n", "test")
    return pol


# A catalogue of policies of every peer kind; the random walk adds, removes and swaps them.
CATALOGUE: dict[str, tuple[str, str]] = {
    "deny": ("a", "podSelector: {}\npolicyTypes: [Ingress]"),
    "web-from-clients": ("a", """
podSelector: {matchLabels: {app: web}}
ingress:
- from: [{podSelector: {matchLabels: {app: client}}}]
  ports: [{protocol: TCP, port: http}, {protocol: TCP, port: 443}]"""),
    "from-beta": ("a", """
podSelector: {matchLabels: {app: db}}
ingress:
- from: [{namespaceSelector: {matchLabels: {team: beta}}}]
  ports: [{protocol: TCP, port: 5432}]"""),
    "cidrs": ("b", """
podSelector: {}
ingress:
- from: [{ipBlock: {cidr: 192.0.2.0/24, except: [192.0.2.128/25]}}, {podSelector: {matchLabels: {tier: fe}}}]
  ports: [{protocol: UDP, port: 53}]"""),
    "egress-named": ("b", """
podSelector: {matchLabels: {app: client}}
policyTypes: [Egress]
egress:
- to: [{namespaceSelector: {}, podSelector: {matchLabels: {app: web}}}]
  ports: [{protocol: TCP, port: http}]
- to: [{ipBlock: {cidr: 198.51.100.0/24}}]
- ports: [{protocol: UDP, port: 53}]"""),
    "c-both": ("c", """
podSelector: {matchExpressions: [{key: tier, operator: In, values: [be, db]}]}
policyTypes: [Ingress, Egress]
ingress:
- from: [{namespaceSelector: {matchLabels: {env: prod}}, podSelector: {matchLabels: {tier: fe}}}]
egress:
- to: [{podSelector: {}}]"""),
}
# "modified" variants: same name, different rules (sets come and go, chains are refilled)
VARIANTS: dict[str, tuple[str, str]] = {
    "web-from-clients": ("a", """
podSelector: {matchLabels: {app: web}}
ingress:
- from: [{ipBlock: {cidr: 203.0.113.0/24}}]
- from: [{podSelector: {matchLabels: {tier: fe}}}, {namespaceSelector: {matchLabels: {team: gamma}}}]
  ports: [{protocol: TCP, port: 8000, endPort: 8100}]"""),
    "from-beta": ("a", """
podSelector: {}
ingress:
- from: [{namespaceSelector: {matchLabels: {team: beta}}, podSelector: {matchLabels: {app: client}}}]"""),
}


@pytest.fixture(scope="module")
def nodes():
    with nft_nodes("pin", ("inc", "full")) as made:
        yield made


@pytest.fixture
def fresh(nodes):
    for n in nodes:
        n.call(n.applier.remove)
        n.applier = n.call(RulesetApplier)
    return nodes


class World:
    """Mutable cluster state for the random walk."""

    def __init__(self) -> None:
        self.namespaces = {"a": {"team": "alpha", "env": "prod"}, "b": {"team": "beta", "env": "dev"},
                           "c": {"team": "gamma", "env": "prod"}}
        self.pods: dict[str, Pod] = {}
        self.policies: dict[str, NetworkPolicy] = {}
        self.serial = 0
        for i in range(9):
            self.add_pod(random.Random(i), local=i % 4 != 3)

    def add_pod(self, rnd: random.Random, local: bool = True) -> str:
        self.serial += 1
        i = self.serial
        ns = "abc"[i % 3]
        name = f"pod{i}"
        self.pods[name] = Pod(ns, name, f"10.240.{i // 200}.{i % 200 + 1}", self.labels(rnd),
                              [ContainerPort("http", "TCP", 8080 + i % 2), ContainerPort("dns", "UDP", 53)],
                              f"calipin{i:04d}" if local else None, "n1" if local else "n2")
        return name

    @staticmethod
    def labels(rnd: random.Random) -> dict[str, str]:
        return {"app": rnd.choice(["web", "client", "db"]), "tier": rnd.choice(["fe", "be", "db"])}

    def ruleset(self) -> Ruleset:
        nss = [Namespace(n, dict(labels)) for n, labels in self.namespaces.items()]
        return compile_ruleset(self.policies.values(), [Pod(**vars(p)) for p in self.pods.values()], nss, [NODE_IP])


def step(world: World, rnd: random.Random) -> str:
    """One random-ish change to the world; returns its kind."""
    kinds = ["policy+", "policy-", "policy~", "pod+", "pod-", "pod~", "ns~"]
    kind = rnd.choice(kinds)
    absent = sorted(set(CATALOGUE) - set(world.policies))
    if kind == "policy+" and absent:
        name = rnd.choice(absent)
        world.policies[name] = np(CATALOGUE[name][0], name, CATALOGUE[name][1])
    elif kind == "policy-" and world.policies:
        del world.policies[rnd.choice(sorted(world.policies))]
    elif kind == "policy~" and set(VARIANTS) & set(world.policies):
        name = rnd.choice(sorted(set(VARIANTS) & set(world.policies)))
        current = world.policies[name]
        ns, spec = VARIANTS[name] if current == np(CATALOGUE[name][0], name, CATALOGUE[name][1]) else CATALOGUE[name]
        world.policies[name] = np(ns, name, spec)
    elif kind == "pod+":
        world.add_pod(rnd, local=rnd.random() < 0.7)
    elif kind == "pod-" and len(world.pods) > 2:
        del world.pods[rnd.choice(sorted(world.pods))]
    elif kind == "pod~" and world.pods:
        world.pods[rnd.choice(sorted(world.pods))].labels = world.labels(rnd)
    elif kind == "ns~":
        ns = rnd.choice(sorted(world.namespaces))
        world.namespaces[ns] = {"team": rnd.choice(["alpha", "beta", "gamma"]), "env": rnd.choice(["prod", "dev"])}
    else:
        return "skip"
    return kind


@pytest.mark.parametrize("seed", [1, 2, 3, 23, 39])
def test_random_changes_update_equals_full_sync(fresh, seed):
    inc, full = fresh
    rnd = random.Random(seed)
    world = World()
    rs = world.ruleset()
    inc.call(inc.applier.sync, rs)
    full.call(full.applier.sync, rs)
    assert_equal_tables(inc, full, "the first sync")
    modes: dict[str, set[str]] = {}
    history: list[str] = []
    for _ in range(30):
        kind = step(world, rnd)
        if kind == "skip":
            continue
        history.append(kind)
        rs = world.ruleset()
        r = inc.call(inc.applier.update, rs)
        full.call(full.applier.sync, rs)
        modes.setdefault(kind, set()).add(r.mode)
        assert r.mode in ("update", "noop"), (history, r)  # nothing here is structural any more
        assert_equal_tables(inc, full, " -> ".join(history))
    for name in sorted(world.policies):  # and wind down: every policy removed, one by one
        del world.policies[name]
        history.append("policy-")
        rs = world.ruleset()
        r = inc.call(inc.applier.update, rs)
        full.call(full.applier.sync, rs)
        modes.setdefault("policy-", set()).add(r.mode)
        assert r.mode in ("update", "noop"), (history, r)
        assert_equal_tables(inc, full, " -> ".join(history))
    assert "update" in modes.get("policy+", set()) and "update" in modes.get("policy-", set()), (history, modes)


def test_adding_and_removing_a_policy_is_one_incremental_transaction(fresh):
    inc, full = fresh
    world = World()
    world.policies["deny"] = np("a", "deny", CATALOGUE["deny"][1])
    base = world.ruleset()
    inc.call(inc.applier.sync, base)
    for name in ("web-from-clients", "egress-named", "cidrs", "c-both"):
        world.policies[name] = np(CATALOGUE[name][0], name, CATALOGUE[name][1])
        added = world.ruleset()
        r = inc.call(inc.applier.update, added)
        assert r.mode == "update", r
        assert "set+" in r.summary, r.summary
        full.call(full.applier.sync, added)
        assert_equal_tables(inc, full, f"adding {name}")
    for name in ("web-from-clients", "egress-named", "cidrs", "c-both"):
        del world.policies[name]
        r = inc.call(inc.applier.update, world.ruleset())
        assert r.mode == "update", r
        assert "set-" in r.summary, r.summary
    full.call(full.applier.sync, base)
    assert_equal_tables(inc, full, "removing them all again")
    listing = sh("nft", "list", "table", "inet", "calico-lite", netns=inc.netns).stdout
    assert "web-from-clients" not in listing and "a/deny" in listing


def test_removing_the_last_policy_of_a_pod_deletes_its_chain_and_sets(fresh):
    inc, full = fresh
    world = World()
    world.policies["web-from-clients"] = np("a", "web-from-clients", CATALOGUE["web-from-clients"][1])
    with_policy = world.ruleset()
    assert any(n.startswith("ing_") for n in with_policy.chains)
    inc.call(inc.applier.sync, with_policy)
    world.policies.clear()
    without = world.ruleset()
    r = inc.call(inc.applier.update, without)
    assert r.mode == "update" and "chain-" in r.summary and "set-" in r.summary, r
    full.call(full.applier.sync, without)
    assert_equal_tables(inc, full, "removing the only policy")
    listing = sh("nft", "list", "table", "inet", "calico-lite", netns=inc.netns).stdout
    assert "ing_" not in listing and "_pods" not in listing


@settings(max_examples=25, deadline=None)
@given(seq=events)
def test_incremental_calculation_in_the_kernel_equals_a_fresh_full_load(nodes, seq):
    """policy.incremental, event by event through update(), leaves the same kernel table as one
    full sync of the full compile of the final state (random event sequences, real nftables)."""
    inc, full = nodes
    for n in nodes:
        n.call(n.applier.remove)
        n.applier = n.call(RulesetApplier)
    replay = Replay()
    inc.call(inc.applier.sync, replay.inc.ruleset())
    for event in seq:
        replay.apply(event)
        r = inc.call(inc.applier.update, replay.inc.ruleset())
        assert r.mode in ("update", "noop"), (event, r)
    final = replay.full()
    assert replay.inc.ruleset() == final
    full.call(full.applier.sync, final)
    assert_equal_tables(inc, full, f"{len(seq)} events")
