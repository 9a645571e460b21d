"""NetworkPolicy manifests, hand-made invalid and fuzzed with hypothesis.

Hand-made: each invalid manifest given to `calico-lite policy apply -f` (against a real agent
with its own etcd and a pod under a policy) exits 1 with one line naming the document and the
field, writes nothing, and leaves the node's nftables table exactly as it was.
Fuzzed: any generated document (near-valid NetworkPolicies with wrong values, wrong types and
junk in any field) either parses or raises PolicyError whose every line names a field; never
another exception. What parses round-trips through policy_to_dict, compiles, and loads into
a real nftables table (a scratch namespace). CI: 600 examples; `make soak`: 6,000.
"""
from __future__ import annotations

import json
import os

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from calico_lite import keys
from policy.compiler import compile_ruleset
from policy.manifests import PolicyError, parse_manifests, policy_to_dict
from policy.model import ContainerPort, Namespace, Pod
from tests.faults.agent_node import agent_node, wait_until
from tests.nft_node import nft_nodes

SOAK = os.environ.get("CALICO_LITE_SOAK", "") not in ("", "0")


def doc(spec: dict, name: str = "p", namespace: str = "a") -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def ports(*entries: dict) -> dict:
    return {"podSelector": {}, "ingress": [{"ports": list(entries)}]}


def peer(p: dict) -> dict:
    return {"podSelector": {}, "ingress": [{"from": [p]}]}


