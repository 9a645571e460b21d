"""Speaker + RouteApplier against real FRR and real ExaBGP, in network namespaces
(the harness is tests/bgp_fabric.py). Timings are printed for information only, never
asserted.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import time
from pathlib import Path

from tests.bgp_fabric import Fabric, Node, fabric, peer  # noqa: F401 (fabric: the fixture)
from tests.nslib import wait_for as _wait_for

DEADLINE = 60.0


def wait_for(check, what: str, timeout: float = DEADLINE, interval: float = 0.05):
    return _wait_for(check, what, timeout, interval)


def others_ok(node: Node, others: list[Node]) -> bool:
    """The node routes every other node's block via that node, and never its own."""
    routes = node.routes()
    return node.block not in routes and all(
        routes.get(o.block) == (o.address,) for o in others)


def three_nodes_behind_tor(fab: Fabric) -> list[Node]:
    fab.add_tor("tor1", "10.99.1.1")
    return [fab.node(f"n{i}", f"10.99.1.1{i}", 64600 + i, f"10.244.{i}.0/26",
                     [peer("10.99.1.1", 65001)]) for i in (1, 2, 3)]


# --------------------------------------------------------------------------- tests
def test_frr_router_start_stop_leaves_nothing(fabric):
    tor = fabric.add_tor("tor1", "10.99.1.1")
    pids = tor.pids()
    assert set(pids) == {"zebra", "bgpd"}
    summary = tor.bgp_summary()
    assert summary == {} or "ipv4Unicast" in summary
    assert "10.99.1.0/24" in tor.vtysh("show running-config")
    tor.stop()
    assert tor.pids() == {}
    for pid in pids.values():
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_nodes_behind_tor_learn_each_others_blocks(fabric):
    t0 = time.monotonic()
    n1, n2, n3 = three_nodes_behind_tor(fabric)
    for n in (n1, n2, n3):
        others = [o for o in (n1, n2, n3) if o is not n]
        wait_for(lambda: others_ok(n, others), f"{n.netns} routes to the other blocks")
    print(f"\n[info] 3 nodes: start to all routes in all kernels {time.monotonic() - t0:.2f}s")

    # the ToR echoes each node's own block back to it: learned, but never installed
    learned = n1.call("learned")
    assert n1.block in learned and n1.block not in n1.routes()
    peers = n1.call("peers")
    assert peers[0]["state"] == "Established" and peers[0]["sent"] == 1
    assert peers[0]["received"] >= 2

    # a smaller set withdraws at the peers; a bigger one adds
    t1 = time.monotonic()
    n1.call("announce", prefixes=[])
    for n in (n2, n3):
        wait_for(lambda: n1.block not in n.routes(), f"{n.netns} drops {n1.block}")
    print(f"[info] withdraw seen in peers' kernels after {time.monotonic() - t1:.3f}s")
    extra = "10.244.101.0/26"
    n1.call("announce", prefixes=[n1.block, extra])
    for n in (n2, n3):
        wait_for(lambda: n.routes().get(extra) == (n1.address,) and others_ok(n, [n1]),
                 f"{n.netns} gets both blocks of n1")
    n1.call("announce", prefixes=[n1.block])
    for n in (n2, n3):
        wait_for(lambda: extra not in n.routes() and others_ok(n, [n1]), f"{n.netns} drops {extra}")


def test_speaker_stop_withdraws_at_peers_and_leaves_no_process(fabric):
    n1, n2, n3 = three_nodes_behind_tor(fabric)
    for n in (n1, n3):
        wait_for(lambda: n.routes().get(n2.block) == (n2.address,), f"{n.netns} has n2's block")
    pids = n2.call("pids")
    assert pids["exabgp"] and pids["relay"]
    t0 = time.monotonic()
    n2.call("stop")
    for n in (n1, n3):
        wait_for(lambda: n2.block not in n.routes(), f"{n.netns} drops n2's block")
    print(f"\n[info] speaker stop to withdrawn in peers' kernels {time.monotonic() - t0:.3f}s")
    for pid in (pids["exabgp"], pids["relay"]):
        assert not Path(f"/proc/{pid}").exists(), f"pid {pid} still there after stop"
    assert not n2.routes(), "n2's learned routes are flushed once its sessions are gone"
    # n1 and n3 still reach each other
    assert others_ok(n1, [n3]) and others_ok(n3, [n1])


