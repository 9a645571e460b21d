"""BGP in the lab end to end: graceful restart of agents, route reflectors, live BGP
configuration from the datastore, failures (hold time, killed ExaBGP, dead node).

Each test builds its own small lab (a few seconds) and removes it, also on failure.
Timings are printed for information, never asserted.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from calico_lite.lab.lab import Lab
from tests.conftest import lab_cli
from tests.e2e.labutil import (UdpStream, agent_pid, exabgp_pid, lab_name, pod_ip, run_dir,
                               running_lab, tor_sessions, vtysh)
from tests.nslib import wait_for

pytestmark = pytest.mark.slow




def node_status(lab: str, node: str) -> dict:
    return json.loads(lab_cli("node", "status", node, "--lab", lab, "--json").stdout)[0]


def kernel_routes(lab: str, node: str) -> dict[str, str]:
    out = subprocess.run(["ip", "-n", f"{lab}-{node}", "-j", "route", "show", "proto", "88"],
                         capture_output=True, text=True).stdout
    return {r["dst"]: r.get("gateway", "ecmp") for r in json.loads(out or "[]")}


def blocks(lab: str, node: str) -> list[str]:
    return node_status(lab, node)["blocks"]




def test_agent_restart_loses_no_packet(tmp_path):
    """`lab node restart` (SIGTERM + the same argv again) on both ends of a cross-rack UDP
    stream (a probe every 10 ms): ExaBGP and its sessions stay, routes stay, nothing lost."""
    with running_lab(lab_name("gr"), "--racks", "2", "--nodes-per-rack", "1") as lab:
        for node in ("r1n1", "r2n1"):
            lab_cli("lab", "pod", "add", f"default/p-{node}", "--node", node, "--name", lab,
                    "--serve", "udp:80,tcp:80")
        lab_cli("lab", "wait", "--name", lab)
        before = {n: exabgp_pid(lab, n) for n in ("r1n1", "r2n1")}
        sessions = tor_sessions(lab, "tor1", "10.99.1.11")
        stream = UdpStream(lab, "default/p-r1n1", pod_ip(lab, "default/p-r2n1"))
        try:
            time.sleep(0.5)
            t0 = time.monotonic()
            for node in ("r1n1", "r2n1"):
                old = agent_pid(lab, node)
                lab_cli("lab", "node", "restart", node, "--name", lab)
                assert agent_pid(lab, node) != old
            # the new agents are up: they republish their status with the adopted ExaBGP
            for node in ("r1n1", "r2n1"):
                wait_for(lambda: node_status(lab, node)["updated"] > time.time() - 5 and
                         Lab(lab).node_paths(node).socket.exists(), f"{node} agent back")
            took = time.monotonic() - t0
            time.sleep(1.0)
        finally:
            result = stream.finish()
        print(f"\n[info] two agent restarts in {took:.1f}s; stream: sent {result['sent']}, "
              f"lost {result['lost_count']}, longest outage {result['longest_outage_s']}s")
        assert result["sent"] > 200
        assert result["lost_count"] == 0, f"lost probes during the restarts: {result['lost'][:20]}"
        assert {n: exabgp_pid(lab, n) for n in before} == before, "ExaBGP was restarted"
        assert tor_sessions(lab, "tor1", "10.99.1.11") == sessions, "the ToR session flapped"
        # the new agent works: a new pod on it is reachable from the other rack
        lab_cli("lab", "pod", "add", "default/q-r1n1", "--node", "r1n1", "--name", lab,
                "--serve", "tcp:80")
        rows = json.loads(lab_cli("lab", "probe", "--name", lab, "--json").stdout)
        assert all(r["connected"] for r in rows), [r for r in rows if not r["connected"]]


def test_route_reflectors_then_mesh_switched_on_live():
    """--bgp rr: r1n1 and r2n1 reflect (one cluster); clients peer only with them and learn
    each other's blocks with the original next hop. Then the mesh is switched on in the
    datastore: every agent reconfigures its running ExaBGP (no restart)."""
    with running_lab(lab_name("gr"), "--bgp", "rr", "--racks", "2", "--nodes-per-rack", "2") as lab:
        for node in ("r1n1", "r1n2", "r2n2"):
            lab_cli("lab", "pod", "add", f"default/p-{node}", "--node", node, "--name", lab,
                    "--serve", "tcp:80")
        lab_cli("lab", "wait", "--name", lab)
        client = node_status(lab, "r1n2")
        assert sorted(p["address"] for p in client["peers"]) == ["10.99.1.11", "10.99.2.11"]
        rr = node_status(lab, "r1n1")
        assert rr["bgp"]["routeReflectorClusterId"] == "244.0.0.1"
        assert len(rr["peers"]) == 3 and all(p["state"] == "Established" for p in rr["peers"])
        # r1n2 learned r2n2's block only through a reflector, with r2n2 as next hop
        far = blocks(lab, "r2n2")[0]
        assert any(s["prefix"] == far and s["via"] == "10.99.2.12" for s in client["skipped"])
        near = blocks(lab, "r1n1")[0]
        assert kernel_routes(lab, "r1n2").get(near) == "10.99.1.11"
        assert kernel_routes(lab, "r1n1").get(blocks(lab, "r1n2")[0]) == "10.99.1.12"
        rows = json.loads(lab_cli("lab", "probe", "--name", lab, "--json").stdout)
        same_rack = [r for r in rows if {r["from"], r["to"]} == {"default/p-r1n1", "default/p-r1n2"}]
        assert len(same_rack) == 2 and all(r["connected"] for r in same_rack)

        pids = {n: exabgp_pid(lab, n) for n in ("r1n1", "r1n2", "r2n2")}
        t0 = time.monotonic()
        lab_cli("bgp", "config", "set", "--mesh", "on", "--lab", lab)
        wait_for(lambda: len([p for p in node_status(lab, "r1n2")["peers"]
                              if p["state"] == "Established"]) == 3, "r1n2 in the full mesh")
        print(f"\n[info] mesh switched on: r1n2 has 3 sessions after {time.monotonic() - t0:.2f}s")
        assert {n: exabgp_pid(lab, n) for n in pids} == pids, "reconfiguration restarted ExaBGP"
        assert kernel_routes(lab, "r1n2").get(near) == "10.99.1.11"


def test_failures_hold_time_killed_exabgp_and_dead_node():
    """One rack of three nodes behind FRR, hold time 3 s and no graceful restart (datastore):
    TCP MD5 switched on (password from a datastore secret); a killed ExaBGP is restarted by
    its agent; a node whose link is cut is withdrawn after
    the hold time; a crashed node (agent and ExaBGP SIGKILLed) is withdrawn at once."""
    with running_lab(lab_name("gr"), "--racks", "1", "--nodes-per-rack", "3") as lab:
        lab_cli("bgp", "config", "set", "--hold-time", "3", "--graceful-restart", "0", "--lab", lab)
        for node in ("r1n1", "r1n2", "r1n3"):
            lab_cli("lab", "pod", "add", f"default/p-{node}", "--node", node, "--name", lab)
        lab_cli("lab", "wait", "--name", lab)
        b2, b3 = blocks(lab, "r1n2")[0], blocks(lab, "r1n3")[0]
        wait_for(lambda: "Hold time is 3" in vtysh(lab, "tor1", "show bgp neighbors 10.99.1.12"),
                 "hold time 3 negotiated with the ToR")
        wait_for(lambda: kernel_routes(lab, "r1n1").get(b2) == "10.99.1.12", "r1n1 routes r1n2")

        # 0. TCP MD5 from a secret in the datastore: the ToR wants a password, the agents
        #    take it from `bgp secret` + the peer record, without a restart
        pids = {n: agent_pid(lab, n) for n in ("r1n1", "r1n2", "r1n3")}
        lab_cli("bgp", "secret", "set", "tor-md5", "--password", "s3cret", "--lab", lab)
        subprocess.run(["ip", "netns", "exec", f"{lab}-tor1", "vtysh", "--vty_socket",
                        str(run_dir(lab) / "frr" / "tor1"), "-c", "conf t", "-c", "router bgp 65001",
                        "-c", "neighbor NODES password s3cret"], check=True, capture_output=True)
        lab_cli("bgp", "peer", "add", "tor-rack1", "--replace", "--peer-ip", "10.99.1.1", "--as",
                "65001", "--node-selector", 'rack == "rack1"', "--password-secret", "tor-md5",
                "--lab", lab)
        wait_for(lambda: all(p["state"] == "Established" for n in ("r1n1", "r1n2", "r1n3")
                             for p in node_status(lab, n)["peers"]), "MD5 sessions up")
        assert "s3cret" in (Lab(lab).node_paths("r1n1").run_dir / "bgp" / "exabgp.conf").read_text()
        assert {n: agent_pid(lab, n) for n in pids} == pids
        wait_for(lambda: kernel_routes(lab, "r1n1").get(b2) == "10.99.1.12", "routes after MD5")

        # 1. ExaBGP of r1n3 dies: its agent starts a new one, the block comes back
        old = exabgp_pid(lab, "r1n3")
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: exabgp_pid(lab, "r1n3") != old, "a new ExaBGP on r1n3")
        wait_for(lambda: kernel_routes(lab, "r1n1").get(b3) == "10.99.1.13", "r1n3's block back")
        wait_for(lambda: all(p["state"] == "Established" for p in node_status(lab, "r1n3")["peers"]),
                 "r1n3's session back")

        # 2. r1n2's cable is cut: no FIN, no RST; gone after the hold time
        subprocess.run(["ip", "-n", f"{lab}-r1n2", "link", "set", "eth0", "down"], check=True)
        t0 = time.monotonic()
        wait_for(lambda: b2 not in kernel_routes(lab, "r1n1"), "r1n2's block withdrawn", 20)
        print(f"\n[info] link cut to withdrawn at r1n1 {time.monotonic() - t0:.2f}s (hold 3 s)")

        # 3. r1n3 crashes (agent and ExaBGP SIGKILLed): its kernel closes the sessions
        t0 = time.monotonic()
        lab_cli("lab", "node", "stop", "r1n3", "--how", "kill", "--name", lab)
        wait_for(lambda: b3 not in kernel_routes(lab, "r1n1"), "r1n3's block withdrawn", 20)
        print(f"[info] crashed node withdrawn at r1n1 {time.monotonic() - t0:.2f}s")
        assert kernel_routes(lab, "r1n1") == {}, "only r1n1's own block is left"