# (manifest, the field path and words the error must name)
INVALID = [
    (doc(peer({"ipBlock": {"cidr": "10.0.0.0/33"}})), "spec.ingress[0].from[0].ipBlock.cidr: '10.0.0.0/33': not a valid CIDR"),
    (doc(peer({"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}})),
     "spec.ingress[0].from[0].ipBlock.except[0]: '11.0.0.0/16' must be strictly within cidr 10.0.0.0/8"),
    (doc(ports({"port": 0})), "spec.ingress[0].ports[0].port: 0: must be a port number between 1 and 65535"),
    (doc(ports({"port": 80}, {"port": 70000})), "spec.ingress[0].ports[1].port: 70000: must be a port number"),
    (doc(ports({"port": 80}, {"port": 443, "endPort": 80})), "spec.ingress[0].ports[1].endPort: 80 is below port 443"),
    (doc(ports({"protocol": "ICMP", "port": 1})), "spec.ingress[0].ports[0].protocol: 'ICMP': must be one of TCP, UDP, SCTP"),
    (doc({"podSelector": {"matchExpressions": [{"key": "app", "operator": "Equals", "values": ["x"]}]}}),
     "spec.podSelector.matchExpressions[0].operator: 'Equals': must be one of"),
    (doc({"podSelector": {"matchExpressions": [{"key": "app", "operator": "In"}]}}),
     "spec.podSelector.matchExpressions[0].values: must be non-empty for operator In"),
    (doc({"podSelector": {"matchLabels": {"app": 5}}}), "spec.podSelector.matchLabels.app: 5: label values must be strings"),
    (doc({"podSelector": {}, "ingress": {"from": []}}), "spec.ingress: must be a list, got dict"),
    (doc({"podSelector": [], "policyTypes": ["Ingress"]}), "spec.podSelector: must be an object, got list"),
    (doc(ports({"port": "80x!"})), "spec.ingress[0].ports[0].port: '80x!': not a valid port name"),
    (doc(ports({"port": True})), "spec.ingress[0].ports[0].port: True: must be a port number"),
    (doc({"podSelector": {}, "policyTypes": ["Inbound"]}), "spec.policyTypes[0]: 'Inbound': must be Ingress or Egress"),
    (doc({"podSelector": {}}, name="Web_1"), "metadata.name: 'Web_1': must be a lowercase DNS subdomain"),
    (doc({"podSelector": {}}, name="web\n"), "metadata.name: 'web\\n': must be a lowercase DNS subdomain"),
    (doc(peer({"podSelector": None})), "spec.ingress[0].from[0]: must specify at least one of"),
]


def test_invalid_manifests_are_refused_naming_the_field_and_the_rules_are_untouched():
    with agent_node("pb") as node:
        node.put_pod_records()
        good = node.root / "good.yaml"
        good.write_text(yaml.safe_dump(doc({"podSelector": {"matchLabels": {"app": "x"}},
                                            "ingress": [{"ports": [{"port": 80}]}]}, name="web")))
        node.cli("policy", "apply", "-f", str(good))
        node.start_agent()
        wait_until(lambda: (node.ds("get", key=keys.policy_status(node.name)) or [{}])[0]
                   .get("policies") == 1, "the good policy in the agent's ruleset")
        before, records = node.kernel_table(), node.ds("list", prefix=keys.K8S_POLICIES)
        assert before and before["chain"], before
        # every bad document in one file after a good one: each reported on its own line, naming
        # its document and field; all or nothing, so the good one is not applied either
        manifest = node.root / "bad.yaml"
        manifest.write_text(yaml.safe_dump_all([doc({"podSelector": {}}, name="fine")] +
                                               [{**bad, "metadata": {"name": f"bad{i}", "namespace": "a"}}
                                                if bad["metadata"]["name"] == "p" else bad
                                                for i, (bad, _) in enumerate(INVALID)]))
        p = node.cli("policy", "apply", "-f", str(manifest), check=False)
        assert p.returncode == 1 and p.stdout == "" and "Traceback" not in p.stderr, (p.stdout, p.stderr)
        lines = p.stderr.strip().removeprefix("calico-lite: error: ").splitlines()
        assert len(lines) == len(INVALID), p.stderr
        for i, (line, (_, expected)) in enumerate(zip(lines, INVALID), start=2):
            assert line.startswith(f"{manifest}: doc {i} (") and expected in line, (expected, line)
        assert node.ds("list", prefix=keys.K8S_POLICIES) == records   # same revisions: nothing written
        wait_until(lambda: node.log_text().count('"event": "policy-sync"') >= 1, "a policy sync")
        assert node.kernel_table() == before
        assert node.agent_alive() and "Traceback" not in node.log_text()


# --- the fuzz -------------------------------------------------------------------------------

JUNK = st.recursive(st.none() | st.booleans() | st.integers(-2, 70000) | st.floats(allow_nan=False)
                    | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=6)
# per field: values Kubernetes accepts, values it refuses
VALUES = {
    "name": (["web", "a", "x-1", "a.b", "b"], ["", "Web", "-a", "a-", "a\n", "a b", "x" * 64, "ü"]),
    "key": (["app", "team", "k8s.io/app"], ["a/b/c", "/x", "x" * 64, "a\n", "ü", ""]),
    "value": (["x", "y", "a", "", "a-b"], ["-a", "x" * 64, "a\n", 3, None]),
    "cidr": (["10.244.0.0/16", "10.244.1.0/24", "10.244.0.5/32", "0.0.0.0/0", "192.0.2.0/24", "10.244.0.0/24"],
             ["10.244.0.1/16", "10.0.0.0/33", "fd00::/64", "::/0", "300.1.1.1/8", "10.244.0.0", "10.244.0.0/-1",
              " 10.0.0.0/8", ""]),
    "port": ([1, 80, 443, 8080, 65535, "http", "dns"],
             [0, -1, 65536, 70000, "80", "²", "HTTP", "a--b", "x" * 16, "", None, 1.5, True]),
    "protocol": (["TCP", "UDP", "SCTP"], ["tcp", "ICMP", "", None, 6]),
    "operator": (["In", "NotIn", "Exists", "DoesNotExist"], ["in", "Equals", None]),
    "policyType": (["Ingress", "Egress"], ["ingress", ""]),
    "apiVersion": (["networking.k8s.io/v1"], ["v1"]),
    "kind": (["NetworkPolicy"], ["Pod"]),
}


def documents(bad: int) -> st.SearchStrategy:
    """Lists of NetworkPolicy documents; each value is wrong (refused, or junk of any type)
    once in `bad` draws (0: only values Kubernetes accepts, in valid shapes)."""
    def v(field: str) -> st.SearchStrategy:
        good, wrong = VALUES[field]
        if not bad:
            return st.sampled_from(good)
        return st.one_of(*[st.sampled_from(good)] * (bad - 1), st.sampled_from(wrong) | st.text(max_size=6))

    def maybe(strategy):
        return strategy if not bad else st.one_of(*[strategy] * (2 * bad), JUNK)

    def optional(d: dict) -> st.SearchStrategy[dict]:
        return st.fixed_dictionaries({}, optional={k: maybe(x) for k, x in d.items()})

    expression = optional({"key": v("key"), "operator": v("operator"), "values": st.lists(v("value"), max_size=3)})
    selector = optional({"matchLabels": st.dictionaries(v("key"), v("value"), max_size=2),
                         "matchExpressions": st.lists(maybe(expression), max_size=2)})
    ipblock = optional({"cidr": v("cidr"), "except": st.lists(v("cidr"), max_size=2)})
    peer = optional({"podSelector": selector, "namespaceSelector": selector, "ipBlock": ipblock})
    port = optional({"protocol": v("protocol"), "port": v("port"), "endPort": v("port")})
    rule_from = optional({"from": st.lists(maybe(peer), max_size=3), "ports": st.lists(maybe(port), max_size=3)})
    rule_to = optional({"to": st.lists(maybe(peer), max_size=3), "ports": st.lists(maybe(port), max_size=3)})
    spec = optional({"podSelector": selector, "policyTypes": st.lists(v("policyType"), max_size=2),
                     "ingress": st.lists(maybe(rule_from), max_size=2), "egress": st.lists(maybe(rule_to), max_size=2)})
    document = st.fixed_dictionaries(
        {"apiVersion": v("apiVersion"), "kind": v("kind"),
         "metadata": maybe(optional({"name": v("name"), "namespace": v("name")}))},
        optional={"spec": maybe(spec)})
    return st.lists(maybe(document), min_size=1, max_size=2)


DOCUMENTS = documents(0) | documents(0) | documents(30) | documents(8)

PODS = [Pod("a", "web", "10.244.0.5", {"app": "x"}, [ContainerPort("http", "TCP", 8080)], "cali1", "n1"),
        Pod("a", "cli", "10.244.0.6", {"app": "y", "team": "a"}, [], "cali2", "n1"),
        Pod("b", "db", "10.244.1.7", {"app": "x"}, [ContainerPort("http", "TCP", 80)], None, "n2")]
NAMESPACES = [Namespace("a", {"team": "a"}), Namespace("b", {"team": "b"})]


def test_fuzzed_manifests_apply_or_fail_cleanly_and_what_applies_loads_into_nftables():
    outcome = {"applied": 0, "refused": 0, "policies": 0}
    with nft_nodes("pbz", ("fz",)) as (node,):

        @settings(max_examples=6000 if SOAK else 600, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(DOCUMENTS, st.sampled_from(["yaml", "json"]))
        def check(docs, form):
            text = yaml.safe_dump_all(docs) if form == "yaml" else "\n".join(json.dumps(d) for d in docs)
            try:
                policies = parse_manifests(text, "fuzz.yaml")
            except PolicyError as e:
                outcome["refused"] += 1
                for line in e.errors:   # source, document, then a field path (or the decoder's word)
                    assert line.startswith("fuzz.yaml: doc ") or line.startswith("fuzz.yaml: not valid"), line
                    assert "\n" not in line or line.startswith("fuzz.yaml: not valid"), line
                return
            outcome["applied"] += 1
            outcome["policies"] += len(policies)
            again = parse_manifests("\n".join(json.dumps(policy_to_dict(p)) for p in policies))
            assert again == policies
            node.call(node.applier.sync, compile_ruleset(policies, PODS, NAMESPACES, ["10.99.1.11"]))

        check()
    print(f"\n[manifest fuzz] {outcome['applied']} documents sets applied ({outcome['policies']} policies, "
          f"each loaded into nftables), {outcome['refused']} refused with field errors; no other outcome")
    assert outcome["applied"] and outcome["refused"]
