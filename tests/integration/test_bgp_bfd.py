"""BFD against FRR's bfdd: a real agent (its own etcd, ExaBGP, the BFD runner) peers with an
FRR ToR, both with BFD 100 ms x 3 and a BGP hold time of 90 s.

- BFD is switched on with `bgp peer set` while the agent runs: the session comes Up on both
  sides (`show bfd peers json`) and BGP does not flap for it;
- the ToR falls silent (an nftables drop of BFD and BGP in its namespace, no link down): the
  agent declares BFD down, tears BGP down and removes the ToR's route from the kernel, and
  says why (node status, log, metric) long before the hold time could have;
- the node falls silent: FRR drops the node's block, and says BFD did it;
- after each, the silence is lifted and BFD, BGP and the routes come back.
Timings are printed, never asserted.
"""
from __future__ import annotations

import json
import re
import time

from calico_lite import keys
from calico_lite.lab.frr import FrrRouter, render_frr_config
from tests.faults.agent_node import agent_node, wait_until
from tests.nslib import sh

TOR, NODE = "10.99.1.1", "10.99.1.11"
TOR_PREFIX = "10.244.9.0/26"      # the ToR's own network statement
NODE_BLOCK = "10.244.1.0/26"      # affine to the node in etcd: the agent announces it
HOLD = 90                         # s: anything gone within the wait below was BFD's doing
SILENCE = "bdsilence"


def silence(netns: str, on: bool) -> None:
    """Drop BFD and BGP both ways in `netns` (its links stay up), or lift that."""
    if not on:
        sh("nft", "delete", "table", "inet", SILENCE, netns=netns)
        return
    drop = "udp dport 3784 drop; tcp dport 179 drop; tcp sport 179 drop;"
    sh("nft", "-f", "-", netns=netns, input=(
        f"table inet {SILENCE} {{\n"
        f" chain in {{ type filter hook input priority -10; {drop} }}\n"
        f" chain out {{ type filter hook output priority -10; {drop} }}\n}}\n"))


def frr_bfd(tor: FrrRouter) -> dict:
    peers = json.loads(tor.vtysh("show bfd peers json") or "[]")
    return next((p for p in peers if p.get("peer") == NODE), {})


def frr_prefixes(tor: FrrRouter) -> set[str]:
    return set(json.loads(tor.vtysh("show ip bgp json") or "{}").get("routes", {}))


def bfd_of(node) -> dict:
    return next(iter(node.status().get("bfd", [])), {})


def peer_of(node) -> dict:
    return next((p for p in node.status().get("peers", []) if p["address"] == TOR), {})


def downs(node) -> float:
    m = re.search(r'^calico_lite_bfd_session_down_total\{peer="10\.99\.1\.1"\} (\S+)',
                  node.metrics(), re.M)
    return float(m.group(1)) if m else 0.0


def all_up(node, tor: FrrRouter) -> bool:
    return (bfd_of(node).get("state") == "Up" and frr_bfd(tor).get("status") == "up"
            and peer_of(node).get("state") == "Established"
            and TOR_PREFIX in node.routes("proto", "88") and NODE_BLOCK in frr_prefixes(tor))


