"""render_update when policies come and go: sets and chains are created, refilled and deleted in
one transaction, each before anything refers to it and after nothing refers to it any more."""
import pytest

from policy.compiler import INGRESS_MAP, compile_ruleset, rule_stem
from policy.manifests import parse_manifests
from policy.model import INGRESS, ContainerPort, Namespace, Pod
from policy.ruleset import Chain, NftSet, Ruleset, render_update

NS = [Namespace("a", {"team": "alpha"}), Namespace("b", {"team": "beta"})]
T = "inet calico-lite"


def pods():
    return [
        Pod("a", "web", "10.240.1.1", {"app": "web"}, [ContainerPort("http", "TCP", 8080)], "caliweb", "n1"),
        Pod("a", "cli", "10.240.1.2", {"app": "client"}, [], "calicli", "n1"),
        Pod("b", "db", "10.240.2.1", {"app": "db"}, [], None, "n2"),
    ]


def np(ns, name, spec):
    body = "\n".join("  " + line for line in spec.strip("\n").splitlines())
    return parse_manifests(f"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
                           f"metadata: {{name: {name}, namespace: {ns}}}\nspec:\n{body}\n")


WEB = np("a", "web", """
podSelector: {matchLabels: {app: web}}
ingress:
- from: [{podSelector: {matchLabels: {app: client}}}, {ipBlock: {cidr: 192.0.2.0/24, except: [192.0.2.0/25]}}]""")
DENY = np("a", "deny", "podSelector: {}\npolicyTypes: [Ingress]")


def compile_(policies):
    return compile_ruleset(policies, pods(), NS, ["10.241.0.1"])


def position(text: str, prefix: str) -> int:
    """Index of the first line starting with prefix (so `add rule` lines are not mistaken)."""
    lines = text.splitlines()
    return next(i for i, line in enumerate(lines) if line.startswith(prefix))


def test_adding_a_policy_creates_its_sets_before_the_rules_and_dispatch_that_use_them():
    old, new = compile_(DENY), compile_(DENY + WEB)
    text, summary = render_update(old, new)
    stem = rule_stem(WEB[0], INGRESS, 0)
    assert summary == "set+2 chain~1", summary  # ing_caliweb refilled; no new dispatch entry
    pods_set = position(text, f"add set {T} {stem}_pods ")
    cidrs_set = position(text, f"add set {T} {stem}_cidrs ")
    assert "flags interval;" in text.splitlines()[cidrs_set]
    assert "elements = { 192.0.2.128/25 }" in text.splitlines()[cidrs_set]
    assert "elements = { 10.240.1.2 }" in text.splitlines()[pods_set]
    flush = position(text, f"flush chain {T} ing_caliweb")
    rule = position(text, f"add rule {T} ing_caliweb ip saddr @{stem}_pods")
    assert max(pods_set, cidrs_set) < flush < rule
    assert "calicli" not in text  # the other pod's chain is untouched


def test_removing_a_policy_flushes_its_chains_before_deleting_its_sets():
    old, new = compile_(DENY + WEB), compile_(DENY)
    text, summary = render_update(old, new)
    stem = rule_stem(WEB[0], INGRESS, 0)
    assert summary == "set-2 chain~1", summary
    flush = position(text, f"flush chain {T} ing_caliweb")
    assert flush < position(text, f"delete set {T} {stem}_pods") and flush < position(text, f"delete set {T} {stem}_cidrs")
    assert not any(line.startswith("add rule") and stem in line for line in text.splitlines())


def test_first_policy_for_a_pod_creates_chain_then_dispatch_last_removes_dispatch_first():
    old, new = compile_([]), compile_(WEB)
    text, summary = render_update(old, new)
    assert summary == "map+1 set+2 chain+1", summary
    assert position(text, f"add set {T}") < position(text, f"add chain {T} ing_caliweb") \
        < position(text, f"add element {T} {INGRESS_MAP}")
    back, summary = render_update(new, old)
    assert summary == "map-1 set-2 chain-1", summary
    assert position(back, f"delete element {T} {INGRESS_MAP}") < position(back, f"flush chain {T} ing_caliweb") \
        < position(back, f"delete chain {T} ing_caliweb") < position(back, f"delete set {T}")


def test_set_with_same_name_but_new_type_or_comment_needs_a_full_sync():
    a = Ruleset(sets={"s": NftSet("s", "ipv4_addr")})
    assert render_update(a, Ruleset(sets={"s": NftSet("s", "ipv4_addr", True)})) == (None, "set s retyped")
    assert render_update(a, Ruleset(sets={"s": NftSet("s", "ipv4_addr", comment="x")}))[0] is None
    # a set coming or going is not structural
    assert render_update(a, Ruleset())[0] == f"delete set {T} s\n"
    assert render_update(Ruleset(), a)[0] == f"add set {T} s {{ type ipv4_addr; }}\n"


@pytest.mark.parametrize("change", ["hook", "comment"])
def test_regular_chain_changes_that_cannot_be_made_in_place_are_structural(change):
    a = Ruleset(chains={"c": Chain("c")})
    b = Ruleset(chains={"c": Chain("c", hook="forward") if change == "hook" else Chain("c", comment="x")})
    assert render_update(a, b)[0] is None


def test_maps_coming_or_going_stay_structural():
    old = compile_(DENY)
    new = compile_(DENY)
    del new.maps[INGRESS_MAP]
    assert render_update(old, new) == (None, "maps added, removed or retyped")


# --- which UDP flows a change makes us forget (policy.conntrack.flows_to_forget) ---------
def test_flows_forgotten_after_a_change_are_only_those_it_can_affect():
    from policy.conntrack import flows_to_forget
    from policy.model import Pod
    a = Pod("n", "a", "10.0.0.1", {"app": "x"}, interface="cali1")
    b = Pod("n", "b", "10.0.0.2", {"app": "y"}, interface="cali2")
    remote = Pod("n", "r", "10.0.1.1", {"app": "x"}, node="other")
    before = {"a": a, "b": b, "r": remote}
    # a new pod: nothing to forget (the ADD path does no conntrack dump)
    assert flows_to_forget(before, {**before, "c": Pod("n", "c", "10.0.0.3", interface="cali3")}, False) == set()
    # a relabelled pod, local or remote: its own flows only
    assert flows_to_forget(before, {**before, "r": Pod("n", "r", "10.0.1.1", {"app": "z"}, node="other")},
                           False) == {"10.0.1.1"}
    # a pod gone: its address
    assert flows_to_forget(before, {"a": a, "r": remote}, False) == {"10.0.0.2"}
    # its veth renamed only: policy matches nothing of that
    assert flows_to_forget(before, {**before, "a": Pod("n", "a", "10.0.0.1", {"app": "x"}, interface="caliX")},
                           False) == set()
    # a policy or namespace changed: every local pod
    assert flows_to_forget(before, before, True) == {"10.0.0.1", "10.0.0.2"}
