import ipaddress

import pytest

from policy.compiler import (
    EGRESS_MAP, INGRESS_MAP, LOCAL_IFACES, NODE_IPS, POD_IF_ADDR, compile_ruleset, ipblock_networks, rule_stem,
)
from policy.manifests import parse_manifests
from policy.model import EGRESS, INGRESS, ContainerPort, IPBlock, Namespace, NetworkPolicyPeer, Pod
from policy.ruleset import Chain, Rule, render_nft, render_update

NS = [Namespace("a", {"team": "alpha"}), Namespace("b", {"team": "beta"})]


def pods():
    return [
        Pod("a", "web", "10.240.1.1", {"app": "web"}, [ContainerPort("http", "TCP", 8080)], "caliweb", "n1"),
        Pod("a", "cli", "10.240.1.2", {"app": "client"}, [ContainerPort("dns", "UDP", 53)], "calicli", "n1"),
        Pod("b", "db", "10.240.2.1", {"app": "db"}, [ContainerPort("http", "TCP", 9000)], None, "n2"),
        Pod("b", "cli2", "10.240.2.2", {"app": "client"}, [], None, "n2"),
    ]


def np(ns, name, spec):
    body = "\n".join("  " + line for line in spec.strip("\n").splitlines())
    return parse_manifests(f"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
                           f"metadata: {{name: {name}, namespace: {ns}}}\nspec:\n{body}\n")


def rules_text(rs, chain):
    return [r.render() for r in rs.chains[chain].rules]


def test_no_policies_only_base_and_antispoof():
    rs = compile_ruleset([], pods(), NS, ["10.241.0.1", "fd00::1"])
    assert set(rs.chains) == {"forward", "input"}
    assert rs.maps[INGRESS_MAP].elements == () and rs.maps[EGRESS_MAP].elements == ()
    assert rs.sets[LOCAL_IFACES].elements == {'"caliweb"', '"calicli"'}
    assert rs.sets[POD_IF_ADDR].elements == {'"caliweb" . 10.240.1.1', '"calicli" . 10.240.1.2'}
    assert rs.sets[NODE_IPS].elements == {"10.241.0.1"}
    fwd = rules_text(rs, "forward")
    assert fwd[0].startswith("iifname @local_pod_ifaces iifname . ip saddr != @pod_if_addr drop")
    assert fwd[2] == "ct state established,related accept" and fwd[3] == "ct state invalid drop"
    assert fwd[4].startswith("iifname vmap @egress_dispatch") and fwd[5].startswith("oifname vmap @ingress_dispatch")
    assert rs.chains["forward"].hook == "forward" and rs.chains["input"].hook == "input"


def test_default_deny_ingress_shape():
    rs = compile_ruleset(np("a", "deny", "podSelector: {}"), pods(), NS, [])
    assert rs.maps[INGRESS_MAP].as_dict() == {"calicli": "ing_calicli", "caliweb": "ing_caliweb"}
    assert rs.maps[EGRESS_MAP].elements == ()
    body = rules_text(rs, "ing_caliweb")
    assert body[0].startswith("ip saddr @node_ips accept")
    assert body[-1].startswith("drop comment \"a/web: default deny (a/deny)\"")
    assert len(body) == 2


def test_pods_in_other_namespaces_not_selected():
    rs = compile_ruleset(np("b", "deny", "podSelector: {}"), pods(), NS, [])
    assert [c for c in rs.chains if c.startswith(("ing_", "egr_"))] == []


def test_peer_sets_pod_namespace_and_both():
    pol = np("a", "web", """
podSelector: {matchLabels: {app: web}}
ingress:
- from: [{podSelector: {matchLabels: {app: client}}}]
- from: [{namespaceSelector: {matchLabels: {team: beta}}}]
- from: [{namespaceSelector: {matchLabels: {team: beta}}, podSelector: {matchLabels: {app: client}}}]
- from: [{namespaceSelector: {}}]""")
    rs = compile_ruleset(pol, pods(), NS, [])
    assert rs.sets[f"{rule_stem(pol[0], INGRESS, 0)}_pods"].elements == {"10.240.1.2"}
    assert rs.sets[f"{rule_stem(pol[0], INGRESS, 1)}_pods"].elements == {"10.240.2.1", "10.240.2.2"}
    assert rs.sets[f"{rule_stem(pol[0], INGRESS, 2)}_pods"].elements == {"10.240.2.2"}
    assert rs.sets[f"{rule_stem(pol[0], INGRESS, 3)}_pods"].elements == {p.ip for p in pods()}
    body = rules_text(rs, "ing_caliweb")
    assert f"ip saddr @{rule_stem(pol[0], INGRESS, 0)}_pods accept comment \"a/web ingress[0]\"" in body
    assert "calicli" not in rs.maps[INGRESS_MAP].as_dict()