def test_bfd_with_frr_tears_down_a_silent_peer_on_either_side_and_recovers():
    with agent_node("bd") as node:
        tor_ns = node.attach("tor1", TOR)
        tor = FrrRouter(tor_ns, node.root / "frr-tor1", render_frr_config(
            "tor1", 65001, TOR, neighbors=[(NODE, 64601)], networks=[TOR_PREFIX],
            hold_time=HOLD, log_file=str(node.root / "frr-tor1" / "frr.log"), bfd=(100, 3)))
        try:
            tor.start()
            node.ds("put", key=keys.affinity("n1", NODE_BLOCK), value={"state": "confirmed"})
            node.cli("bgp", "config", "set", "--mesh", "off", "--as-number", "64601")
            node.cli("bgp", "peer", "add", "tor1", "--peer-ip", TOR, "--as", "65001",
                     "--hold-time", str(HOLD))
            node.start_agent()
            wait_until(lambda: TOR_PREFIX in node.routes("proto", "88"), "the ToR's route")
            assert not node.status().get("bfd")

            # BFD switched on in the running agent: Up on both sides, BGP untouched
            out = node.cli("bgp", "peer", "set", "tor1", "--bfd", "on", "--bfd-interval", "100",
                           "--bfd-multiplier", "3").stdout
            assert "BFD 100 ms x 3" in out, out
            wait_until(lambda: all_up(node, tor), "BFD Up on the agent and on FRR")
            b, f = bfd_of(node), frr_bfd(tor)
            assert (b["tx_ms"], b["rx_ms"], b["multiplier"], b["remote_multiplier"]) == (100, 100, 3, 3)
            assert (b["local_discr"], b["remote_discr"]) == (f["remote-id"], f["id"]), (b, f)
            assert (f["remote-receive-interval"], f["remote-transmit-interval"]) == (100, 100), f
            nbr = json.loads(tor.vtysh(f"show bgp neighbors {NODE} json"))[NODE]
            assert nbr["connectionsEstablished"] == 1, "switching BFD on re-established BGP"
            text = node.cli("node", "status", "n1").stdout
            assert "BFD sessions" in text and re.search(r"\| 10\.99\.1\.1 +\| Up ", text), text

            _tor_falls_silent(node, tor, tor_ns)
            _node_falls_silent(node, tor)
        except BaseException:
            log = node.root / "frr-tor1" / "frr.log"
            print("--- frr.log\n" + (log.read_text(errors="replace")[-3000:] if log.exists() else ""))
            raise
        finally:
            tor.stop()


def _tor_falls_silent(node, tor: FrrRouter, tor_ns: str) -> None:
    t0 = time.monotonic()
    silence(tor_ns, True)
    wait_until(lambda: TOR_PREFIX not in node.routes("proto", "88"),
               "the ToR's route removed from the kernel", timeout=HOLD / 2)
    print(f"ToR silent: its route removed after {time.monotonic() - t0:.2f} s (hold {HOLD} s)")
    b, p = bfd_of(node), peer_of(node)
    assert b["state"] == "Down" and b["last_down"] == "control detection time expired", b
    assert b["flaps"] == 1, b
    assert p["state"] != "Established" and p["reason"] == "bfd: control detection time expired", p
    assert downs(node) == 1.0
    assert "down by bfd (control detection time expired)" in node.log_text()
    text = node.cli("node", "status", "n1").stdout
    assert "bfd: control detection time expired" in text, text

    t0 = time.monotonic()
    silence(tor_ns, False)
    wait_until(lambda: all_up(node, tor), "BFD, BGP and the routes back after the ToR's silence")
    print(f"ToR back: BFD, BGP and the routes back after {time.monotonic() - t0:.2f} s")


def _node_falls_silent(node, tor: FrrRouter) -> None:
    t0 = time.monotonic()
    silence(node.netns, True)
    wait_until(lambda: NODE_BLOCK not in frr_prefixes(tor), "FRR drops the node's block",
               timeout=HOLD / 2)
    print(f"node silent: FRR dropped its block after {time.monotonic() - t0:.2f} s (hold {HOLD} s)")
    f = frr_bfd(tor)
    assert f["status"] == "down" and f["diagnostic"] == "control detection time expired", f
    nbr = json.loads(tor.vtysh(f"show bgp neighbors {NODE} json"))[NODE]
    # FRR closed the session itself, with a Cease "BFD Down" (ExaBGP, with graceful restart
    # negotiated, closes without a NOTIFICATION)
    assert (nbr["lastResetDueTo"], nbr["lastNotificationReason"]) == (
        "BGP Notification send", "Cease/BFD Down"), nbr

    t0 = time.monotonic()
    silence(node.netns, False)
    wait_until(lambda: all_up(node, tor), "BFD, BGP and the routes back after the node's silence")
    print(f"node back: BFD, BGP and the routes back after {time.monotonic() - t0:.2f} s")
    assert downs(node) == 2.0   # the agent saw the path fail too
