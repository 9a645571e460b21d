"""BGP filters (first match in order, Calico's operators), communities, what each peer gets
(bgp.export), import filters after the safety policy (bgp.imports), and the per-peer ExaBGP
commands of the session state machine."""
import pytest

from bgp.config import PeerConfig, SpeakerConfig
from bgp.export import (Attributes, ExportPolicy, PeerExport, announcements, export_commands,
                        parse_community, parse_large_community)
from bgp.filters import BgpFilter, FilterRule, decide
from bgp.imports import ImportPolicy, ImportPool, filter_imports
from bgp.messages import parse_line
from bgp.model import LearnedPath
from bgp.session import BgpState
from calico_lite.bgpconfig import BgpPeer
from calico_lite.blocks import IpamError, Pool
from tests.bgp_lines import UP

T1, T2 = "10.99.1.1", "10.99.1.2"


def rule(cidr, op="In", action="Reject", length=None):
    return FilterRule(cidr, op, action, length)


# --- bgp.filters -------------------------------------------------------------------------
def test_operators_and_prefix_length():
    net = "10.244.8.0/26"
    assert decide(net, [BgpFilter("f", import_v4=(rule("10.244.8.0/26", "Equal"),))],
                  "import").filter == "f"
    assert decide(net, [BgpFilter("f", import_v4=(rule("10.244.8.0/24", "Equal"),))],
                  "import").accepted
    assert not decide(net, [BgpFilter("f", import_v4=(rule("10.1.0.0/16", "NotEqual"),))],
                      "import").accepted
    assert not decide(net, [BgpFilter("f", import_v4=(rule("10.244.0.0/16"),))], "import").accepted
    assert not decide(net, [BgpFilter("f", import_v4=(rule("10.244.8.0/26"),))], "import").accepted, \
        "In includes the CIDR itself"
    assert decide(net, [BgpFilter("f", import_v4=(rule("10.244.0.0/16", length=(27, 32)),))],
                  "import").accepted, "a /26 is outside the /27-/32 range"
    assert not decide(net, [BgpFilter("f", import_v4=(rule("10.244.0.0/16", length=(24, 26)),))],
                      "import").accepted
    assert not decide("10.9.0.0/26", [BgpFilter("f", import_v4=(rule("10.244.0.0/16", "NotIn"),))],
                      "import").accepted
    assert decide(net, [BgpFilter("f", import_v4=(rule("10.244.0.0/16", "NotIn"),))],
                  "import").accepted


def test_first_match_wins_across_filters_in_order_and_no_match_accepts():
    allow = BgpFilter("allow", export_v4=(rule("10.244.1.0/26", "Equal", "Accept"),))
    deny = BgpFilter("deny", export_v4=(rule("10.244.0.0/16"), rule("10.244.1.0/26", "Equal", "Accept")))
    v = decide("10.244.1.0/26", [allow, deny], "export")
    assert v.accepted and (v.filter, v.rule) == ("allow", 1)
    v = decide("10.244.1.0/26", [deny, allow], "export")
    assert not v.accepted and (v.filter, v.rule) == ("deny", 1)
    assert v.reason == "filter deny rule 1 (Reject In 10.244.0.0/16)"
    assert decide("10.9.0.0/24", [deny], "export") == decide("10.9.0.0/24", [], "export")
    assert decide("10.9.0.0/24", [deny], "export").accepted
    assert decide("10.244.1.0/26", [deny], "import").accepted, "import rules are apart"


def test_rule_validation_names_the_bad_value():
    with pytest.raises(ValueError, match="cidr '10.0.0.1/8'"):
        rule("10.0.0.1/8")
    with pytest.raises(ValueError, match="match operator 'Like'"):
        rule("10.0.0.0/8", "Like")
    with pytest.raises(ValueError, match="action 'Drop'"):
        rule("10.0.0.0/8", action="Drop")
    with pytest.raises(ValueError, match="prefix length 4-32"):
        rule("10.0.0.0/8", length=(4, 32))
    with pytest.raises(ValueError, match="In or NotIn only"):
        rule("10.0.0.0/8", "Equal", length=(8, 32))
    f = BgpFilter("f", import_v4=(rule("10.0.0.0/8", length=(16, 24)),),
                  export_v4=(rule("10.1.0.0/16", "Equal", "Accept"),))
    assert BgpFilter.from_dict(f.to_dict()) == f
    assert f.to_dict()["importV4"][0]["prefixLength"] == {"min": 16, "max": 24}
    with pytest.raises(ValueError, match="BGP filter g"):
        BgpFilter.from_dict({"name": "g", "exportV4": [{"cidr": "x", "action": "Reject"}]})


