"""Host endpoint protection and pod anti-spoofing as plain values (policy.hostprotect)."""
from __future__ import annotations

import pytest

from calico_lite.policy_inputs import host_protection, local_endpoints
from policy.compiler import compile_ruleset
from policy.hostprotect import (
    ALLOW_SET, DEFAULT_ALLOW, MAC_IFACES, POD_IF_MAC, TO_HOST_CHAIN, HostProtection, HostProtectionError,
    LocalEndpoint, PortRange, arp_ruleset, host_sets, parse_allow, protection_from, to_host_chain,
    with_host_protection,
)
from policy.model import Pod
from policy.ruleset import render_nft, render_update

PODS = [Pod("a", "p1", "10.244.0.5", {}, [], "cali1", "n1"), Pod("a", "p2", "10.244.0.6", {}, [], "cali2", "n1")]
EPS = [LocalEndpoint("cali1", "10.244.0.5", "02:aa:bb:cc:dd:01"), LocalEndpoint("cali2", "10.244.0.6")]


def table(protection: HostProtection, endpoints=EPS):
    rs = compile_ruleset([], PODS, [], ["10.99.1.11"])
    return with_host_protection(rs, host_sets(protection, endpoints), to_host_chain(protection))


def test_allow_lists_parse_like_felix_failsafe_ports_and_merge():
    assert [str(p) for p in DEFAULT_ALLOW] == ["tcp:53", "udp:53", "udp:67"]
    assert parse_allow("TCP:53, tcp:50-60,udp:1,tcp:61") == (PortRange("tcp", 50, 61), PortRange("udp", 1, 1))
    assert parse_allow("") == () and parse_allow([]) == ()
    for bad in ("tcp", "icmp:1", "tcp:0", "tcp:70000", "tcp:9-8", "tcp:x", "53"):
        with pytest.raises(HostProtectionError, match=bad.replace("-", ".")):
            parse_allow(bad)


def test_records_default_to_protection_on_and_bad_records_are_refused():
    assert protection_from(None) == protection_from({}) == HostProtection("drop", DEFAULT_ALLOW)
    assert protection_from({"workloadToHostAction": "Accept", "workloadToHostAllow": []}) == \
        HostProtection("accept", ())
    for bad in ({"workloadToHostAction": "reject"}, {"workloadToHostAllow": 53}, "text"):
        with pytest.raises(HostProtectionError):
            protection_from(bad)   # type: ignore[arg-type]
    got, problem = host_protection({"/calico-lite/nodeconfig/n1": {"workloadToHostAllow": ["tcp:0"]}}, "n1")
    assert got == HostProtection() and "tcp:0" in problem and "default applies" in problem
    assert host_protection({}, "n1") == (HostProtection(), "")


def test_admits_what_the_rules_let_through():
    p = HostProtection("drop", parse_allow("tcp:53,tcp:8000-8100"))
    assert p.admits("tcp", 8050) and not p.admits("udp", 53) and not p.admits("tcp", 22)
    assert p.admits("tcp", 22, established=True)
    assert HostProtection("accept", ()).admits("tcp", 22)


def test_the_table_gains_fixed_base_chains_sets_and_one_regular_chain():
    rs = table(HostProtection())
    assert rs.sets[ALLOW_SET].elements == {"tcp . 53", "udp . 53", "udp . 67"} and rs.sets[ALLOW_SET].interval
    assert rs.sets[POD_IF_MAC].elements == {'"cali1" . 02:aa:bb:cc:dd:01'}
    assert rs.sets[MAC_IFACES].elements == {'"cali1"'}   # cali2's record has no MAC: not checked
    assert rs.chains["host_guard_pre"].hook == "prerouting" and rs.chains["host_guard_in"].hook == "input"
    rules = [r.render() for r in rs.chains[TO_HOST_CHAIN].rules]
    assert rules[0].startswith("ct state established,related accept")
    assert rules[-1].startswith("counter drop")
    assert to_host_chain(HostProtection("accept")).rules[-1].verdict == "accept"
    assert {"forward", "input"} <= set(rs.chains)   # the policy table is kept
    assert "iifname @mac_checked_ifaces iifname . ether saddr != @pod_if_mac counter drop" in render_nft(rs)


def test_a_new_setting_or_pod_is_an_incremental_update_not_a_new_table():
    before = table(HostProtection())
    after = table(HostProtection("accept", parse_allow("tcp:22")), EPS[:1])
    text, summary = render_update(before, after)
    assert text is not None, summary
    assert f"flush chain inet calico-lite {TO_HOST_CHAIN}" in text
    assert "add element inet calico-lite wl_host_allow { tcp . 22 }" in text


def test_arp_table_claims_only_each_pods_own_address_and_mac():
    arp = arp_ruleset(EPS)
    assert (arp.family, arp.table) == ("arp", "calico-lite") and arp.ref == "arp calico-lite"
    assert arp.sets["pod_if_addr"].elements == {'"cali1" . 10.244.0.5', '"cali2" . 10.244.0.6'}
    assert arp.sets[POD_IF_MAC].elements == {'"cali1" . 02:aa:bb:cc:dd:01'}
    text = render_nft(arp)
    assert "iifname . arp saddr ip != @pod_if_addr counter drop" in text
    assert render_update(arp, arp_ruleset(EPS[:1]))[0] is not None


def test_local_endpoints_take_the_mac_of_the_workload_record():
    pods = {"w1": PODS[0], "w2": PODS[1], "w3": Pod("a", "p3", "10.244.1.1", {}, [], None, "n2")}
    workloads = {"w1": {"mac": "02:AA:bb:cc:dd:01"}, "w2": {"mac": "not a mac"}, "w3": {"mac": "02:00:00:00:00:03"}}
    assert local_endpoints(pods, workloads) == [LocalEndpoint("cali1", "10.244.0.5", "02:AA:bb:cc:dd:01"),
                                                LocalEndpoint("cali2", "10.244.0.6", "")]
    assert host_sets(HostProtection(), local_endpoints(pods, workloads))[POD_IF_MAC].elements == \
        {'"cali1" . 02:aa:bb:cc:dd:01'}
