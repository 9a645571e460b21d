"""Communities and BGP filters between a real agent (etcd, ExaBGP) and a real FRR ToR.

FRR's route map matches a community list and a large-community list on what the node
announces (local preference 200 and 150), and FRR announces two blocks of its own
(`network` statements). Every change is made with the CLI while the agent runs, and
shows up live: pool and peer communities on the ToR (`show bgp ipv4 unicast PREFIX json`),
an export filter keeping one of the node's blocks from the ToR, an import filter keeping one
of the ToR's prefixes out of the node's kernel, each filtered prefix in `node status` and in
calico_lite_bgp_prefixes_filtered_total{reason="filter:NAME"}.
"""
from __future__ import annotations

import json

from calico_lite import keys
from calico_lite.lab.frr import FrrRouter
from tests.faults.agent_node import agent_node, wait_until

TOR = "10.99.1.1"
NODE_BLOCKS = ("10.244.1.0/26", "10.244.2.0/26")
TOR_BLOCKS = ("10.244.7.0/26", "10.244.8.0/26")
POOL = "default-ipv4-ippool"


def tor_config(node: str) -> str:
    return "\n".join([
        "hostname tor", "ip forwarding", "!",
        "bgp community-list standard BLUE seq 5 permit 65000:100",
        "bgp large-community-list standard BIG seq 5 permit 65000:1:2", "!",
        "route-map FROM-NODES permit 10", " match community BLUE", " set local-preference 200",
        "route-map FROM-NODES permit 20", " match large-community BIG",
        " set local-preference 150", "route-map FROM-NODES permit 30", "!",
        "router bgp 65001", f" bgp router-id {TOR}", " no bgp ebgp-requires-policy",
        " no bgp network import-check", " timers bgp 3 9",
        f" neighbor {node} remote-as 64601", " address-family ipv4 unicast",
        *(f"  network {p}" for p in TOR_BLOCKS),
        f"  neighbor {node} route-map FROM-NODES in", " exit-address-family", "!", "end"]) + "\n"


def tor_path(tor: FrrRouter, prefix: str) -> dict:
    """FRR's best path for prefix ({} when it has none)."""
    paths = json.loads(tor.vtysh(f"show bgp ipv4 unicast {prefix} json") or "{}").get("paths", [])
    return paths[0] if paths else {}


def attrs(tor: FrrRouter, prefix: str) -> tuple[str, str, int]:
    """(communities, large communities, local preference) of FRR's path for prefix."""
    p = tor_path(tor, prefix)
    return (p.get("community", {}).get("string", ""), p.get("largeCommunity", {}).get("string", ""),
            p.get("locPrf", 100))


def test_communities_and_filters_against_frr():
    with agent_node("bf") as node:
        ns = node.attach("tor", TOR)
        tor = FrrRouter(ns, node.root / "frr", tor_config(node.address))
        try:
            tor.start()
            run_scenario(node, tor)
        finally:
            tor.stop()


def run_scenario(node, tor: FrrRouter) -> None:
    cli = node.cli
    cli("bgp", "config", "set", "--mesh", "off", "--as-number", "64601")
    cli("bgp", "peer", "add", "tor", "--peer-ip", TOR, "--as", "65001",
        "--large-community", "65000:1:2")
    for block in NODE_BLOCKS:   # blocks affine to this node: what it announces
        node.ds("put", key=keys.affinity(node.name, block), value={"state": "confirmed"})
    node.start_agent()
    wait_until(lambda: cli("pool", "list", "--json").stdout.count(POOL), "the default pool")
    bad = cli("pool", "set", POOL, "--community", "65000:100000", check=False)
    assert bad.returncode == 1 and "community '65000:100000'" in bad.stderr, bad.stderr
    cli("pool", "set", POOL, "--community", "65000:100")

    # pool community + peer large community on both blocks; FRR's route map sees the first
    wait_until(lambda: all(attrs(tor, b) == ("65000:100", "65000:1:2", 200) for b in NODE_BLOCKS),
               "both blocks at FRR with the pool's community and the peer's large community")
    cli("pool", "set", POOL, "--community", "")   # live: the large-community entry matches now
    wait_until(lambda: all(attrs(tor, b) == ("", "65000:1:2", 150) for b in NODE_BLOCKS),
               "the pool community gone, the large community matched")

    # an export filter keeps one block from the ToR
    cli("bgp", "filter", "add", "edge", "--export", "--cidr", NODE_BLOCKS[1],
        "--match-operator", "Equal", "--action", "reject")
    # an import filter: of the ToR's two prefixes, 10.244.8.0/26 must not be installed
    cli("bgp", "filter", "add", "edge", "--import", "--cidr", "10.244.8.0/24",
        "--match-operator", "In", "--prefix-length", "26-32", "--action", "reject")
    wait_until(lambda: set(TOR_BLOCKS) <= set(node.routes("proto", "88")),
               "both ToR prefixes installed before any filter is attached")
    cli("bgp", "peer", "set", TOR, "--filter", "edge")
    wait_until(lambda: not tor_path(tor, NODE_BLOCKS[1]), "the filtered block withdrawn from FRR")
    assert attrs(tor, NODE_BLOCKS[0]) == ("", "65000:1:2", 150)
    wait_until(lambda: TOR_BLOCKS[1] not in node.routes("proto", "88"),
               "the filtered ToR prefix removed from the kernel")
    assert TOR_BLOCKS[0] in node.routes("proto", "88")

    status = node.status()
    imported = {f["prefix"]: f for f in status["filtered"]}
    assert imported[TOR_BLOCKS[1]]["kind"] == "filter:edge", imported
    assert [(r["prefix"], r["peer"], r["kind"]) for r in status["exportFiltered"]] == \
        [(NODE_BLOCKS[1], TOR, "filter:edge")], status["exportFiltered"]
    text = cli("node", "status", node.name).stdout
    assert f"to {TOR}: 1 prefixes, communities 65000:1:2, filters edge" in text, text
    assert "not announced (export filters): 1" in text, text
    assert f"{NODE_BLOCKS[1]:<18} to {TOR}: not announced: export filter edge rule 1" in text, text
    assert (f"{TOR_BLOCKS[1]:<18} via {TOR} from {TOR}: import filter edge rule 1 "
            "(Reject In 10.244.8.0/24 /26-32)") in text, text
    counts = node.filtered_counts()
    assert counts[(TOR, "filter:edge")] == 2.0, counts

    assert cli("bgp", "filter", "show", "edge").stdout.splitlines() == [
        "filter edge", "  import 1: Reject In 10.244.8.0/24 /26-32",
        "  export 1: Reject Equal 10.244.2.0/26"]
    used = cli("bgp", "filter", "delete", "edge", check=False)
    assert used.returncode == 1 and "used by peer tor" in used.stderr, used.stderr

    # detach the filter: everything flows again, live
    cli("bgp", "peer", "set", "tor", "--filter", "")
    cli("bgp", "filter", "delete", "edge")
    assert cli("bgp", "filter", "list").stdout.strip() == ""
    wait_until(lambda: attrs(tor, NODE_BLOCKS[1]) == ("", "65000:1:2", 150),
               "the block back at FRR")
    wait_until(lambda: set(TOR_BLOCKS) <= set(node.routes("proto", "88")),
               "the ToR prefix installed again")
    wait_until(lambda: not node.status().get("exportFiltered"), "node status without filtered rows")
    assert node.agent_alive()
