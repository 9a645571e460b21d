import json

import pytest
import yaml

from policy.manifests import PolicyError, parse_manifests, policy_to_dict
from policy.model import EGRESS, INGRESS, IPBlock, NetworkPolicyPort

FULL = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web
  namespace: shop
  labels: {owner: me}
  annotations: {note: x}
spec:
  podSelector:
    matchLabels: {app: web}
    matchExpressions:
    - {key: env, operator: NotIn, values: [prod]}
  ingress:
  - from:
    - podSelector: {matchLabels: {role: client}}
    - namespaceSelector: {matchLabels: {team: x}}
      podSelector: {}
    - namespaceSelector: {}
    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}
    ports:
    - port: http
    - {port: 8000, endPort: 8100}
    - {protocol: UDP, port: 53}
    - {protocol: SCTP}
  egress:
  - to: [{ipBlock: {cidr: 0.0.0.0/0}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all}
spec: {podSelector: {}}
"""


def bad(spec: str, name="x", ns="x", doc_prefix="") -> str:
    text = doc_prefix + f"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n"
    return text + "\n".join("  " + line for line in spec.strip("\n").splitlines()) + "\n"


def errors_of(text: str) -> str:
    with pytest.raises(PolicyError) as e:
        parse_manifests(text, "f.yaml")
    return str(e.value)


def test_parse_full_policy():
    web, deny = parse_manifests(FULL)
    assert (web.namespace, web.name, deny.namespace, deny.name) == ("shop", "web", "default", "deny-all")
    assert web.policy_types == (INGRESS, EGRESS)
    assert deny.policy_types == (INGRESS,) and deny.ingress == () and deny.pod_selector.is_empty()
    peers = web.ingress[0].peers
    assert peers[0].namespace_selector is None and peers[0].pod_selector.match_labels == (("role", "client"),)
    assert peers[1].namespace_selector is not None and peers[1].pod_selector.is_empty()
    assert peers[2].namespace_selector.is_empty() and peers[2].pod_selector is None
    assert peers[3].ip_block == IPBlock("10.0.0.0/8", ("10.1.0.0/16",))
    assert web.ingress[0].ports == (NetworkPolicyPort("TCP", "http"), NetworkPolicyPort("TCP", 8000, 8100),
                                    NetworkPolicyPort("UDP", 53), NetworkPolicyPort("SCTP", None))


@pytest.mark.parametrize("spec,types", [
    ("podSelector: {}", (INGRESS,)),
    ("podSelector: {}\ningress: [{}]", (INGRESS,)),
    ("podSelector: {}\negress: [{}]", (INGRESS, EGRESS)),
    ("podSelector: {}\npolicyTypes: [Egress]", (EGRESS,)),
    ("podSelector: {}\npolicyTypes: [Egress, Ingress]", (INGRESS, EGRESS)),
    ("podSelector: {}\npolicyTypes: [Ingress]\negress: [{}]", (INGRESS,)),
])
def test_policy_types_inference(spec, types):
    assert parse_manifests(bad(spec))[0].policy_types == types


def test_list_and_json_and_json_stream():
    web, deny = parse_manifests(FULL)
    items = [policy_to_dict(web), policy_to_dict(deny)]
    as_list = {"apiVersion": "v1", "kind": "List", "items": items}
    assert parse_manifests(yaml.safe_dump(as_list)) == [web, deny]
    assert parse_manifests(json.dumps(as_list)) == [web, deny]
    assert parse_manifests(json.dumps(items[0]) + "\n" + json.dumps(items[1])) == [web, deny]
    assert parse_manifests(json.dumps({"kind": "NetworkPolicyList", "apiVersion": "networking.k8s.io/v1",
                                       "items": items})) == [web, deny]


def test_round_trip():
    policies = parse_manifests(FULL)
    again = parse_manifests(yaml.safe_dump_all([policy_to_dict(p) for p in policies]))
    assert again == policies
    d = policy_to_dict(policies[1])
    assert d["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}


def test_empty_documents_are_skipped():
    assert parse_manifests("---\n---\n") == []
    assert len(parse_manifests("---\n" + FULL + "\n---\n")) == 2


def test_non_network_policy_rejected():
    msg = errors_of("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n")
    assert "f.yaml: doc 1 (default/c): kind: 'ConfigMap': only NetworkPolicy is accepted here" in msg
    assert "apiVersion" in errors_of(bad("podSelector: {}").replace("networking.k8s.io/v1", "extensions/v1beta1"))


def test_error_names_doc_name_and_field_path():
    text = bad("podSelector: {}") + "---\n" + bad("""
podSelector: {}
ingress:
- ports:
  - port: 80
  - port: http2_x""", name="deny-all")
    msg = errors_of(text)
    assert msg.startswith("f.yaml: doc 2 (x/deny-all): spec.ingress[0].ports[1].port: 'http2_x'"), msg


def test_all_errors_reported_together():
    text = bad("podSelector: {}\npolicyTypes: [Sideways]", name="a") + "---\n" + bad("podselector: {}", name="b")
    with pytest.raises(PolicyError) as e:
        parse_manifests(text, "f.yaml")
    assert len(e.value.errors) == 2
    assert "doc 1 (x/a): spec.policyTypes[0]: 'Sideways'" in e.value.errors[0]
    assert "doc 2 (x/b): spec.podselector: unknown field" in e.value.errors[1]


def test_list_item_errors_name_the_item():
    doc = {"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "ok"}, "spec": {}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "nope", "namespace": "q"},
         "spec": {"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]}}]}
    msg = errors_of(json.dumps(doc))
    assert "doc 1 (q/nope): items[1].spec.egress[0].to[0].ipBlock.cidr: '10.0.0.0/33'" in msg


@pytest.mark.parametrize("spec,needle", [
    ("podSelector: {matchExpressions: [{key: a, operator: In}]}", "spec.podSelector.matchExpressions[0].values: must be non-empty"),
    ("podSelector: {matchExpressions: [{key: a, operator: Exists, values: [x]}]}", "matchExpressions[0].values: must be empty"),
    ("podSelector: {matchExpressions: [{key: a, operator: Equals, values: [x]}]}", "matchExpressions[0].operator: 'Equals'"),
    ("podSelector: {matchLabels: {'bad key!': x}}", "spec.podSelector.matchLabels: 'bad key!'"),
    ("podSelector: {matchLabels: {app: 5}}", "spec.podSelector.matchLabels.app: 5: label values must be strings"),
    ("ingress: [{from: [{}]}]", "spec.ingress[0].from[0]: must specify at least one"),
    ("ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]", "ipBlock may not be combined"),
    ("ingress: [{from: [{ipBlock: {cidr: 10.0.0.1/8}}]}]", "ipBlock.cidr: '10.0.0.1/8': not a valid CIDR"),
    ("ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]}]", "ipBlock.except[0]: '11.0.0.0/16' must be strictly within"),
    ("ingress: [{from: [{ipBlock: {except: [11.0.0.0/16]}}]}]", "ipBlock.cidr: required"),
    ("ingress: [{ports: [{port: 0}]}]", "spec.ingress[0].ports[0].port: 0: must be a port number"),
    ("ingress: [{ports: [{port: 70000}]}]", "ports[0].port: 70000"),
    ("ingress: [{ports: [{port: 80, protocol: ICMP}]}]", "ports[0].protocol: 'ICMP'"),
    ("ingress: [{ports: [{port: http, endPort: 90}]}]", "ports[0].endPort: may only be set with a numeric port"),
    ("ingress: [{ports: [{endPort: 90}]}]", "ports[0].endPort: may only be set with a numeric port"),
    ("ingress: [{ports: [{port: 100, endPort: 90}]}]", "ports[0].endPort: 90 is below port 100"),
    ("ingress: [{ports: [{port: a-very-long-port-name}]}]", "not a valid port name"),
    ("ingress: [{ports: [{port: '123'}]}]", None),
    ("egress: [{to: [{podSelector: {}}], port: [{port: 80}]}]", "spec.egress[0].port: unknown field"),
    ("ingress: {from: []}", "spec.ingress: must be a list"),
    ("policyTypes: [Ingress, Ingress]", "duplicate"),
])
def test_validation_errors(spec, needle):
    text = bad(spec)
    if needle is None:
        assert parse_manifests(text)[0].ingress[0].ports[0].port == 123
        return
    assert needle in errors_of(text)


def test_metadata_problems():
    assert "metadata.name: required" in errors_of("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nspec: {}\n")
    assert "metadata.name: 'Web'" in errors_of(bad("podSelector: {}", name="Web"))
    assert "metadata.namespace: 'a_b'" in errors_of(bad("podSelector: {}", ns="a_b"))


def test_duplicate_policy_names():
    assert "x/x already defined in doc 1" in errors_of(bad("podSelector: {}", name="x") + "---\n" + bad("podSelector: {}", name="x"))


def test_garbage_input():
    assert "not valid YAML or JSON" in errors_of("a: [b\n")
    assert "doc 1 (unnamed): <document>: must be an object" in errors_of("- 1\n- 2\n")