def test_namespace_missing_from_list_still_has_name_label():
    pol = np("a", "x", """
podSelector: {}
ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: c}}}]}]""")
    extra = Pod("c", "p", "10.240.3.3", {}, [], None, None)
    rs = compile_ruleset(pol, pods() + [extra], NS, [])
    assert rs.sets[f"{rule_stem(pol[0], INGRESS, 0)}_pods"].elements == {"10.240.3.3"}


def test_ipblock_except_makes_interval_set():
    pol = np("a", "x", """
podSelector: {}
ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/24, except: [10.0.0.128/25, 10.0.0.0/26]}}, {ipBlock: {cidr: 'fd00::/64'}}]}]""")
    rs = compile_ruleset(pol, pods(), NS, [])
    s = rs.sets[f"{rule_stem(pol[0], INGRESS, 0)}_cidrs"]
    assert s.interval and s.elements == {"10.0.0.64/26"}


def test_ipblock_networks_union_and_excepts():
    nets = ipblock_networks([NetworkPolicyPeer(ip_block=IPBlock("10.0.0.0/8", ("10.1.0.0/16",))),
                             NetworkPolicyPeer(ip_block=IPBlock("10.1.2.0/24"))])
    covered = lambda ip: any(ipaddress.ip_address(ip) in n for n in nets)  # noqa: E731
    assert covered("10.0.0.1") and covered("10.1.2.3") and not covered("10.1.3.1") and not covered("11.0.0.1")
    assert all(not a.overlaps(b) for i, a in enumerate(nets) for b in nets[i + 1:])


def test_ports_named_ranges_protocols():
    pol = np("a", "x", """
podSelector: {}
ingress:
- ports: [{port: http}, {port: 8000, endPort: 8100}, {port: 7000}, {port: 7001}, {protocol: UDP, port: dns}, {protocol: SCTP}]""")
    rs = compile_ruleset(pol, pods(), NS, [])
    web = rules_text(rs, "ing_caliweb")
    assert web[1].startswith("meta l4proto sctp accept")
    assert web[2].startswith("meta l4proto . th dport { tcp . 7000-7001, tcp . 8000-8100 } accept"), web
    cli = rules_text(rs, "ing_calicli")
    assert cli[2].startswith("meta l4proto . th dport { tcp . 7000-7001, tcp . 8000-8100, udp . 53 } accept"), cli


def test_unresolvable_named_port_matches_nothing():
    pol = np("a", "x", "podSelector: {}\ningress: [{ports: [{port: nope}]}]")
    rs = compile_ruleset(pol, pods(), NS, [])
    assert len(rules_text(rs, "ing_caliweb")) == 2  # node accept + default deny: nothing opened


def test_egress_named_port_set_resolves_on_peers():
    pol = np("a", "x", """
podSelector: {matchLabels: {app: client}}
policyTypes: [Egress]
egress:
- to: [{namespaceSelector: {}}]
  ports: [{port: http}, {port: 443}]
- ports: [{protocol: UDP, port: dns}]""")
    rs = compile_ruleset(pol, pods(), NS, [])
    assert rs.sets[f"{rule_stem(pol[0], EGRESS, 0)}_named"].elements == {"10.240.1.1 . tcp . 8080", "10.240.2.1 . tcp . 9000"}
    assert rs.sets[f"{rule_stem(pol[0], EGRESS, 1)}_named"].elements == {"10.240.1.2 . udp . 53"}
    body = rules_text(rs, "egr_calicli")
    assert body[0].startswith("ip daddr @node_ips return")
    assert f"ip daddr @{rule_stem(pol[0], EGRESS, 0)}_pods meta l4proto . th dport {{ tcp . 443 }} return comment \"a/x egress[0]\"" in body
    assert f"ip daddr . meta l4proto . th dport @{rule_stem(pol[0], EGRESS, 0)}_named return comment \"a/x egress[0]\"" in body
    assert body[-1].startswith("drop")
    assert rs.maps[EGRESS_MAP].as_dict() == {"calicli": "egr_calicli"} and rs.maps[INGRESS_MAP].elements == ()


def test_empty_rule_allows_everything():
    rs = compile_ruleset(np("a", "x", "podSelector: {}\ningress: [{}]"), pods(), NS, [])
    assert rules_text(rs, "ing_caliweb")[1] == 'accept comment "a/x ingress[0]"'


