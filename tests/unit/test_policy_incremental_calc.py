"""The incremental calculation equals the full compile (its oracle) after every event of random
sequences: pods added, changed and removed (shared addresses, named ports, local or not),
namespaces relabelled, policies of every peer kind added, replaced and removed."""
from hypothesis import example, given, settings

from policy.incremental import IncrementalRuleset
from policy.model import (
    ContainerPort, LabelSelector, Namespace, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicyRule, Pod,
)
from policy.ruleset import render_nft, render_update
from tests.policy_events import NODE_IP, Replay, events


def canonical(rs) -> str:
    """The rendered table with set and chain order fixed (dict order is not part of a Ruleset)."""
    return render_nft(type(rs)(sets=dict(sorted(rs.sets.items())), maps=dict(sorted(rs.maps.items())),
                               chains=dict(sorted(rs.chains.items()))))


_SEL = LabelSelector.of
_SHARED_ADDRESS = [  # egress to pods labelled x on named port http: pod 2 shares pod 1's address and
    # declares the port, so it is covered through pod 1's match (the full compile matches by address)
    ("policy", "a/p1", NetworkPolicy("a", "p1", _SEL(), ("Egress",), (), (NetworkPolicyRule(
        (NetworkPolicyPeer(pod_selector=_SEL({"app": "x"})),), (NetworkPolicyPort("TCP", "http"),)),))),
    ("pod", 2, Pod("a", "pod2", "10.240.0.1", {"app": "y"}, [ContainerPort("http", "TCP", 8080)], None, "n2")),
    ("pod", 1, Pod("a", "pod1", "10.240.0.1", {"app": "x"}, [], "cali1", "n1")),
    ("pod", 1, None),
]


@settings(max_examples=300, deadline=None)
@given(events)
@example(_SHARED_ADDRESS)
def test_incremental_equals_full_compile_after_every_event(seq):
    replay = Replay()
    for event in seq:
        replay.apply(event)
        inc, full = replay.inc.ruleset(), replay.full()
        assert inc == full, event
        assert canonical(inc) == canonical(full)
        assert render_update(full, inc) == ("", "no change")


def test_a_pod_event_leaves_other_pods_chains_and_unrelated_sets_as_the_same_objects():
    inc = IncrementalRuleset([NODE_IP])
    inc.set_namespace(Namespace("a", {"team": "x"}))
    sel = LabelSelector.of
    inc.set_policy(NetworkPolicy("a", "web", sel({"app": "web"}), ("Ingress",),
                                 (NetworkPolicyRule((NetworkPolicyPeer(pod_selector=sel({"app": "cli"})),)),)))
    inc.set_policy(NetworkPolicy("a", "db", sel({"app": "db"}), ("Ingress",),
                                 (NetworkPolicyRule((NetworkPolicyPeer(pod_selector=sel({"app": "web"})),)),)))
    inc.set_pod("w", Pod("a", "w", "10.240.0.1", {"app": "web"}, [], "caliw", "n1"))
    inc.set_pod("d", Pod("a", "d", "10.240.0.2", {"app": "db"}, [], "calid", "n1"))
    before = inc.ruleset()
    inc.set_pod("c", Pod("a", "c", "10.240.0.3", {"app": "cli"}, [], None, "n2"))
    after = inc.ruleset()
    changed_sets = {n for n in after.sets if after.sets[n] is not before.sets.get(n)}
    assert len(changed_sets) == 1 and next(iter(changed_sets)).endswith("_pods")
    assert all(after.chains[n] is before.chains[n] for n in before.chains)
    assert after.maps == before.maps