# --- communities ---------------------------------------------------------------------------
def test_communities_are_validated_and_normalised():
    assert parse_community("65000:0100") == "65000:100"
    assert parse_community("NO-EXPORT") == "no-export"
    assert parse_large_community("4200000000:1:2") == "4200000000:1:2"
    for bad in ("65536:1", "1:2:3", "abc", ""):
        with pytest.raises(ValueError, match=f"community {bad!r}"):
            parse_community(bad)
    with pytest.raises(ValueError, match="large community '1:2'"):
        parse_large_community("1:2")
    with pytest.raises(ValueError, match="BGP peer tor: community '1:99999'"):
        BgpPeer("tor", peer_ip=T1, as_number=65001, communities=("1:99999",))
    with pytest.raises(IpamError, match="pool p: large community"):
        Pool("p", "10.244.0.0/16", large_communities=("1:2:x",))
    p = Pool("p", "10.244.0.0/16", communities=("65000:100",))
    assert Pool.from_dict(p.to_dict()) == p
    assert "communities" not in Pool("q", "10.1.0.0/16").to_dict()


# --- bgp.export ----------------------------------------------------------------------------
POLICY = ExportPolicy(
    pools=(("10.244.0.0/16", Attributes(("65000:100",))),
           ("10.244.4.0/22", Attributes(("65000:4",)))),
    peers=((T1, PeerExport(Attributes((), ("65000:1:2",)),
                           (BgpFilter("edge", export_v4=(rule("10.244.2.0/26", "Equal"),)),))),))


def test_announcements_per_peer_with_pool_and_peer_communities_and_export_filters():
    plan, rejected = announcements(["10.244.1.0/26", "10.244.2.0/26", "10.244.5.7/32",
                                    "10.96.0.10/32"], [T1, T2], POLICY)
    assert plan[T1] == {"10.244.1.0/26": Attributes(("65000:100",), ("65000:1:2",)),
                        "10.244.5.7/32": Attributes(("65000:4",), ("65000:1:2",)),
                        "10.96.0.10/32": Attributes((), ("65000:1:2",))}
    assert plan[T2]["10.244.2.0/26"] == Attributes(("65000:100",))
    assert plan[T2]["10.96.0.10/32"] == Attributes(), "outside pools, peer without communities"
    assert [(r.peer, r.prefix, r.kind, r.direction) for r in rejected] == [
        (T1, "10.244.2.0/26", "filter:edge", "export")]
    assert Attributes(("1:2",), ("3:4:5",)).text() == " community [ 1:2 ] large-community [ 3:4:5 ]"


def test_export_commands_global_when_every_peer_gets_the_same():
    plain, _ = announcements(["10.244.1.0/26"], [T1, T2], ExportPolicy())
    assert export_commands({}, plain, [T1, T2]) == ["announce route 10.244.1.0/26 next-hop self"]
    assert export_commands(plain, plain, [T1, T2]) == []
    assert export_commands(plain, {}, [T1, T2]) == ["withdraw route 10.244.1.0/26 next-hop self"]
    plan, _ = announcements(["10.244.1.0/26", "10.244.2.0/26"], [T1, T2], POLICY)
    assert export_commands(plain, plan, [T1, T2]) == [
        f"neighbor {T1} announce route 10.244.1.0/26 next-hop self community [ 65000:100 ] "
        "large-community [ 65000:1:2 ]",
        f"neighbor {T2} announce route 10.244.1.0/26 next-hop self community [ 65000:100 ]",
        f"neighbor {T2} announce route 10.244.2.0/26 next-hop self community [ 65000:100 ]"]