def test_several_policies_add_up_in_one_chain():
    pols = np("a", "p1", "podSelector: {}\ningress: [{ports: [{port: 1}]}]") + \
        np("a", "p2", "podSelector: {matchLabels: {app: web}}\ningress: [{ports: [{port: 2}]}]")
    rs = compile_ruleset(pols, pods(), NS, [])
    body = rules_text(rs, "ing_caliweb")
    assert any("tcp . 1 }" in r for r in body) and any("tcp . 2 }" in r for r in body)
    assert "(a/p1, a/p2)" in body[-1]
    assert not any("tcp . 2 }" in r for r in rules_text(rs, "ing_calicli"))


def test_render_is_one_replace_with_chains_before_maps():
    rs = compile_ruleset(np("a", "deny", "podSelector: {}"), pods(), NS, ["10.241.0.1"])
    text = render_nft(rs)
    assert text.startswith("table inet calico-lite\ndelete table inet calico-lite\ntable inet calico-lite {\n")
    assert text.index("chain ing_caliweb") < text.index("map ingress_dispatch") < text.index("chain forward")
    assert '"caliweb" : jump ing_caliweb' in text
    assert "type filter hook forward priority filter; policy accept;" in text


def test_update_for_new_pod_touches_only_elements_and_its_chain():
    pol = np("a", "web", "podSelector: {}\ningress: [{from: [{podSelector: {matchLabels: {app: client}}}]}]")
    old = compile_ruleset(pol, pods(), NS, [])
    new = compile_ruleset(pol, pods() + [Pod("a", "c3", "10.240.1.3", {"app": "client"}, [], "calic3", "n1")], NS, [])
    text, summary = render_update(old, new)
    lines = text.splitlines()
    assert "add chain inet calico-lite ing_calic3" in lines
    assert 'add element inet calico-lite ingress_dispatch { "calic3" : jump ing_calic3 }' in lines
    assert f"add element inet calico-lite {rule_stem(pol[0], INGRESS, 0)}_pods {{ 10.240.1.3 }}" in lines
    assert not any("caliweb" in line for line in lines)
    assert summary == "map+1 elem+3 chain+1"
    back, summary = render_update(new, old)
    assert "delete chain inet calico-lite ing_calic3" in back and summary == "map-1 elem-3 chain-1"
    assert back.index('delete element inet calico-lite ingress_dispatch { "calic3" }') < back.index("delete chain")
    assert render_update(old, old) == ("", "no change")


def test_update_label_change_rewrites_only_that_chain():
    pol = np("a", "web", "podSelector: {matchLabels: {app: web}}\ningress: [{ports: [{port: 1}]}]")
    before = pods()
    after = pods()
    after[1].labels = {"app": "web"}  # calicli becomes selected
    text, summary = render_update(compile_ruleset(pol, before, NS, []), compile_ruleset(pol, after, NS, []))
    assert "add chain inet calico-lite ing_calicli" in text and "caliweb" not in text


def test_policy_change_is_incremental_but_base_chain_change_is_structural():
    a = compile_ruleset(np("a", "p1", "podSelector: {}"), pods(), NS, [])
    b = compile_ruleset(np("a", "p1", "podSelector: {}\ningress: [{from: [{podSelector: {}}]}]"), pods(), NS, [])
    text, summary = render_update(a, b)
    assert text is not None and "set+1" in summary and "chain~2" in summary, summary
    c = compile_ruleset(np("a", "p1", "podSelector: {}"), pods(), NS, [])
    c.chains["forward"] = Chain("forward", (Rule((), "accept"),), hook="forward")
    assert render_update(a, c) == (None, "base chains changed")


def test_non_ipv4_and_ipless_pods_ignored():
    extra = [Pod("a", "v6", "fd00::5", {}, [], "caliv6", "n1"), Pod("a", "pending", "", {}, [], None, None)]
    rs = compile_ruleset(np("a", "deny", "podSelector: {}"), pods() + extra, NS, [])
    assert "caliv6" not in rs.maps[INGRESS_MAP].as_dict()


@pytest.mark.parametrize("iface", ["cali_x", "weird name!"])
def test_chain_names_are_safe(iface):
    p = Pod("a", "q", "10.240.1.9", {}, [], iface, "n1")
    rs = compile_ruleset(np("a", "deny", "podSelector: {}"), [p], NS, [])
    (name,) = [c for c in rs.chains if c.startswith("ing_")]
    assert " " not in name and "!" not in name
