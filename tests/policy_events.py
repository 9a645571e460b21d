"""Random policy event sequences (hypothesis strategies) and a replay that checks each step.

A small universe so that events collide often: three namespaces, eight pod identities sharing five
addresses (set elements are reference-counted by address), a few label values, named ports, and
policies of every peer kind. `Replay` applies events to an IncrementalRuleset and keeps the plain
inputs, so the full compile (the oracle) of the same state is always at hand.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import strategies as st

from policy.compiler import compile_ruleset
from policy.incremental import IncrementalRuleset
from policy.model import (
    ContainerPort, IPBlock, LabelSelector, LabelSelectorRequirement, Namespace, NetworkPolicy, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicyRule, Pod,
)
from policy.ruleset import Ruleset

NODE_IP = "10.241.0.1"
NAMESPACES = ("a", "b", "c")
ADDRESSES = ("10.240.0.1", "10.240.0.2", "10.240.0.3", "10.240.1.1", "198.51.100.7", "")

labels = st.dictionaries(st.sampled_from(("app", "tier", "team")), st.sampled_from(("x", "y", "z")), max_size=2)
requirement = st.one_of(  # valid ones only: In/NotIn need values, Exists/DoesNotExist take none
    st.builds(LabelSelectorRequirement, st.sampled_from(("app", "tier", "team")), st.sampled_from(("In", "NotIn")),
              st.sampled_from((("x",), ("x", "y")))),
    st.builds(LabelSelectorRequirement, st.sampled_from(("app", "tier", "team")),
              st.sampled_from(("Exists", "DoesNotExist"))))
selector = st.builds(LabelSelector.of, labels, st.lists(requirement, max_size=1))
peer = st.one_of(
    st.builds(NetworkPolicyPeer, pod_selector=selector),
    st.builds(NetworkPolicyPeer, namespace_selector=selector),
    st.builds(NetworkPolicyPeer, pod_selector=selector, namespace_selector=selector),
    st.sampled_from([NetworkPolicyPeer(ip_block=IPBlock(c, x)) for c, x in (
        ("10.240.0.0/16", ()), ("10.240.0.0/16", ("10.240.1.0/24",)), ("198.51.100.0/24", ("198.51.100.0/29",)))]),
)
port = st.one_of(st.builds(NetworkPolicyPort, st.sampled_from(("TCP", "UDP")), st.sampled_from((None, 80, "http", "dns"))),
                 st.just(NetworkPolicyPort("TCP", 8000, 8100)))
rule = st.builds(NetworkPolicyRule, st.lists(peer, max_size=2).map(tuple), st.lists(port, max_size=2).map(tuple))
policy = st.builds(
    lambda ns, name, sel, types, ing, eg: NetworkPolicy(ns, name, sel, types, tuple(ing), tuple(eg)),
    st.sampled_from(NAMESPACES), st.sampled_from(("p1", "p2", "p3")), selector,
    st.sampled_from((("Ingress",), ("Egress",), ("Ingress", "Egress"))),
    st.lists(rule, max_size=2), st.lists(rule, max_size=2))
container_ports = st.lists(st.sampled_from((ContainerPort("http", "TCP", 8080), ContainerPort("http", "TCP", 9090),
                                            ContainerPort("dns", "UDP", 53))), max_size=2, unique=True)


@st.composite
def pod_event(draw):
    i = draw(st.integers(0, 7))
    if draw(st.integers(0, 4)) == 0:
        return ("pod", i, None)
    local = draw(st.booleans())
    return ("pod", i, Pod(draw(st.sampled_from(NAMESPACES)), f"pod{i}", draw(st.sampled_from(ADDRESSES)),
                          draw(labels), draw(container_ports), f"cali{i}" if local else None,
                          "n1" if local else "n2"))


namespace_event = st.tuples(st.just("ns"), st.sampled_from(NAMESPACES), st.one_of(st.none(), labels))
policy_event = st.one_of(
    policy.map(lambda p: ("policy", p.key, p)),
    st.tuples(st.just("policy"), st.sampled_from([f"{n}/p{i}" for n in NAMESPACES for i in (1, 2, 3)]), st.none()))
events = st.lists(st.one_of(pod_event(), pod_event(), namespace_event, policy_event), min_size=1, max_size=40)


@dataclass
class Replay:
    inc: IncrementalRuleset = field(default_factory=lambda: IncrementalRuleset([NODE_IP]))
    pods: dict = field(default_factory=dict)
    namespaces: dict = field(default_factory=dict)
    policies: dict = field(default_factory=dict)

    def apply(self, event) -> None:
        kind, key, value = event
        store = {"pod": self.pods, "ns": self.namespaces, "policy": self.policies}[kind]
        if value is None:
            store.pop(key, None)
            {"pod": self.inc.remove_pod, "ns": self.inc.remove_namespace, "policy": self.inc.remove_policy}[kind](key)
            return
        if kind == "ns":
            value = Namespace(key, dict(value))
        store[key] = value
        if kind == "pod":
            self.inc.set_pod(key, value)
        elif kind == "ns":
            self.inc.set_namespace(value)
        else:
            self.inc.set_policy(value)

    def full(self) -> Ruleset:
        return compile_ruleset(self.policies.values(), self.pods.values(), self.namespaces.values(), [NODE_IP])
