"""Speaker features against real routers in namespaces: live reconfiguration (reload),
a node acting as route reflector, FRR as route reflector, TCP MD5, graceful restart with
FRR as helper, hold-time expiry of a silent node, and GoBGP as a second ToR implementation.

The harness is tests/bgp_fabric.py; nodes here run the agent's periodic resync too (tick).
Timings are printed, never asserted.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time

import pytest

from calico_lite.lab.frr import FrrRouter
from tests.bgp_fabric import SUBNET, open_fabric, peer
from tests.nslib import sh
from tests.nslib import wait_for as _wait_for

DEADLINE = 45.0


@pytest.fixture
def fabric(tmp_path):
    with open_fabric(tmp_path, "gr", restart_delay=0.3, tick=True) as fab:
        yield fab


def wait_for(check, what: str, timeout: float = DEADLINE, interval: float = 0.05):
    return _wait_for(check, what, timeout, interval)


def tor_config(name: str, asn: int, address: str, remote: str = "external", *,
               password: str = "", rr: bool = False, hold: int = 9) -> str:
    """FRR with a dynamic-neighbour range for the segment (optionally MD5, or an iBGP RR)."""
    lines = [f"hostname {name}", "ip forwarding", "!", f"router bgp {asn}",
             f" bgp router-id {address}", " no bgp ebgp-requires-policy",
             " no bgp network import-check", f" timers bgp {max(1, hold // 3)} {hold}",
             " neighbor NODES peer-group", f" neighbor NODES remote-as {remote}"]
    if password:
        lines.append(f" neighbor NODES password {password}")
    lines += [f" bgp listen range {SUBNET} peer-group NODES", " !", " address-family ipv4 unicast",
              "  neighbor NODES activate"]
    if rr:
        lines.append("  neighbor NODES route-reflector-client")
    lines += [" exit-address-family", "exit", "!", "end"]
    return "\n".join(lines) + "\n"


def frr_prefixes(router: FrrRouter) -> dict[str, list[str]]:
    """prefix -> next hops FRR holds in its BGP table (`show ip bgp json`)."""
    table = json.loads(router.vtysh("show ip bgp json") or "{}").get("routes", {})
    return {p: sorted(h["ip"] for path in paths for h in path.get("nexthops", []))
            for p, paths in table.items()}


def frr_peer(router: FrrRouter, address: str) -> dict:
    return router.bgp_summary().get("ipv4Unicast", {}).get("peers", {}).get(address, {})


def sessions(router: FrrRouter, address: str) -> int:
    """How many times FRR established the session with address (a flap adds one)."""
    return json.loads(router.vtysh(f"show bgp neighbors {address} json"))[address]["connectionsEstablished"]


# --------------------------------------------------------------------------- tests
def test_reconfigure_adds_and_removes_peers_without_touching_the_others(fabric):
    tor1 = fabric.frr("tor1", "10.99.1.1", tor_config("tor1", 65001, "10.99.1.1"))
    tor2 = fabric.frr("tor2", "10.99.1.2", tor_config("tor2", 65002, "10.99.1.2"))
    n1 = fabric.node("n1", "10.99.1.11", 64601, "10.244.1.0/26", [peer("10.99.1.1", 65001)])
    wait_for(lambda: "10.244.1.0/26" in frr_prefixes(tor1), "tor1 learns n1's block")
    up1 = sessions(tor1, "10.99.1.11")

    cfg = {**n1.cfg, "peers": [peer("10.99.1.1", 65001), peer("10.99.1.2", 65002)]}
    t0 = time.monotonic()
    assert n1.call("reconfigure", cfg=cfg) == "reloaded"
    wait_for(lambda: "10.244.1.0/26" in frr_prefixes(tor2), "tor2 learns n1's block after reload")
    print(f"\n[info] peer added by reload: route at the new peer after {time.monotonic() - t0:.2f}s")
    assert "10.244.1.0/26" in frr_prefixes(tor1)
    assert sessions(tor1, "10.99.1.11") == up1, "tor1 session flapped"
    assert n1.call("pids")["restarts"] == 0

    assert n1.call("reconfigure", cfg={**n1.cfg, "peers": [peer("10.99.1.2", 65002)]}) == "reloaded"
    wait_for(lambda: "10.244.1.0/26" not in frr_prefixes(tor1), "tor1 loses n1 once removed")
    assert "10.244.1.0/26" in frr_prefixes(tor2)
    assert [p["address"] for p in n1.call("peers")] == ["10.99.1.2"]
    assert n1.call("reconfigure", cfg={**n1.cfg, "peers": [peer("10.99.1.2", 65002)]}) == "unchanged"


def test_node_route_reflector_reflects_between_clients_keeping_next_hops(fabric):
    """n1 is a route reflector (cluster 1.0.0.1); n2 and n3 peer only with it."""
    asn = 64512
    rr = fabric.node("n1", "10.99.1.11", asn, "10.244.1.0/26",
                     [peer("10.99.1.12", asn, route_reflector_client=True, passive=False),
                      peer("10.99.1.13", asn, route_reflector_client=True)],
                     listen=True, cluster_id="1.0.0.1")
    c2 = fabric.node("n2", "10.99.1.12", asn, "10.244.2.0/26", [peer("10.99.1.11", asn)], listen=True)
    c3 = fabric.node("n3", "10.99.1.13", asn, "10.244.3.0/26", [peer("10.99.1.11", asn)], listen=True)
    wait_for(lambda: c2.routes().get(c3.block) == (c3.address,), "n2 routes n3's block via n3")
    wait_for(lambda: c3.routes().get(c2.block) == (c2.address,), "n3 routes n2's block via n2")
    wait_for(lambda: c2.routes().get(rr.block) == (rr.address,), "n2 routes the RR's own block")
    learned = c2.call("learned")[c3.block]
    assert learned == [[c3.address, rr.address, [], c3.address, ["1.0.0.1"]]]
    assert rr.routes() == {c2.block: (c2.address,), c3.block: (c3.address,)}
    sent = {p["address"]: p["sent"] for p in rr.call("peers")}
    assert sent == {c2.address: 2, c3.address: 2}   # own block + the other client's
    # a withdrawal is reflected too
    c3.call("announce", prefixes=[])
    wait_for(lambda: c3.block not in c2.routes(), "n2 drops n3's block after the withdrawal")


def test_frr_route_reflector_keeps_next_hops(fabric):
    asn = 64512
    fabric.frr("rr", "10.99.1.2", tor_config("rr", asn, "10.99.1.2", "internal", rr=True))
    nodes = [fabric.node(f"n{i}", f"10.99.1.1{i}", asn, f"10.244.{i}.0/26",
                         [peer("10.99.1.2", asn)]) for i in (1, 2, 3)]
    for n in nodes:
        for o in nodes:
            if o is not n:
                wait_for(lambda: n.routes().get(o.block) == (o.address,),
                         f"{n.netns} routes {o.block} via {o.address}")


def test_tcp_md5_with_frr(fabric):
    tor = fabric.frr("tor1", "10.99.1.1", tor_config("tor1", 65001, "10.99.1.1", password="s3cret"))
    good = fabric.node("n1", "10.99.1.11", 64601, "10.244.1.0/26",
                       [peer("10.99.1.1", 65001, md5_password="s3cret")])
    bad = fabric.node("n2", "10.99.1.12", 64602, "10.244.2.0/26",
                      [peer("10.99.1.1", 65001, md5_password="wrong")])
    none = fabric.node("n3", "10.99.1.13", 64603, "10.244.3.0/26", [peer("10.99.1.1", 65001)])
    wait_for(lambda: good.state("10.99.1.1") == "Established", "n1 with the right password")
    wait_for(lambda: "10.244.1.0/26" in frr_prefixes(tor), "the ToR learns n1's block")
    time.sleep(3)  # long enough for several connection attempts of the other two
    assert bad.state("10.99.1.1") != "Established"
    assert none.state("10.99.1.1") != "Established"
    assert set(frr_prefixes(tor)) == {"10.244.1.0/26"}


def test_graceful_restart_peers_keep_routes_while_exabgp_restarts(fabric):
    """ExaBGP of n1 is SIGKILLed (no NOTIFICATION): FRR, a GR helper, keeps n1's block as
    stale, so n2's kernel route never disappears; n1 keeps its own kernel routes until its
    new ExaBGP has re-learned them (End-of-RIB)."""
    tor = fabric.frr("tor1", "10.99.1.1", tor_config("tor1", 65001, "10.99.1.1"))
    n1 = fabric.node("n1", "10.99.1.11", 64601, "10.244.1.0/26", [peer("10.99.1.1", 65001)],
                     graceful_restart=30)
    n2 = fabric.node("n2", "10.99.1.12", 64602, "10.244.2.0/26", [peer("10.99.1.1", 65001)],
                     graceful_restart=30)
    wait_for(lambda: n2.routes().get(n1.block) == (n1.address,), "n2 has n1's block")
    wait_for(lambda: n1.routes().get(n2.block) == (n2.address,), "n1 has n2's block")
    assert frr_peer(tor, n1.address).get("state") == "Established"
    missing: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            if n1.block not in n2.routes():
                missing.append("n2 lost n1's block")
            if n2.block not in n1.routes():
                missing.append("n1 lost n2's block")
            time.sleep(0.02)

    before = n1.call("pids")
    t = threading.Thread(target=watch)
    t.start()
    try:
        t0 = time.monotonic()
        os.kill(before["exabgp"], signal.SIGKILL)
        wait_for(lambda: (p := n1.call("pids"))["restarts"] == 1 and p["synced"], "n1 resynced")
        wait_for(lambda: frr_peer(tor, n1.address).get("state") == "Established", "session back")
        took = time.monotonic() - t0
        time.sleep(1)
    finally:
        stop.set()
        t.join()
    print(f"\n[info] exabgp SIGKILL to resynced (GR) {took:.2f}s")
    assert not missing, f"routes went missing during the restart: {sorted(set(missing))}"
    assert "deleted=['" not in n1.log.read_text()


def test_silent_node_is_withdrawn_after_the_hold_time(fabric):
    fabric.frr("tor1", "10.99.1.1", tor_config("tor1", 65001, "10.99.1.1", hold=3))
    n1 = fabric.node("n1", "10.99.1.11", 64601, "10.244.1.0/26",
                     [peer("10.99.1.1", 65001, hold_time=3)])
    n2 = fabric.node("n2", "10.99.1.12", 64602, "10.244.2.0/26",
                     [peer("10.99.1.1", 65001, hold_time=3)])
    wait_for(lambda: n2.routes().get(n1.block) == (n1.address,), "n2 has n1's block")
    t0 = time.monotonic()
    sh("ip", "link", "set", "eth0", "down", netns=n1.netns)  # the cable is cut: no FIN, no RST
    wait_for(lambda: n1.block not in n2.routes(), "n2 drops n1's block after the hold time", 20)
    print(f"\n[info] silent node withdrawn after {time.monotonic() - t0:.2f}s (hold 3 s)")


def gobgp_config(asn: int, address: str, neighbors: list[tuple[str, int]]) -> str:
    out = ["[global.config]", f"  as = {asn}", f'  router-id = "{address}"',
           f'  local-address-list = ["{address}"]']
    for addr, peer_as in neighbors:
        out += ["[[neighbors]]", "  [neighbors.config]", f'    neighbor-address = "{addr}"',
                f"    peer-as = {peer_as}", "  [neighbors.timers.config]", "    hold-time = 9",
                "    keepalive-interval = 3", "  [neighbors.route-server.config]",
                "    route-server-client = true"]
    return "\n".join(out) + "\n"


@pytest.mark.skipif(not shutil.which("gobgpd"), reason="gobgpd not installed (Debian gobgpd)")
def test_gobgp_as_tor(fabric):
    ns = fabric.netns("gobgp", "10.99.1.1")
    conf = fabric.root / "gobgpd.toml"
    conf.write_text(gobgp_config(65001, "10.99.1.1", [("10.99.1.11", 64601), ("10.99.1.12", 64602)]))
    proc = subprocess.Popen(["ip", "netns", "exec", ns, "gobgpd", "-f", str(conf), "-p",
                             "--api-hosts", "127.0.0.1:50051", "--pprof-disable"],
                            stdout=open(fabric.root / "gobgpd.log", "w"), stderr=subprocess.STDOUT)
    fabric.procs.append(proc)
    n1 = fabric.node("n1", "10.99.1.11", 64601, "10.244.1.0/26", [peer("10.99.1.1", 65001)])
    n2 = fabric.node("n2", "10.99.1.12", 64602, "10.244.2.0/26", [peer("10.99.1.1", 65001)])
    wait_for(lambda: n2.routes().get(n1.block) == (n1.address,), "n2 routes n1's block via n1")
    wait_for(lambda: n1.routes().get(n2.block) == (n2.address,), "n1 routes n2's block via n2")
    t0 = time.monotonic()
    n1.call("announce", prefixes=[])
    wait_for(lambda: n1.block not in n2.routes(), "the withdrawal through GoBGP")
    print(f"\n[info] withdraw through GoBGP seen in n2's kernel after {time.monotonic() - t0:.3f}s")