def test_killed_exabgp_is_restarted_and_reannounces(fabric):
    n1, n2, n3 = three_nodes_behind_tor(fabric)
    for n in (n2, n3):
        wait_for(lambda: n.routes().get(n1.block) == (n1.address,), f"{n.netns} has n1's block")
    before = n1.call("pids")
    t0 = time.monotonic()
    os.kill(before["exabgp"], signal.SIGKILL)
    after = wait_for(lambda: (p := n1.call("pids"))["restarts"] >= 1 and p["exabgp"]
                     and p["exabgp"] != before["exabgp"] and p["relay"] and p, "a new exabgp")
    wait_for(lambda: not Path(f"/proc/{before['relay']}").exists(), "the old relay to exit")
    for n in (n2, n3):
        wait_for(lambda: n.routes().get(n1.block) == (n1.address,), f"{n.netns} has n1's block again")
    wait_for(lambda: others_ok(n1, [n2, n3]), "n1 relearns the other blocks")
    print(f"\n[info] exabgp SIGKILL to re-announced everywhere {time.monotonic() - t0:.2f}s "
          f"(pid {before['exabgp']} -> {after['exabgp']})")


def test_ibgp_mesh_with_listen_and_ecmp(fabric):
    """Three nodes in a full iBGP mesh, no router. n1 and n2 also announce one shared
    (anycast) prefix, which n3 must route over both: one ECMP route."""
    addrs = {1: "10.99.1.11", 2: "10.99.1.12", 3: "10.99.1.13"}
    nodes = []
    for i, a in addrs.items():
        peers = [peer(b, 64512) for j, b in addrs.items() if j != i]
        nodes.append(fabric.node(f"m{i}", a, 64512, f"10.244.{i}.0/26", peers, start=False,
                                 listen=True))
    anycast = "10.244.200.0/26"
    t0 = time.monotonic()
    for n in nodes:
        n.call("start")
    n1, n2, n3 = nodes
    n1.call("announce", prefixes=[n1.block, anycast])
    n2.call("announce", prefixes=[n2.block, anycast])
    n3.call("announce", prefixes=[n3.block])
    for n in nodes:
        wait_for(lambda: others_ok(n, [o for o in nodes if o is not n]), f"{n.netns} mesh routes")
    print(f"\n[info] 3-node mesh: start to all routes {time.monotonic() - t0:.2f}s")
    wait_for(lambda: n3.routes().get(anycast) == tuple(sorted([n1.address, n2.address])),
             "an ECMP route on n3")
    assert all(p["state"] == "Established" for p in n3.call("peers"))
    # n1 and n2 own the anycast prefix: neither installs it from the other
    assert anycast not in n1.routes() and anycast not in n2.routes()
    # one of the two stops announcing it: n3 falls back to a single next hop
    n2.call("announce", prefixes=[n2.block])
    wait_for(lambda: n3.routes().get(anycast) == (n1.address,), "single next hop on n3")


def test_agent_crash_keeps_sessions_and_new_speaker_adopts_exabgp(fabric):
    """The agent (our worker) is SIGKILLed: ExaBGP and its relay live on, so the peers keep
    the node's block. A new Speaker on the same workdir adopts that ExaBGP, gets the relay
    back, and rebuilds peer states and learned paths (route refresh) without a flap."""
    n1, n2, n3 = three_nodes_behind_tor(fabric)
    for n in (n2, n3):
        wait_for(lambda: n.routes().get(n1.block) == (n1.address,), f"{n.netns} has n1's block")
    wait_for(lambda: others_ok(n1, [n2, n3]), "n1 has the other blocks")
    before = n1.call("pids")
    n1.proc.kill()
    n1.proc.wait()
    assert Path(f"/proc/{before['exabgp']}").exists(), "exabgp must outlive the agent"
    assert others_ok(n1, [n2, n3]), "kernel routes stay while the agent is away"

    t0 = time.monotonic()
    new = dataclasses.replace(n1, log=fabric.root / "n1-again.log", proc=None)
    new.spawn()
    fabric.nodes.append(new)
    new.call("start")
    new.call("announce", prefixes=[n1.block])
    after = wait_for(lambda: (p := new.call("pids"))["relay"] and p, "the relay to reconnect")
    assert after["exabgp"] == before["exabgp"] and after["restarts"] == 0 and after["adopted"]
    wait_for(lambda: all(p["state"] == "Established" for p in new.call("peers")), "peer state")
    learned = wait_for(lambda: (l := new.call("learned")) and n2.block in l and n3.block in l and l,
                       "learned paths rebuilt from ExaBGP's Adj-RIB-In")
    wait_for(lambda: new.call("pids")["synced"], "synced")
    assert [n2.address, "10.99.1.1"] == learned[n2.block][0][:2]
    wait_for(lambda: others_ok(new, [n2, n3]), "n1's routes after adoption")
    print(f"\n[info] adoption: new speaker to rebuilt state {time.monotonic() - t0:.2f}s")
    # the peers never lost n1's block
    for n in (n2, n3):
        assert n.routes().get(n1.block) == (n1.address,)
        assert f"deleted=['{n1.block}']" not in n.log.read_text(), f"{n.netns} saw a flap"
    assert "deleted=" not in new.log.read_text(), "the new agent must not drop routes while resyncing"
