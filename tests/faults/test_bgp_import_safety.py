"""A peer announcing what it should not: a real agent (etcd, ExaBGP) peers with a real GoBGP
that announces a default route, a prefix outside the pools, a supernet of the pool, a block
affine to another node from the wrong next hop, and more prefixes than the peer's max-prefix
limit. Each is logged once, counted in `node status` and in /metrics, and never reaches the
node's kernel table; the good prefixes are installed."""
from __future__ import annotations

import shutil

import pytest

from calico_lite import keys
from tests.faults.agent_node import GOBGP, agent_node, wait_until
N2, N3 = "10.99.1.12", "10.99.1.13"   # other nodes: records only (no agent needed)
BAD = {"0.0.0.0/0": ("default-route", GOBGP), "192.168.50.0/24": ("outside-pools", GOBGP),
       "10.0.0.0/8": ("covers-pool", GOBGP), "10.244.0.0/16": ("too-short", GOBGP),
       "10.244.2.0/26": ("wrong-next-hop", N3)}   # n2's block, announced via n3
GOOD = ["10.244.5.0/26", "10.244.6.7/32"]
MORE = [f"10.244.{i}.0/26" for i in range(10, 18)]
LIMIT = 6

pytestmark = pytest.mark.skipif(not shutil.which("gobgpd"), reason="gobgpd not installed")


def announce_everything(node) -> None:
    """The good prefixes, then the bad ones, then more than the limit allows."""
    for prefix in GOOD:
        node.announce(prefix)
    wait_until(lambda: set(GOOD) <= set(node.routes("proto", "88")), "the good prefixes")
    for prefix, (_, hop) in BAD.items():
        node.announce(prefix, hop)
    wait_until(lambda: len(node.status().get("filtered", [])) == len(BAD),
               "every bad prefix in node status")
    for prefix in MORE:   # 2 accepted so far: 4 more fit under the limit of 6
        node.announce(prefix)
    wait_until(lambda: node.status().get("filteredTotal") == len(BAD) + len(MORE) - 4,
               "the prefixes over the limit in node status")
    # one more sync after all that (a new block in etcd wakes the routing loop)
    node.ds("put", key=keys.affinity("n3", "10.244.3.0/26"), value={"state": "confirmed"})
    node.announce("10.244.3.0/26", N3)   # n3's block via n3: over the limit, not refused
    wait_until(lambda: node.status().get("filteredTotal") == len(BAD) + len(MORE) - 3,
               "a further prefix over the limit")


def assert_logged_once_and_counted(node, over: list[str]) -> None:
    log = node.log_text()
    for prefix in [*BAD, *over]:
        assert log.count(f'"prefix": "{prefix}"') == 1, f"{prefix} logged {log.count(prefix)} times"
    assert '"event": "bgp-max-prefixes-exceeded"' in log
    counts = node.filtered_counts()
    for kind in ("default-route", "outside-pools", "covers-pool", "too-short", "wrong-next-hop"):
        assert counts[(GOBGP, kind)] == 1.0, counts
    assert counts[(GOBGP, "max-prefixes")] == 5.0, counts


def test_bad_announcements_are_filtered_logged_counted_and_never_installed():
    with agent_node("bs") as node:
        # the datastore: two other nodes on our subnet, n2 owning 10.244.2.0/26
        for name, addr in (("n2", N2), ("n3", N3)):
            node.ds("put", key=keys.node(name), value={"name": name, "address": addr})
        node.ds("put", key=keys.affinity("n2", "10.244.2.0/26"), value={"state": "confirmed"})
        node.cli("bgp", "config", "set", "--mesh", "off", "--as-number", "64601")
        node.cli("bgp", "peer", "add", "gobgp", "--peer-ip", GOBGP, "--as", "65001",
                 "--max-prefixes", str(LIMIT))
        node.start_gobgp()
        node.start_agent()
        wait_until(node.established, "the agent's session with GoBGP")
        announce_everything(node)

        status = node.status()
        rows = {f["prefix"]: f for f in status["filtered"]}
        for prefix, (kind, hop) in BAD.items():
            assert rows[prefix]["kind"] == kind and rows[prefix]["via"] == hop, rows[prefix]
            assert rows[prefix]["peer"] == GOBGP
        over = [p for p, f in rows.items() if f["kind"] == "max-prefixes"]
        assert len(over) == len(MORE) - 4 + 1, over
        assert any(f"peer {GOBGP} is over its max-prefix limit: 5 prefixes ignored" in n
                   for n in status["notes"]), status["notes"]
        text = node.cli("node", "status", node.name).stdout
        assert "filtered by the import policy: 10" in text
        assert f"0.0.0.0/0          via {GOBGP} from {GOBGP}: a default route is never imported" in text

        kernel = node.routes()   # every route of the main table, whoever put it there
        assert not set(BAD) & set(kernel), kernel
        assert not set(over) & set(kernel), kernel
        ours = node.routes("proto", "88")
        assert set(ours) == set(GOOD) | (set(MORE) - set(over)), ours
        assert len(ours) == LIMIT and all(v == [GOBGP] for v in ours.values())

        assert_logged_once_and_counted(node, over)

        # the peer withdraws an accepted prefix: one over the limit takes its place
        node.announce(GOOD[0], withdraw=True)
        wait_until(lambda: GOOD[0] not in node.routes("proto", "88")
                   and len(node.routes("proto", "88")) == LIMIT, "a prefix over the limit moves in")
        assert node.agent_alive()
