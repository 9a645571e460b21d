"""Speaker + RouteApplier against real FRR and real ExaBGP, in network namespaces.

Each node runs a small worker (this file run as a script) inside its namespace with
`ip netns exec`, as the node agent would: a Speaker whose on_change turns learned paths into
kernel routes. The test drives it over stdin/stdout (JSON lines) and looks at the kernel
with `ip -j route`. Timings are printed for information only, never asserted.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if __name__ == "__main__":
    sys.path.insert(0, str(REPO))

PROTO = 88
SUBNET = "10.99.1.0/24"
DEADLINE = 60.0


# --------------------------------------------------------------------------- worker
def worker_main(argv: list[str]) -> int:
    """Runs inside a node netns: a Speaker plus the agent's route loop, driven over stdio."""
    import logging
    import threading

    from bgp.config import PeerConfig, SpeakerConfig
    from bgp.routes import RouteApplier, desired_routes
    from bgp.speaker import Speaker

    spec = json.loads(argv[0])
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(threadName)s %(message)s")
    cfg = SpeakerConfig(router_id=spec["address"], local_address=spec["address"],
                        local_as=spec["asn"], listen=spec.get("listen", False),
                        peers=[PeerConfig(address=a, peer_as=asn, hold_time=spec.get("hold", 9))
                               for a, asn in spec["peers"]])
    applier = RouteApplier(proto=PROTO)
    lock = threading.Lock()
    speaker: Speaker | None = None

    def sync() -> None:
        with lock:
            if speaker is None or not speaker.synced():  # graceful restart: keep old routes
                return
            plan = desired_routes(speaker.learned(), own_prefixes=speaker.announced(),
                                  local_subnets=[SUBNET], local_addresses=[spec["address"]])
            result = applier.apply(plan.routes)
            if result.changed or result.errors:
                print(f"routes {result}", file=sys.stderr, flush=True)

    speaker = Speaker(cfg, workdir=Path(spec["workdir"]), on_change=sync,
                      restart_delay=spec.get("restart_delay", 0.5))
    out = sys.stdout
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        reply: object = None
        if op == "start":
            speaker.start()
        elif op == "announce":
            speaker.announce(set(cmd["prefixes"]))
            sync()
        elif op == "learned":
            reply = {p: sorted([x.next_hop, x.peer, list(x.as_path)] for x in paths)
                     for p, paths in speaker.learned().items()}
        elif op == "peers":
            reply = [vars(p) for p in speaker.peers()]
        elif op == "pids":
            reply = {"exabgp": speaker.exabgp_pid, "relay": speaker.relay_pid,
                     "restarts": speaker.restarts, "adopted": speaker.adopted,
                     "synced": speaker.synced()}
        elif op == "stop":
            speaker.stop()
        elif op == "exit":
            speaker.stop()
            out.write(json.dumps({"ok": True}) + "\n")
            out.flush()
            return 0
        out.write(json.dumps({"ok": True, "reply": reply}) + "\n")
        out.flush()
    speaker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))


# --------------------------------------------------------------------------- fixtures
import pytest  # noqa: E402

from calico_lite.lab.frr import FrrRouter, render_frr_config  # noqa: E402
from tests.nslib import remove_netns_with_prefix, sh, unique_prefix  # noqa: E402
from tests.nslib import wait_for as _wait_for  # noqa: E402


@dataclass
class Node:
    name: str          # netns
    address: str
    asn: int
    block: str
    proc: subprocess.Popen | None = None
    log: Path | None = None

    def call(self, op: str, **kw):
        assert self.proc is not None and self.proc.poll() is None, f"worker {self.name} is dead"
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"worker {self.name} gave no answer to {op}; log: {self.log_tail()}"
        return json.loads(line)["reply"]

    def log_tail(self) -> str:
        return self.log.read_text()[-3000:] if self.log and self.log.exists() else ""

    def routes(self) -> dict[str, tuple[str, ...]]:
        """Kernel routes with our proto in this node: prefix -> next hops."""
        out = sh("ip", "-j", "route", "show", "proto", str(PROTO), netns=self.name).stdout
        routes = {}
        for r in json.loads(out or "[]"):
            hops = [r["gateway"]] if "gateway" in r else [h["gateway"] for h in r.get("nexthops", [])]
            routes[r["dst"]] = tuple(sorted(hops))
        return routes


