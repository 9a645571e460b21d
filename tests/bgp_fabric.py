"""The BGP integration harness: nodes (a Speaker plus the agent's route loop) and routers
(FRR) on one bridged segment, each in its own network namespace.

Each node runs a worker (this file run as a script) inside its namespace with
`ip netns exec`, as the node agent would: a Speaker whose on_change turns learned paths into
kernel routes. Tests drive it over stdin/stdout (JSON lines) and look at the kernel with
`ip -j route`. The `fabric` fixture removes every namespace and process, also on failure.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __name__ == "__main__":
    sys.path.insert(0, str(REPO))

PROTO = 88
SUBNET = "10.99.1.0/24"


# --------------------------------------------------------------------------- worker
def _speaker_config(d: dict):
    from bgp.bfd import BfdConfig
    from bgp.config import PeerConfig, SpeakerConfig
    return SpeakerConfig(**{**d, "peers": [
        PeerConfig(**{**p, "bfd": BfdConfig(**p["bfd"]) if p.get("bfd") else None})
        for p in d.get("peers", [])]})


def worker_main(argv: list[str]) -> int:
    """Runs inside a node netns: a Speaker plus the agent's route loop, driven over stdio.
    spec: cfg (SpeakerConfig as a dict), workdir, restart_delay, and tick (the agent's
    periodic resync, which applies routes once a graceful restart's deadline passed)."""
    import logging
    import threading
    import time

    from bgp.routes import RouteApplier, desired_routes
    from bgp.speaker import Speaker

    spec = json.loads(argv[0])
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(threadName)s %(message)s")
    applier = RouteApplier(proto=PROTO)
    lock = threading.Lock()
    holder: dict = {}

    def sync() -> None:
        with lock:
            sp = holder.get("speaker")
            if sp is None or not sp.synced():  # graceful restart: keep old routes
                return
            plan = desired_routes(sp.learned(), own_prefixes=sp.announced(),
                                  local_subnets=[SUBNET], local_addresses=[sp.cfg.local_address])
            result = applier.apply(plan.routes)
            if result.changed or result.errors:
                print(f"routes {result}", file=sys.stderr, flush=True)

    def ticker() -> None:
        while True:
            time.sleep(0.5)
            sync()

    speaker = Speaker(_speaker_config(spec["cfg"]), workdir=Path(spec["workdir"]),
                      on_change=sync, restart_delay=spec.get("restart_delay", 0.5))
    holder["speaker"] = speaker
    if spec.get("tick"):
        threading.Thread(target=ticker, daemon=True).start()
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "detach":   # as a SIGTERMed agent: ExaBGP stays for the next one
            speaker.detach()
            sys.stdout.write(json.dumps({"ok": True}) + "\n")
            sys.stdout.flush()
            os._exit(0)
        if cmd["op"] == "exit":
            speaker.stop()
            sys.stdout.write(json.dumps({"ok": True}) + "\n")
            sys.stdout.flush()
            return 0
        reply = _answer(speaker, cmd, sync)
        sys.stdout.write(json.dumps({"ok": True, "reply": reply}) + "\n")
        sys.stdout.flush()
    speaker.stop()
    return 0


def _answer(speaker, cmd: dict, sync) -> object:
    """Carry out one worker command; its reply (None for actions)."""
    op = cmd["op"]
    if op == "start":
        speaker.start()
    elif op == "reconfigure":
        return speaker.reconfigure(_speaker_config(cmd["cfg"]))
    elif op == "announce":
        speaker.announce(set(cmd["prefixes"]))
        sync()
    elif op == "learned":
        return {p: sorted([x.next_hop, x.peer, list(x.as_path), x.originator_id,
                           list(x.cluster_list)] for x in paths)
                for p, paths in speaker.learned().items()}
    elif op == "peers":
        return [vars(p) for p in speaker.peers()]
    elif op == "bfd":
        return {"sessions": [vars(s) for s in speaker.bfd_status()], "downs": speaker.bfd_downs}
    elif op == "pids":
        return {"exabgp": speaker.exabgp_pid, "relay": speaker.relay_pid,
                "restarts": speaker.restarts, "adopted": speaker.adopted,
                "synced": speaker.synced()}
    elif op == "stop":
        speaker.stop()
    return None


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))


