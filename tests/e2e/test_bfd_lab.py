"""`lab up --bfd`: the ToRs run bfdd with a 100 ms x 3 profile for their nodes, whose ToR
peer records have BFD on; every session comes Up without taking BGP down on the way (our
side starts BFD once BGP is Established, as FRR's bgpd does), `node status` shows it; after
an agent restart (AdminDown, then a new session) BFD and BGP are back, and `lab down` leaves
no bfdd behind. FRR 8.4 takes the AdminDown for a failure and re-establishes BGP once (RFC
5882 3.2 says it should not): that flap is printed, and is in the README's limits."""
from __future__ import annotations

import json

import pytest

from bgp.process import pid_alive
from tests.conftest import lab_cli
from tests.e2e.labutil import lab_name, run_dir, running_lab
from tests.nslib import sh, wait_for

pytestmark = pytest.mark.slow
NODES = {"r1n1": "10.99.1.11", "r1n2": "10.99.1.12"}


def vtysh(lab: str, cmd: str) -> str:
    return sh("vtysh", "--vty_socket", str(run_dir(lab) / "frr" / "tor1"), "-c", cmd,
              netns=f"{lab}-tor1").stdout


def frr_bfd(lab: str) -> dict[str, dict]:
    return {p["peer"]: p for p in json.loads(vtysh(lab, "show bfd peers json") or "[]")}


def node_bfd(lab: str, node: str) -> list[dict]:
    out = lab_cli("node", "status", node, "--lab", lab, "--json").stdout
    return json.loads(out)[0].get("bfd", [])


def all_up(lab: str) -> bool:
    frr = frr_bfd(lab)
    return all(frr.get(a, {}).get("status") == "up" and
               [b["state"] for b in node_bfd(lab, n)] == ["Up"] for n, a in NODES.items())


def established(lab: str, address: str) -> int:
    return json.loads(vtysh(lab, f"show bgp neighbors {address} json"))[address][
        "connectionsEstablished"]


def test_lab_bfd_sessions_up_on_both_sides_and_back_after_an_agent_restart():
    with running_lab(lab_name("bfd"), "--bfd", "--no-kubernetes", "--insecure-etcd",
                     "--racks", "1", "--nodes-per-rack", "2") as lab:
        wait_for(lambda: all_up(lab), "BFD Up on the ToR and on both nodes", 60, 0.2)
        frr = frr_bfd(lab)
        for node, address in NODES.items():
            b = node_bfd(lab, node)[0]
            assert (b["peer"], b["tx_ms"], b["rx_ms"], b["multiplier"]) == ("10.99.1.1", 100, 100, 3)
            assert b["remote_discr"] == frr[address]["id"], (b, frr[address])
        text = lab_cli("node", "status", "r1n1", "--lab", lab).stdout
        assert "BFD sessions" in text and "| 10.99.1.1    | Up " in text, text
        pids = json.loads((run_dir(lab) / "state.json").read_text())["pids"]
        bfdd = pids["frr:tor1:bfdd"]
        assert pid_alive(bfdd)

        before = established(lab, NODES["r1n1"])
        assert before == 1, "BFD coming up took BGP down"
        lab_cli("lab", "node", "restart", "r1n1", "--name", lab)   # SIGTERM: AdminDown sent
        wait_for(lambda: all_up(lab), "BFD Up again after the agent restart", 60, 0.2)
        wait_for(lambda: "10.99.1.1 Established" in lab_cli(
            "lab", "status", "--name", lab).stdout, "BGP Established after the restart", 60, 0.2)
        print(f"BGP sessions FRR established with r1n1: {before} before the agent restart, "
              f"{established(lab, NODES['r1n1'])} after")
    assert not pid_alive(bfdd), "lab down left bfdd running"
