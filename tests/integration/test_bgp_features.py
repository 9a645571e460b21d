"""Speaker features against real routers in namespaces: live reconfiguration (reload),
a node acting as route reflector, FRR as route reflector, TCP MD5, graceful restart with
FRR as helper, hold-time expiry of a silent node, and GoBGP as a second ToR implementation.

Each node is a worker (this file run as a script in the node's netns): a Speaker plus the
agent's route loop, driven over stdin/stdout. Timings are printed, never asserted.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if __name__ == "__main__":
    sys.path.insert(0, str(REPO))

PROTO = 88
SUBNET = "10.99.1.0/24"
DEADLINE = 45.0


# --------------------------------------------------------------------------- worker
def _speaker_config(d: dict):
    from bgp.config import PeerConfig, SpeakerConfig
    return SpeakerConfig(**{**d, "peers": [PeerConfig(**p) for p in d.get("peers", [])]})


def worker_main(argv: list[str]) -> int:
    import logging

    from bgp.routes import RouteApplier, desired_routes
    from bgp.speaker import Speaker

    spec = json.loads(argv[0])
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(threadName)s %(message)s")
    cfg = _speaker_config(spec["cfg"])
    applier = RouteApplier(proto=PROTO)
    lock = threading.Lock()
    holder: dict = {}

    def sync() -> None:
        with lock:
            sp = holder.get("speaker")
            if sp is None or not sp.synced():
                return
            plan = desired_routes(sp.learned(), own_prefixes=sp.announced(),
                                  local_subnets=[SUBNET], local_addresses=[sp.cfg.local_address])
            result = applier.apply(plan.routes)
            if result.changed or result.errors:
                print(f"routes {result}", file=sys.stderr, flush=True)

    def ticker() -> None:  # the agent's periodic resync (graceful restart deadline)
        while True:
            time.sleep(0.5)
            sync()

    speaker = Speaker(cfg, workdir=Path(spec["workdir"]), on_change=sync, restart_delay=0.3)
    holder["speaker"] = speaker
    threading.Thread(target=ticker, daemon=True).start()
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        reply: object = None
        if op == "start":
            speaker.start()
        elif op == "reconfigure":
            reply = speaker.reconfigure(_speaker_config(cmd["cfg"]))
        elif op == "announce":
            speaker.announce(set(cmd["prefixes"]))
            sync()
        elif op == "learned":
            reply = {p: sorted([x.next_hop, x.peer, list(x.as_path), x.originator_id,
                                list(x.cluster_list)] for x in paths)
                     for p, paths in speaker.learned().items()}
        elif op == "peers":
            reply = [vars(p) for p in speaker.peers()]
        elif op == "pids":
            reply = {"exabgp": speaker.exabgp_pid, "restarts": speaker.restarts,
                     "synced": speaker.synced()}
        elif op == "detach":
            speaker.detach()
            sys.stdout.write(json.dumps({"ok": True}) + "\n")
            sys.stdout.flush()
            os._exit(0)
        elif op == "exit":
            speaker.stop()
            sys.stdout.write(json.dumps({"ok": True}) + "\n")
            sys.stdout.flush()
            return 0
        sys.stdout.write(json.dumps({"ok": True, "reply": reply}) + "\n")
        sys.stdout.flush()
    speaker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))


# --------------------------------------------------------------------------- fixtures
import pytest  # noqa: E402

from calico_lite.lab.frr import FrrRouter  # noqa: E402
from tests.nslib import remove_netns_with_prefix, sh, unique_prefix  # noqa: E402
from tests.nslib import wait_for as _wait_for  # noqa: E402


def peer(address: str, asn: int, **kw) -> dict:
    return {"address": address, "peer_as": asn, "hold_time": kw.pop("hold_time", 9), **kw}


@dataclass
class Node:
    netns: str
    address: str
    asn: int
    block: str
    cfg: dict
    workdir: Path
    log: Path
    proc: subprocess.Popen | None = None

    def spawn(self) -> None:
        spec = {"cfg": self.cfg, "workdir": str(self.workdir)}
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, sys.executable, str(Path(__file__).resolve()),
             json.dumps(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(self.log, "a"), text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO)

    def call(self, op: str, **kw):
        assert self.proc is not None and self.proc.poll() is None, f"worker {self.netns} is dead"
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"worker {self.netns} gave no answer to {op}; log: {self.log.read_text()[-3000:]}"
        return json.loads(line).get("reply")

    def routes(self) -> dict[str, tuple[str, ...]]:
        out = sh("ip", "-j", "route", "show", "proto", str(PROTO), netns=self.netns).stdout
        routes = {}
        for r in json.loads(out or "[]"):
            hops = [r["gateway"]] if "gateway" in r else [h["gateway"] for h in r.get("nexthops", [])]
            routes[r["dst"]] = tuple(sorted(hops))
        return routes

    def state(self, address: str) -> str:
        return next((p["state"] for p in self.call("peers") if p["address"] == address), "")


@dataclass
class Fabric:
    prefix: str
    root: Path
    frr_root: Path
    nodes: list[Node] = field(default_factory=list)
    routers: list[FrrRouter] = field(default_factory=list)
    procs: list[subprocess.Popen] = field(default_factory=list)

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

    def frr(self, name: str, address: str, config: str) -> FrrRouter:
        ns = self.netns(name, address)
        router = FrrRouter(ns, self.frr_root / name, config)
        self.routers.append(router)
        router.start()
        return router

    def node(self, name: str, address: str, asn: int, block: str, peers: list[dict],
             start: bool = True, **cfg) -> Node:
        ns = self.netns(name, address)
        node = Node(ns, address, asn, block,
                    {"router_id": address, "local_address": address, "local_as": asn,
                     "peers": peers, **cfg},
                    self.root / name / "bgp", self.root / f"{name}.log")
        node.spawn()
        self.nodes.append(node)
        if start:
            node.call("start")
            node.call("announce", prefixes=[block])
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
        for p in self.procs:
            p.kill()
            p.wait()
        remove_netns_with_prefix(self.prefix)


@pytest.fixture
def fabric(tmp_path):
    prefix = unique_prefix("gr")
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
