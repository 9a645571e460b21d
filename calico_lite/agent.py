"""The node agent (`calico-lite node run`): one per node, the only writer of its kernel state.

It hosts three controllers side by side, each with its own loop, sharing only the datastore
cache: the CNI server (pod wiring and IPAM), the routing controller (ExaBGP and kernel routes)
and the policy controller (nftables).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pyroute2 import IPRoute

from bgp.encap import OVERHEAD
from bgp.process import Backoff
from calico_lite import keys, memstats
from calico_lite.agent_health import PROBE_TIMEOUT, agent_checks, instrument
from calico_lite.blocks import Pool
from calico_lite.cache import Cache
from calico_lite.cni_backend import DatastoreBackend
from calico_lite.datastore import Datastore, DatastoreUnavailable
from calico_lite.etcd_tls import EtcdTls
from calico_lite.health import (DEFAULT_LISTEN, DEFAULT_LIVENESS_TIMEOUT, HealthServer,
                                Heartbeats, parse_listen, serve_health)
from calico_lite.ipam import ensure_pool, list_pools
from calico_lite.metrics import AgentMetrics
from calico_lite.policy_sync import RESYNC_SECONDS as POLICY_RESYNC
from calico_lite.policy_sync import PolicyController
from calico_lite.routing import BgpSettings, RoutingController
from calico_lite.tunnels import setup_node_tunnels
from calico_lite.workload_links import WorkloadLinkCheck, link_names
from plugin import cni
from plugin.link import uplink_mtu, write_sysctl
from plugin.server import CniServer
from plugin.spec import Request

log = logging.getLogger("calico-lite.agent")


@dataclass
class AgentConfig:
    node: str
    etcd_endpoints: list[str]
    cni_socket: Path
    run_dir: Path
    address: str
    subnet: str
    bgp: BgpSettings
    rack: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    block_release_grace: float = 300.0
    health_listen: str = DEFAULT_LISTEN   # HOST:PORT of /healthz, /readyz, /metrics; "off"
    liveness_timeout: float = DEFAULT_LIVENESS_TIMEOUT
    etcd_tls: EtcdTls | None = None   # client TLS files for every Datastore the agent makes
    policy_resync: float = POLICY_RESYNC   # s between full policy syncs (and table checks)


def pool_overhead(pools: dict[str, dict]) -> int:
    """Largest encapsulation overhead any enabled pool may apply (pure)."""
    worst = 0
    for d in pools.values():
        p = Pool.from_dict(d)
        if not p.disabled and p.encap_mode != "Never":
            worst = max(worst, OVERHEAD[p.encapsulation])
    return worst


def wait_for_datastore(ds: Datastore, stop: threading.Event) -> None:
    backoff = Backoff(0.1, cap=2.0)
    while not stop.is_set():
        if ds.healthy():
            return
        ds.on_retry("startup")
        log.info(json.dumps({"event": "datastore-wait", "etcd": ds.describe}))
        backoff.wait(stop)


def private_dir(path: Path) -> None:
    """Make path a folder only root can enter (also if it was there with wider modes)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)


