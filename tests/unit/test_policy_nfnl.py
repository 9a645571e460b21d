"""The netlink batch writer's encodings and the choice of which updates skip libnftables (pure;
tests/integration/test_policy_netlink_batch.py proves the kernel reads them as nft does)."""
from __future__ import annotations

import struct

import pytest

from policy.batch_plan import plan_batch
from policy.nfnl import NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END, Batch, encode_key, supported
from policy.ruleset import Chain, NftSet, Rule, Ruleset, VerdictMap


def test_keys_are_encoded_as_nft_does():
    assert encode_key("ipv4_addr", "10.1.2.3") == bytes([10, 1, 2, 3])
    assert encode_key("ifname", '"cali1"') == b"cali1" + b"\0" * 11
    # a concatenation: every field padded to 4 bytes, ports in network byte order
    assert encode_key("ipv4_addr . inet_proto . inet_service", "10.0.0.1 . udp . 53") == \
        bytes([10, 0, 0, 1, 17, 0, 0, 0, 0, 53, 0, 0])
    assert encode_key("ifname . ipv4_addr", '"eth0" . 192.0.2.1') == b"eth0" + b"\0" * 12 + bytes([192, 0, 2, 1])


@pytest.mark.parametrize("kind,literal", [("ipv4_addr", "10.0.0.256"), ("ifname", '"' + "x" * 16 + '"'),
                                          ("ipv4_addr . inet_service", "10.0.0.1"), ("ipv6_addr", "::1")])
def test_bad_literals_are_refused(kind, literal):
    with pytest.raises(ValueError):
        encode_key(kind, literal)


def test_interval_and_unknown_types_stay_with_libnftables():
    assert supported("ipv4_addr . inet_proto . inet_service", False)
    assert not supported("ipv4_addr", True)
    assert not supported("ipv6_addr", False)


def test_a_batch_is_begin_messages_end_with_one_sequence_number_each():
    b = Batch("inet", "calico-lite")
    b.elements(True, "s", "ipv4_addr", ["10.0.0.1", "10.0.0.2"])
    b.delete_chain("ing_x")
    data, whats = b.encode(100)
    kinds, seqs, offset = [], [], 0
    while offset < len(data):
        length, kind, _flags, seq, _pid = struct.unpack_from("=IHHII", data, offset)
        kinds.append(kind)
        seqs.append(seq)
        offset += length
    assert offset == len(data)
    assert kinds[0] == NFNL_MSG_BATCH_BEGIN and kinds[-1] == NFNL_MSG_BATCH_END and len(kinds) == 5
    assert seqs == [100, 101, 102, 103, 104]
    assert whats == {101: "add element inet calico-lite s { 10.0.0.1, 10.0.0.2 }",
                     102: "flush chain inet calico-lite ing_x", 103: "delete chain inet calico-lite ing_x"}


def table(pods: frozenset[str], dispatch: tuple = (("cali1", "ing_cali1"),), chains=None) -> Ruleset:
    chains = chains if chains is not None else {c: Chain(c, (Rule((), "drop"),)) for _, c in dispatch}
    return Ruleset({"p_pods": NftSet("p_pods", "ipv4_addr", False, pods),
                    "p_cidrs": NftSet("p_cidrs", "ipv4_addr", True, frozenset({"192.0.2.0/24"}))},
                   {"ingress_dispatch": VerdictMap("ingress_dispatch", "ifname", dispatch)}, chains)


def test_element_moves_and_chain_deletes_go_as_a_batch_in_transaction_order():
    old = table(frozenset({"10.0.0.1", "10.0.0.2"}), (("cali1", "ing_cali1"), ("cali2", "ing_cali2")))
    new = table(frozenset({"10.0.0.1", "10.0.0.3"}))
    batch, summary = plan_batch(old, new)
    assert batch is not None, summary
    assert [m[3] for m in batch.messages] == [
        'delete element inet calico-lite ingress_dispatch { cali2 }',
        "delete element inet calico-lite p_pods { 10.0.0.2 }",
        "add element inet calico-lite p_pods { 10.0.0.3 }",
        "flush chain inet calico-lite ing_cali2", "delete chain inet calico-lite ing_cali2"]
    assert summary == "map-1 elem-1 elem+1 chain-1"


def test_rules_new_sets_and_interval_sets_need_libnftables():
    old = table(frozenset({"10.0.0.1"}))
    new_chain = table(frozenset({"10.0.0.1"}), (("cali1", "ing_cali1"), ("cali2", "ing_cali2")))
    assert plan_batch(old, new_chain)[0] is None   # a new pod's chain has rules to write
    refilled = table(frozenset(), chains={"ing_cali1": Chain("ing_cali1", (Rule((), "accept"),))})
    assert plan_batch(old, refilled)[0] is None
    widened = table(frozenset({"10.0.0.1"}))
    widened.sets["p_cidrs"] = NftSet("p_cidrs", "ipv4_addr", True, frozenset({"192.0.2.0/23"}))
    assert plan_batch(old, widened)[0] is None
    more = table(frozenset({"10.0.0.1"}))
    more.sets["q_pods"] = NftSet("q_pods", "ipv4_addr", False, frozenset())
    assert plan_batch(old, more)[0] is None
    batch, _ = plan_batch(old, table(frozenset({"10.0.0.1"})))
    assert batch is not None and not batch.messages   # nothing moved: a no-op


def test_many_elements_are_split_into_messages_an_attribute_length_can_hold():
    b = Batch("inet", "calico-lite")
    elems = [f"10.{i // 65536}.{i // 256 % 256}.{i % 256}" for i in range(1201)]
    b.elements(True, "s", "ipv4_addr . inet_proto . inet_service", [f"{e} . tcp . 80" for e in elems])
    assert len(b.messages) == 3
    assert all(len(attrs) < 65535 for _, _, attrs, _ in b.messages)
    assert b.size() == 40 + sum(20 + len(a) for _, _, a, _ in b.messages)


def test_node_status_shows_a_refused_update_and_a_failed_sync():
    from calico_lite.cli.node import format_node_status, policy_problems
    status = {"node": "n1", "error": "", "update_refused": "delete element inet calico-lite s { 10.0.0.1 }: "
                                                           "No such file or directory (errno 2)"}
    problems = policy_problems(status)
    assert len(problems) == 1 and "No such file or directory" in problems[0]
    text = format_node_status({"node": "n1", "policyProblems": problems}, now=1.0)
    assert "  problem: policy: the kernel refused the incremental update" in text
    assert policy_problems({"error": "nft: syntax error"}) == ["policy not applied, previous rules stay: nft: syntax error"]
    assert policy_problems({"error": "", "update_refused": ""}) == []


def test_rule_templates_helpers():
    from policy.nfnl import _attr, _str
    from policy.rule_templates import comment_userdata, parse, rule_key, without
    data = _str(1, "t") + _attr(2, b"\x01\x02", nested=True) + _str(16, "h")
    assert parse(data) == [(1, b"t\0"), (2, b"\x01\x02"), (16, b"h\0")]   # flags dropped
    assert without(data, (16,)) == _str(1, "t") + _attr(2, b"\x01\x02", nested=True)   # raw kept
    assert without(data, (), frozenset({1})) == _str(1, "t")
    assert comment_userdata('a "b"') == bytes([0, 6]) + b"a 'b'\0"   # as Rule.render quotes it
    assert comment_userdata("a\\b") is None
    assert comment_userdata("x" * 200) == bytes([0, 121]) + b"x" * 120 + b"\0"
    assert rule_key(Rule(("ip saddr @s",), "accept", "any comment")) == "ip saddr @s accept"