# --------------------------------------------------------------------------- harness
import pytest  # noqa: E402

from calico_lite.lab.frr import FrrRouter, render_frr_config  # noqa: E402
from tests.nslib import attach_to_segment, remove_netns_with_prefix, sh, unique_prefix  # noqa: E402


def peer(address: str, asn: int, **kw) -> dict:
    """A PeerConfig as the worker takes it (hold time 9 s unless given)."""
    return {"address": address, "peer_as": asn, "hold_time": kw.pop("hold_time", 9), **kw}


@dataclass
class Node:
    netns: str
    address: str
    asn: int
    block: str
    cfg: dict                 # SpeakerConfig as a dict
    workdir: Path
    log: Path
    restart_delay: float = 0.5
    tick: bool = False
    proc: subprocess.Popen | None = None

    def spawn(self) -> None:
        """Start a worker (a new agent) for this node; the log is appended to."""
        spec = {"cfg": self.cfg, "workdir": str(self.workdir),
                "restart_delay": self.restart_delay, "tick": self.tick}
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
        assert line, f"worker {self.netns} gave no answer to {op}; log: {self.log_tail()}"
        return json.loads(line).get("reply")

    def log_tail(self) -> str:
        return self.log.read_text()[-3000:] if self.log.exists() else ""

    def routes(self) -> dict[str, tuple[str, ...]]:
        """Kernel routes with our proto in this node: prefix -> next hops."""
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
    restart_delay: float = 0.5    # the nodes' Speakers restart ExaBGP after this
    tick: bool = False            # the nodes run the agent's periodic resync

    @property
    def seg(self) -> str:
        return f"{self.prefix}seg"

    def netns(self, name: str, address: str) -> str:
        return attach_to_segment(self.seg, self.prefix, name, address)

    def frr(self, name: str, address: str, config: str) -> FrrRouter:
        ns = self.netns(name, address)
        # FRR drops to user frr: pytest's tmp_path is 0700
        router = FrrRouter(ns, self.frr_root / name, config)
        self.routers.append(router)
        router.start()
        return router

    def add_tor(self, name: str, address: str, asn: int = 65001, hold_time: int = 9,
                bfd: tuple[int, int] | None = None) -> FrrRouter:
        """An FRR ToR accepting any node of the segment (eBGP, hold time 9 s; optionally
        BFD with (interval ms, multiplier) for every node)."""
        return self.frr(name, address, render_frr_config(
            name, asn, address, listen_ranges=[(SUBNET, "external")], hold_time=hold_time,
            log_file=str(self.frr_root / name / "frr.log"), bfd=bfd))

    def node(self, name: str, address: str, asn: int, block: str, peers: list[dict],
             start: bool = True, **cfg) -> Node:
        """A node's worker; with start, its Speaker is started and announces its block."""
        ns = self.netns(name, address)
        node = Node(ns, address, asn, block,
                    {"router_id": address, "local_address": address, "local_as": asn,
                     "peers": peers, **cfg},
                    self.root / name / "bgp", self.root / f"{name}.log",
                    restart_delay=self.restart_delay, tick=self.tick)
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


@contextlib.contextmanager
def open_fabric(tmp_path: Path, tag: str, **node_defaults):
    """A segment (a bridge in its own netns) to add routers and nodes to; afterwards no
    namespace or process of it is left, also on failure."""
    prefix = unique_prefix(tag)
    frr_root = Path(tempfile.mkdtemp(prefix=f"{prefix}-frr-"))
    frr_root.chmod(0o755)
    fab = Fabric(prefix, tmp_path, frr_root, **node_defaults)
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


@pytest.fixture
def fabric(tmp_path):
    with open_fabric(tmp_path, "bgp") as fab:
        yield fab