# --- import filters after the safety policy ----------------------------------------------
def test_import_filters_narrow_the_safety_policy_only():
    edge = BgpFilter("edge", import_v4=(rule("10.244.8.0/24", length=(26, 32)),
                                        rule("0.0.0.0/0", "In", "Accept")))
    policy = ImportPolicy(pools=(ImportPool("10.244.0.0/16"),), filters=((T1, (edge,)),))
    learned = {p: {LearnedPath(T1, T1)} for p in ("10.244.7.0/26", "10.244.8.0/26", "0.0.0.0/0")}
    learned["10.244.8.0/26"].add(LearnedPath(T2, T2))
    accepted, rejected = filter_imports(learned, policy)
    assert set(accepted) == {"10.244.7.0/26", "10.244.8.0/26"}
    assert accepted["10.244.8.0/26"] == {LearnedPath(T2, T2)}, "T2 has no filter"
    kinds = {(r.peer, r.prefix): r.kind for r in rejected}
    assert kinds == {(T1, "0.0.0.0/0"): "default-route", (T1, "10.244.8.0/26"): "filter:edge"}, \
        "the accept-all rule cannot let the default route in"


# --- the session: per-peer announcements ---------------------------------------------------
def state() -> BgpState:
    cfg = SpeakerConfig(router_id="10.99.1.11", local_address="10.99.1.11", local_as=64601,
                        peers=[PeerConfig(T1, 65001), PeerConfig(T2, 65002)])
    return BgpState(cfg)


def test_session_sends_per_peer_changes_and_reannounces_with_attributes():
    st = state()
    assert st.announce({"10.244.1.0/26"})[0].commands == [
        "announce route 10.244.1.0/26 next-hop self"]
    cmds = st.announce({"10.244.1.0/26", "10.244.2.0/26"}, POLICY)[0].commands
    assert f"neighbor {T2} announce route 10.244.2.0/26 next-hop self community [ 65000:100 ]" in cmds
    assert not any(T1 in c and "10.244.2.0/26" in c for c in cmds), "filtered for T1"
    up = st.handle(parse_line(UP))   # T1 comes up: it gets its own view again
    assert [c for c in up.commands if "announce" in c] == [
        f"neighbor {T1} announce route 10.244.1.0/26 next-hop self community [ 65000:100 ] "
        "large-community [ 65000:1:2 ]"]
    sent = {p.address: p.sent for p in st.peers()}
    assert sent[T1] == 1
    # no policy: T1 gets 10.244.2.0/26, both lose their communities (one command each)
    cmds = st.announce({"10.244.1.0/26", "10.244.2.0/26"}, ExportPolicy())[0].commands
    assert cmds == ["announce route 10.244.1.0/26 next-hop self",
                    "announce route 10.244.2.0/26 next-hop self"]
    assert st.withdraw_all()[:2] == ["withdraw route 10.244.1.0/26 next-hop self",
                                     "withdraw route 10.244.2.0/26 next-hop self"]


def test_adopted_exabgp_gets_filtered_prefixes_withdrawn():
    st = state()
    st.announce({"10.244.1.0/26", "10.244.2.0/26"}, POLICY)
    cmds = st.connected(adopted=True).commands
    assert f"neighbor {T1} withdraw route 10.244.2.0/26 next-hop self" in cmds
    assert f"neighbor {T2} announce route 10.244.2.0/26 next-hop self community [ 65000:100 ]" in cmds


# --- the CLI's parsing and node status ------------------------------------------------------
def test_cli_parses_filter_rules_and_community_lists():
    from calico_lite.cli.app import main, parse
    from calico_lite.cli.common import comma_list
    args = parse(["bgp", "filter", "add", "f", "--import", "--cidr", "10.244.0.0/16",
                  "--prefix-length", "26-32", "--action", "Reject"])
    assert (args.to_import, args.prefix_length, args.action, args.match_operator) == \
        (True, (26, 32), "reject", "In")
    assert comma_list(["65000:1,65000:2", "65000:3"]) == ["65000:1", "65000:2", "65000:3"]
    assert comma_list([""]) == [] and comma_list(None) is None
    args = parse(["bgp", "peer", "set", "10.99.1.1", "--filter", "a,b", "--community", ""])
    assert (args.filter, args.community) == (["a,b"], [""])
    with pytest.raises(SystemExit):
        parse(["bgp", "filter", "add", "f", "--export", "--cidr", "10.0.0.0/8",
               "--prefix-length", "x", "--action", "reject"])
    assert main(["--etcd-endpoints", "http://127.0.0.1:1", "bgp", "filter", "add", "f",
                 "--cidr", "10.0.0.0/8", "--action", "reject"]) == 1   # neither direction