class NodeAgent:
    def __init__(self, cfg: AgentConfig):
        self.cfg = cfg
        self.stop_event = threading.Event()
        self.ds = Datastore(cfg.etcd_endpoints, tls=cfg.etcd_tls)
        self.cache = Cache(self.ds)
        self.backend = DatastoreBackend(self.ds, cfg.node, mtu=self.pod_mtu, pools=self.pools)
        self._uplink_mtu: tuple[float, int] = (0.0, 1500)
        self._mtu_lock = threading.Lock()
        self.routing = RoutingController(
            self.cache, cfg.node, cfg.bgp, cfg.run_dir / "bgp",
            publish=lambda status: self.ds.put(keys.status(cfg.node), status))
        self.policy = PolicyController(
            self.cache, cfg.node, [cfg.address], publish=self.publish_policy_status,
            resync_seconds=cfg.policy_resync)
        self.policy_status: dict | None = None   # the last sync's outcome (readiness)
        self.server: CniServer | None = None
        self.threads: list[threading.Thread] = []
        self.tunnel_fields: dict = {}
        self.metrics = AgentMetrics()
        self.beats = Heartbeats(cfg.liveness_timeout)
        instrument(self, self.metrics, self.beats)
        self.health: HealthServer | None = None

    def publish_policy_status(self, status: dict) -> None:
        """Kept for readiness and counted before the write: etcd may be the thing that is down."""
        self.policy_status = status
        self.metrics.policy_synced(status)
        self.ds.put(keys.policy_status(self.cfg.node), status)

    def serve_health(self) -> None:
        """/healthz, /readyz and /metrics, up before anything else so that a probe of an
        agent still waiting for etcd gets an answer (not ready: datastore)."""
        addr = parse_listen(self.cfg.health_listen)
        if addr is None:
            return
        probe = Datastore(self.cfg.etcd_endpoints, timeout=PROBE_TIMEOUT, tls=self.cfg.etcd_tls)
        self.health = serve_health(addr, self.metrics.registry, agent_checks(self, probe),
                                   self.beats)

    def register(self) -> None:
        self.ds.put(keys.node(self.cfg.node), {
            "name": self.cfg.node, "address": self.cfg.address, "subnet": self.cfg.subnet,
            "asn": self.cfg.bgp.local_as, "rack": self.cfg.rack, "labels": self.cfg.labels,
            "routerId": self.cfg.bgp.router_id, "started": time.time(),
            **self.tunnel_fields})

    def pod_mtu(self) -> int:
        """The uplink's MTU (re-read at most every 10 s) less the pools' encapsulation."""
        with self._mtu_lock:
            read_at, mtu = self._uplink_mtu
            if time.monotonic() - read_at > 10:
                with IPRoute() as ipr:
                    mtu = uplink_mtu(ipr)
                self._uplink_mtu = (time.monotonic(), mtu)
        return mtu - pool_overhead(self.cache.items(keys.POOLS))

    def pools(self) -> list[Pool]:
        """IP pools from the watched cache once it is synced (an ADD reads no pool from etcd);
        from etcd before that, or if the cache has none (it may lag a just-created pool)."""
        cached = self.cache.items(keys.POOLS) if self.cache.synced.is_set() else {}
        return [Pool.from_dict(v) for v in cached.values()] or list_pools(self.ds)

    def handle_cni(self, req: Request) -> dict | None:
        """One call, on the CNI server's thread for it. A verb that uses pyroute2 (CHECK) gets
        an IPRoute opened and closed on this thread: pyroute2 keeps an event loop and a socket
        per thread that uses an IPRoute, released only by a close() on that thread, so a
        shared, long-lived one used from each call's new thread kept a socket and ~7 KiB for
        every call until the agent ran out of descriptors."""
        if req.command not in cni.USES_IPROUTE:
            return cni.run(req, cni.Context(self.backend, None))
        with IPRoute() as ipr:
            return cni.run(req, cni.Context(self.backend, ipr))

    def start(self) -> None:
        # root only: the run folder holds the CNI socket and ExaBGP's configuration (TCP MD5
        # passwords); whatever the agent and ExaBGP create is 0600/0700 from here on
        os.umask(0o077)
        private_dir(self.cfg.run_dir)
        self.serve_health()
        wait_for_datastore(self.ds, self.stop_event)
        if self.stop_event.is_set():
            return
        ensure_pool(self.ds)
        # tunnel address and VTEP MAC go into the node record with everything else, so a
        # restarting agent never publishes a record without them (peers would drop routes)
        self.tunnel_fields, self.routing.setup_failures = setup_node_tunnels(
            self.ds, self.backend.ipam, self.cfg.node, self.cfg.address)
        self.register()
        self.cache.start()
        self.cache.synced.wait(10)
        write_sysctl("net/ipv4/ip_forward", "1")
        self.server = CniServer(self.cfg.cni_socket, self.handle_cni,
                                observe=self.metrics.cni_call,
                                beat=lambda: self.beats.beat("cni-server"))
        self.server.start()
        self._spawn("routing", self.routing.run)
        self._spawn("policy", self.policy.run)
        self._spawn("ipam-housekeeping", self.housekeeping)
        self._spawn("workload-links", WorkloadLinkCheck(
            self.cache, self.cfg.node, link_names, self.metrics.links_missing.set).run)
        log.info(json.dumps({"event": "agent-ready", "node": self.cfg.node,
                             "socket": str(self.cfg.cni_socket), "pid": os.getpid()}))

    def housekeeping(self, stop: threading.Event) -> None:
        """Give back blocks that stayed empty for the grace period."""
        while not stop.wait(min(30.0, max(1.0, self.cfg.block_release_grace / 2))):
            for cidr in self.backend.ipam.release_empty_blocks(self.cfg.block_release_grace):
                log.info(json.dumps({"event": "block-released", "block": cidr}))

    def _spawn(self, name: str, loop) -> None:
        def guarded() -> None:
            while not self.stop_event.is_set():
                try:
                    loop(self.stop_event)
                except DatastoreUnavailable as e:
                    log.warning("%s: datastore unavailable, retrying: %s", name, e)
                    self.ds.on_retry(f"{name}-loop")
                except Exception:
                    log.exception("%s loop failed; restarting it", name)
                self.stop_event.wait(1)
        t = threading.Thread(target=guarded, name=name, daemon=True)
        t.start()
        self.threads.append(t)

    def stop(self) -> None:
        self.stop_event.set()
        self.cache.wake()  # loops waiting on the cache see the stop now, not at their resync
        if self.server:
            self.server.stop()
        for t in self.threads:
            t.join(timeout=10)
        self.cache.stop()
        if self.health:
            self.health.close()

    def leave(self) -> None:
        """Stop for good (SIGUSR2): withdraw the node's routes and stop ExaBGP, whatever
        --on-exit says (SIGTERM keeps them for the next agent: a restart or upgrade)."""
        self.routing.on_exit = "stop"
        self.stop_event.set()
        log.info(json.dumps({"event": "agent-leaving", "node": self.cfg.node}))

    def run_forever(self) -> None:
        memstats.install(os.environ.get("CALICO_LITE_TRACEMALLOC", ""))
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop_event.set())
        signal.signal(signal.SIGUSR2, lambda *_: self.leave())
        self.start()
        self.stop_event.wait()
        self.stop()