@dataclass
class Fabric:
    prefix: str
    root: Path
    frr_root: Path
    nodes: list[Node] = field(default_factory=list)
    routers: list[FrrRouter] = field(default_factory=list)

    @property
    def seg(self) -> str:
        return f"{self.prefix}seg"

    def netns(self, name: str, address: str) -> str:
        ns = f"{self.prefix}{name}"
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", self.seg, "link", "add", f"v-{name}", "type", "veth",
           "peer", "name", "eth0", "netns", ns)
        sh("ip", "-n", self.seg, "link", "set", f"v-{name}", "master", "br0", "up")
        sh("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        return ns

    def add_tor(self, name: str, address: str, asn: int = 65001) -> FrrRouter:
        ns = self.netns(name, address)
        rundir = self.frr_root / name  # FRR drops to user frr: pytest's tmp_path is 0700
        cfg = render_frr_config(name, asn, address, listen_ranges=[(SUBNET, "external")],
                                hold_time=9, log_file=str(rundir / "frr.log"))
        router = FrrRouter(ns, rundir, cfg)
        self.routers.append(router)
        router.start()
        return router

    def add_node(self, name: str, address: str, asn: int, block: str, peers, listen=False) -> Node:
        ns = self.netns(name, address)
        node = Node(ns, address, asn, block, log=self.root / f"{name}.log")
        spec = {"address": address, "asn": asn, "peers": peers, "listen": listen,
                "workdir": str(self.root / name / "bgp")}
        node.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, str(Path(__file__).resolve()), json.dumps(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(node.log, "w"), text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO)
        self.nodes.append(node)
        return node

    def teardown(self) -> None:
        for n in self.nodes:
            if n.proc is not None and n.proc.poll() is None:
                try:
                    n.proc.stdin.write(json.dumps({"op": "exit"}) + "\n")
                    n.proc.stdin.flush()
                    n.proc.wait(timeout=15)
                except (OSError, subprocess.TimeoutExpired):
                    n.proc.kill()
                    n.proc.wait()
        for r in self.routers:
            r.stop()
        remove_netns_with_prefix(self.prefix)


@pytest.fixture
def fabric(tmp_path):
    prefix = unique_prefix("bgp")
    frr_root = Path(tempfile.mkdtemp(prefix=f"{prefix}-frr-"))
    frr_root.chmod(0o755)
    fab = Fabric(prefix, tmp_path, frr_root)
    try:
        sh("ip", "netns", "add", fab.seg)
        sh("ip", "-n", fab.seg, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", fab.seg, "link", "set", "br0", "up")
        yield fab
    finally:
        fab.teardown()
        shutil.rmtree(frr_root, ignore_errors=True)
        leftovers = [l for l in sh("ip", "netns", "list").stdout.splitlines() if l.startswith(prefix)]
        assert not leftovers, f"namespaces left behind: {leftovers}"


def wait_for(check, what: str, timeout: float = DEADLINE, interval: float = 0.05):
    return _wait_for(check, what, timeout, interval)


def others_ok(node: Node, others: list[Node]) -> bool:
    """The node routes every other node's block via that node, and never its own."""
    routes = node.routes()
    return node.block not in routes and all(
        routes.get(o.block) == (o.address,) for o in others)


def three_nodes_behind_tor(fab: Fabric) -> list[Node]:
    fab.add_tor("tor1", "10.99.1.1")
    nodes = [fab.add_node(f"n{i}", f"10.99.1.1{i}", 64600 + i, f"10.244.{i}.0/26",
                          peers=[("10.99.1.1", 65001)]) for i in (1, 2, 3)]
    for n in nodes:
        n.call("start")
        n.call("announce", prefixes=[n.block])
    return nodes


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
        wait_for(lambda: others_ok(n, others), f"{n.name} routes to the other blocks")
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
        wait_for(lambda: n1.block not in n.routes(), f"{n.name} drops {n1.block}")
    print(f"[info] withdraw seen in peers' kernels after {time.monotonic() - t1:.3f}s")
    extra = "10.244.101.0/26"
    n1.call("announce", prefixes=[n1.block, extra])
    for n in (n2, n3):
        wait_for(lambda: n.routes().get(extra) == (n1.address,) and others_ok(n, [n1]),
                 f"{n.name} gets both blocks of n1")
    n1.call("announce", prefixes=[n1.block])
    for n in (n2, n3):
        wait_for(lambda: extra not in n.routes() and others_ok(n, [n1]), f"{n.name} drops {extra}")


def test_speaker_stop_withdraws_at_peers_and_leaves_no_process(fabric):
    n1, n2, n3 = three_nodes_behind_tor(fabric)
    for n in (n1, n3):
        wait_for(lambda: n.routes().get(n2.block) == (n2.address,), f"{n.name} has n2's block")
    pids = n2.call("pids")
    assert pids["exabgp"] and pids["relay"]
    t0 = time.monotonic()
    n2.call("stop")
    for n in (n1, n3):
        wait_for(lambda: n2.block not in n.routes(), f"{n.name} drops n2's block")
    print(f"\n[info] speaker stop to withdrawn in peers' kernels {time.monotonic() - t0:.3f}s")
    for pid in (pids["exabgp"], pids["relay"]):
        assert not Path(f"/proc/{pid}").exists(), f"pid {pid} still there after stop"
    assert not n2.routes(), "n2's learned routes are flushed once its sessions are gone"
    # n1 and n3 still reach each other
    assert others_ok(n1, [n3]) and others_ok(n3, [n1])


def test_killed_exabgp_is_restarted_and_reannounces(fabric):
    n1, n2, n3 = three_nodes_behind_tor(fabric)
    for n in (n2, n3):
        wait_for(lambda: n.routes().get(n1.block) == (n1.address,), f"{n.name} has n1's block")
    before = n1.call("pids")
    t0 = time.monotonic()
    os.kill(before["exabgp"], signal.SIGKILL)
    after = wait_for(lambda: (p := n1.call("pids"))["restarts"] >= 1 and p["exabgp"]
                     and p["exabgp"] != before["exabgp"] and p["relay"] and p, "a new exabgp")
    wait_for(lambda: not Path(f"/proc/{before['relay']}").exists(), "the old relay to exit")
    for n in (n2, n3):
        wait_for(lambda: n.routes().get(n1.block) == (n1.address,), f"{n.name} has n1's block again")
    wait_for(lambda: others_ok(n1, [n2, n3]), "n1 relearns the other blocks")
    print(f"\n[info] exabgp SIGKILL to re-announced everywhere {time.monotonic() - t0:.2f}s "
          f"(pid {before['exabgp']} -> {after['exabgp']})")


def test_ibgp_mesh_with_listen_and_ecmp(fabric):
    """Three nodes in a full iBGP mesh, no router. n1 and n2 also announce one shared
    (anycast) prefix, which n3 must route over both: one ECMP route."""
    addrs = {1: "10.99.1.11", 2: "10.99.1.12", 3: "10.99.1.13"}
    nodes = []
    for i, a in addrs.items():
        peers = [(b, 64512) for j, b in addrs.items() if j != i]
        nodes.append(fabric.add_node(f"m{i}", a, 64512, f"10.244.{i}.0/26", peers=peers, listen=True))
    anycast = "10.244.200.0/26"
    t0 = time.monotonic()
    for n in nodes:
        n.call("start")
    n1, n2, n3 = nodes
    n1.call("announce", prefixes=[n1.block, anycast])
    n2.call("announce", prefixes=[n2.block, anycast])
    n3.call("announce", prefixes=[n3.block])
    for n in nodes:
        wait_for(lambda: others_ok(n, [o for o in nodes if o is not n]), f"{n.name} mesh routes")
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
        wait_for(lambda: n.routes().get(n1.block) == (n1.address,), f"{n.name} has n1's block")
    wait_for(lambda: others_ok(n1, [n2, n3]), "n1 has the other blocks")
    before = n1.call("pids")
    n1.proc.kill()
    n1.proc.wait()
    assert Path(f"/proc/{before['exabgp']}").exists(), "exabgp must outlive the agent"
    assert others_ok(n1, [n2, n3]), "kernel routes stay while the agent is away"

    t0 = time.monotonic()
    new = Node(n1.name, n1.address, n1.asn, n1.block, log=fabric.root / "n1-again.log")
    spec = {"address": n1.address, "asn": n1.asn, "peers": [("10.99.1.1", 65001)],
            "workdir": str(fabric.root / "n1" / "bgp")}
    new.proc = subprocess.Popen(
        ["ip", "netns", "exec", n1.name, sys.executable, str(Path(__file__).resolve()), json.dumps(spec)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(new.log, "w"), text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO)
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
        assert f"deleted=['{n1.block}']" not in n.log.read_text(), f"{n.name} saw a flap"
    assert "deleted=" not in new.log.read_text(), "the new agent must not drop routes while resyncing"