def test_node_status_shows_communities_and_export_filtered():
    from calico_lite.cli.node import format_node_status
    s = {"node": "n1", "updated": 0.0,
         "poolCommunities": [{"cidr": "10.244.0.0/16", "communities": ["65000:100"],
                              "largeCommunities": []}],
         "exports": [{"peer": T1, "communities": [], "largeCommunities": ["65000:1:2"],
                      "filters": ["edge"], "announced": 1},
                     {"peer": T2, "communities": [], "largeCommunities": [], "filters": [],
                      "announced": 2}],
         "exportFiltered": [{"peer": T1, "prefix": "10.244.2.0/26", "kind": "filter:edge",
                             "reason": "not announced: export filter edge rule 1"}],
         "exportFilteredTotal": 1}
    lines = format_node_status(s, now=1.0).splitlines()
    assert lines[-4:] == [
        "  pool 10.244.0.0/16 communities: 65000:100",
        f"  to {T1}: 1 prefixes, communities 65000:1:2, filters edge",
        "  not announced (export filters): 1",
        f"    10.244.2.0/26      to {T1}: not announced: export filter edge rule 1"]


def test_route_reflector_applies_the_target_peers_export_filters():
    from tests.bgp_lines import ANNOUNCE
    cfg = SpeakerConfig(router_id="10.99.1.11", local_address="10.99.1.11", local_as=65001,
                        cluster_id="1.0.0.1",
                        peers=[PeerConfig(T1, 65001, route_reflector_client=True),
                               PeerConfig(T2, 65001, route_reflector_client=True)])
    st = BgpState(cfg)
    st.handle(parse_line(UP))
    st.handle(parse_line(UP.replace(f'"peer": "{T1}"', f'"peer": "{T2}"')))
    st.handle(parse_line(ANNOUNCE))   # T1 sends 10.244.2.0/26 and 10.244.3.0/26
    assert {p.address: p.sent for p in st.peers()} == {T1: 0, T2: 2}
    edge = BgpFilter("edge", export_v4=(rule("10.244.3.0/26", "Equal"),))
    cmds = st.announce(set(), ExportPolicy(peers=((T2, PeerExport(filters=(edge,))),)))[0].commands
    assert cmds == [f"neighbor {T2} withdraw route 10.244.3.0/26 next-hop 10.99.1.12"]
    assert {p.address: p.sent for p in st.peers()} == {T1: 0, T2: 1}


def test_records_become_per_peer_policy_and_missing_filters_are_reported():
    from calico_lite.bgpconfig import BgpGlobal, NodeBgp, node_speaker_config
    from calico_lite.bgpexport import export_policy, filters_from, peer_filters
    peer = BgpPeer("tor", peer_ip=T1, as_number=65001, large_communities=("65000:1:2",),
                   filters=("edge", "gone"))
    assert BgpPeer.from_dict(peer.to_dict()) == peer
    cfg, _ = node_speaker_config("n1", {"n1": NodeBgp("n1", "10.99.1.11")},
                                 BgpGlobal(mesh=False), [peer], {}, local_address="10.99.1.11",
                                 default_as=64601)
    filters, bad = filters_from({"/f/edge": {"name": "edge", "exportV4": [
        {"cidr": "10.244.2.0/26", "matchOperator": "Equal", "action": "Reject"}]},
        "/f/broken": {"name": "broken", "importV4": [{"cidr": "nope", "action": "Reject"}]}})
    assert list(filters) == ["edge"] and "broken" in bad[0]
    chains, problems = peer_filters(cfg.peers, filters)
    assert chains == {T1: (filters["edge"],)}
    assert problems == ["peer tor: BGP filter gone not found; left out"]
    policy = export_policy(cfg.peers, {"/p/default": Pool("default", "10.244.0.0/16",
                                                          communities=("65000:100",)).to_dict()},
                           chains)
    assert policy.pools == (("10.244.0.0/16", Attributes(("65000:100",))),)
    assert policy.peer(T1) == PeerExport(Attributes((), ("65000:1:2",)), (filters["edge"],))
