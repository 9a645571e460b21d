"""The routing controller: the node's blocks out to BGP, learned blocks into the kernel.

It composes bgp.Speaker (ExaBGP) and bgp.routes (the pure plan and the route applier) with
the datastore cache; the speaker and the applier know nothing of etcd. Each sync reads its
inputs as frozen values (RoutingInputs), computes a frozen plan from them (plan_routes),
then applies it; every route or tunnel that could not be programmed is a Failure, published
with its reason in the node's status record (`calico-lite node status`).
"""
from __future__ import annotations

import ipaddress
import logging
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from bgp.export import ExportPolicy, announcements
from bgp.config import bfd_peers
from bgp.imports import DEFAULT_MAX_PREFIXES, ImportPolicy, Rejected, filter_imports
from bgp.model import Failure, LearnedPath, Route
from bgp.routes import RouteApplier, Skipped, desired_routes
from bgp.speaker import PeerConfig, Speaker, SpeakerConfig
from calico_lite import keys
from calico_lite.bgpconfig import (BgpGlobal, merge_nodes, node_speaker_config, peers_from,
                                   secrets_from)
from calico_lite.bgpexport import export_policy, export_status, filters_from, peer_filters
from calico_lite.cache import Cache
from calico_lite.services import Advertised, ServiceRanges, service_prefixes, without_service_paths
from calico_lite.imports import FilterReport, filtered_status, import_policy
from calico_lite.tunnels import TunnelInputs, TunnelState, TunnelSync

log = logging.getLogger("calico-lite.routing")
RESYNC_SECONDS = 5.0
# what routing is computed from; pod churn (workloads, pod records) must not wake it, though
# an EndpointSlice change does (a Local Service's /32 follows its ready endpoints)
INPUTS = (keys.AFFINITIES, keys.HANDLES, keys.NODES, keys.POOLS, keys.ROOT + "bgp/", keys.K8S_NODES,
          keys.K8S_SERVICES, keys.K8S_ENDPOINTSLICES)   # services: calico_lite.services


def own_prefixes(affinities: dict[str, dict], handles: dict[str, dict], node: str) -> set[str]:
    """Blocks affine to node, plus /32s it borrowed from other nodes' blocks (pure)."""
    prefix = keys.affinities(node)
    blocks = {keys.block_cidr(k) for k in affinities if k.startswith(prefix)}
    borrowed = {f"{h['ip']}/32" for h in handles.values()
                if h.get("node") == node and h.get("borrowed") and _ipv4(h.get("ip"))}
    return {p for p in blocks if _prefix(p)} | borrowed


def _ipv4(value) -> bool:
    """A handle's address as a record holds it; a broken record is left out, not fatal."""
    try:
        ipaddress.IPv4Address(value)
        return True
    except ValueError:
        return False


def _prefix(value: str) -> bool:
    try:
        ipaddress.IPv4Network(value)
        return True
    except ValueError:
        return False


@dataclass(frozen=True)
class RoutingInputs:
    """Everything one routing sync is computed from, as values: equal inputs, equal plan."""

    own: frozenset[str]
    learned: frozenset[tuple[str, frozenset[LearnedPath]]]
    tunnels: TunnelInputs
    synced: bool   # False while an adopted ExaBGP still replays what it learned
    imports: ImportPolicy | None = None   # the sessions' import policy (None: accept all)
    order: tuple[tuple[str, tuple[str, ...]], ...] = ()   # per peer, prefixes as sent
    exported: tuple[Rejected, ...] = ()   # what export filters keep from peers (bgp.export)


@dataclass(frozen=True)
class RoutingPlan:
    """The kernel routes a sync wants, the learned paths it leaves out (with why), and
    those the import policy refused (or export filters kept from a peer)."""

    routes: tuple[Route, ...] = ()
    skipped: tuple[Skipped, ...] = ()
    filtered: tuple[Rejected, ...] = ()


def plan_routes(inputs: RoutingInputs, tunnels: TunnelState, *, subnet: str, address: str,
                local_as: int) -> RoutingPlan:
    """The routes for inputs, given which encapsulations the tunnels could provide (pure):
    the import policy first (bgp.imports), then the routes for what it accepted."""
    learned, filtered = dict(inputs.learned), ()
    if inputs.imports is not None:
        learned, filtered = filter_imports(learned, inputs.imports, dict(inputs.order),
                                           own=inputs.own)
    plan = desired_routes(learned, own_prefixes=inputs.own,
                          local_subnets=[subnet], local_addresses=[address], local_as=local_as,
                          pools=tunnels.pools, remotes=tunnels.remotes,
                          supported_encaps=tunnels.supported)
    return RoutingPlan(tuple(plan.routes), tuple(plan.skipped), filtered + inputs.exported)


def program_kernel(inputs: RoutingInputs, tunnels: TunnelSync, applier: RouteApplier, *,
                   subnet: str, address: str, local_as: int
                   ) -> tuple[TunnelState, RoutingPlan, list[Failure] | None]:
    """Tunnels first (they decide which encapsulations a route may use), then the frozen
    route plan, then the routes. Returns what the tunnels provided, the plan, and the routes
    that failed (None when not applied: an adopted ExaBGP is still replaying its paths)."""
    tun = tunnels.sync(inputs.tunnels)
    plan = plan_routes(inputs, tun, subnet=subnet, address=address, local_as=local_as)
    if not inputs.synced:
        return tun, plan, None  # keep the kernel routes until ExaBGP has replayed
    result = applier.apply(plan.routes)
    for failure in result.failures:
        log.warning("route apply: %s", failure)
    return tun, plan, result.failures


def route_status(own: frozenset[str] | set[str], plan: RoutingPlan, tunnels: TunnelState,
                 failures: list[Failure]) -> dict:
    """The routing half of a node's status record: blocks, routes, skipped paths, failures.

    Every failure to program the kernel is a record under "failures" and a note (which
    `node status` prints) naming what failed and why; the tunnels' failures already have
    their note in tunnels.notes, the others (routes, tunnel setup) get one here.
    """
    # one line per prefix, next hop and reason, however many peers sent that path
    skipped = list(dict.fromkeys(s for s in plan.skipped if s.prefix not in own))
    filtered = filtered_status(plan.filtered)
    return {"blocks": sorted(own),
            "routes": [{"prefix": r.prefix, "via": list(r.next_hops), "encap": r.encap}
                       for r in plan.routes],
            "skipped": [{"prefix": s.prefix, "via": s.next_hop, "reason": s.reason}
                        for s in skipped],
            "filtered": filtered["filtered"], "filteredTotal": filtered["filteredTotal"],
            "exportFiltered": filtered["exportFiltered"],
            "exportFilteredTotal": filtered["exportFilteredTotal"],
            "failures": [{"what": f.what, "reason": f.reason}
                         for f in tunnels.failures + failures],
            "notes": tunnels.notes + filtered["filterNotes"]
            + [f"not programmed: {f}" for f in failures]
            + [f"{s.prefix} via {s.next_hop} not installed: {s.reason}" for s in skipped]}


@dataclass(frozen=True)
class BgpSettings:
    router_id: str
    local_address: str
    local_as: int
    subnet: str
    peers: tuple[tuple[str, int], ...]
    listen: bool = False
    hold_time: int = 9
    on_exit: str = "detach"   # detach: ExaBGP and routes stay for the next agent; stop: withdraw


class RoutingController:
    def __init__(self, cache: Cache, node: str, settings: BgpSettings, workdir: Path,
                 publish: Callable[[dict], None] = lambda status: None):
        self.cache = cache
        self.publish = publish
        self.node = node
        self.settings = settings
        self._wake = threading.Event()
        cfg = SpeakerConfig(router_id=settings.router_id, local_address=settings.local_address,
                            local_as=settings.local_as, listen=settings.listen,
                            peers=[PeerConfig(address=a, peer_as=asn, hold_time=settings.hold_time)
                                   for a, asn in settings.peers])
        self.speaker = Speaker(cfg, workdir=workdir, on_change=self._bgp_changed)
        self.bgp_problems: list[str] = []
        self.on_exit = settings.on_exit   # the agent switches it to "stop" on SIGUSR2
        self.applier = RouteApplier()
        self.tunnels = TunnelSync(node, settings.local_address)
        self.setup_failures: list[Failure] = []   # from the agent's tunnel setup at start
        self._tunnel_state = TunnelState()
        self._route_failures: list[Failure] = []
        self._published: dict | None = None
        self._last_inputs: RoutingInputs | None = None
        self._last_apply = 0.0
        self._last_plan = RoutingPlan()
        self.services: tuple[Advertised, ...] = ()   # what we announce for Services
        self.service_ranges = ServiceRanges()
        self.beat: Callable[[], None] = lambda: None          # liveness (agent_health)
        self.on_apply: Callable[[list[Failure]], None] = lambda failures: None   # metrics
        self.filter_report = FilterReport()   # the agent hands it the metrics' counter
        self._max_prefixes = (tuple(self.speaker.cfg.peers), DEFAULT_MAX_PREFIXES)
        self._exports: dict = {}   # communities and filters per peer, for node status

    def _bgp_changed(self) -> None:
        """The speaker's callback (learned paths or peer states moved): wake the loop now.
        Setting _wake alone left it asleep in the cache's wait until its 0.2 s tick, which
        every received withdrawal waited for (bench/bgp_convergence.py)."""
        self._wake.set()
        self.cache.nudge()

    def bgp_config(self) -> tuple[SpeakerConfig, list[str]]:
        """This node's SpeakerConfig from the datastore's BGP records (bgpconfig), the
        command-line peers as static ones; and the problems found in those records."""
        st = self.settings
        glob = self.cache.get(keys.BGP_CONFIG)
        peers, problems = peers_from(self.cache.items(keys.BGP_PEERS))
        cfg, more = node_speaker_config(
            self.node, merge_nodes(self.cache.items(keys.NODES), self.cache.items(keys.BGP_NODES),
                                   self.cache.items(keys.K8S_NODES)),
            BgpGlobal.from_dict(glob) if glob is not None else None, peers,
            secrets_from(self.cache.items(keys.BGP_SECRETS)),
            local_address=st.local_address, default_as=st.local_as, default_router_id=st.router_id,
            static_peers=tuple(PeerConfig(address=a, peer_as=asn, hold_time=st.hold_time)
                               for a, asn in st.peers), listen=st.listen)
        return cfg, problems + more

    def apply_bgp_config(self) -> None:
        """Reconfigure the speaker when the BGP records changed (no agent restart)."""
        try:
            cfg, self.bgp_problems = self.bgp_config()
        except ValueError as e:   # e.g. two peers on one address: keep the running config
            self.bgp_problems = [f"BGP configuration not applied: {e}"]
            return
        glob = self.cache.get(keys.BGP_CONFIG)
        # limits are not compared by the speaker (a change reloads nothing): kept here
        self._max_prefixes = (tuple(cfg.peers), BgpGlobal.from_dict(glob).max_prefixes
                              if glob is not None else DEFAULT_MAX_PREFIXES)
        if cfg != self.speaker.cfg or bfd_peers(cfg) != bfd_peers(self.speaker.cfg):
            how = self.speaker.reconfigure(cfg)
            log.info("bgp configuration changed: %s, peers %s", how,
                     [f"{p.address}/{p.peer_as}" for p in cfg.peers])

    def export_inputs(self) -> tuple[ExportPolicy, dict]:
        """The export policy (communities, export filters) and each peer's filters, from
        the records; the fresh peers (communities and filters do not reload ExaBGP)."""
        peers = self._max_prefixes[0]
        filters, problems = filters_from(self.cache.items(keys.BGP_FILTERS))
        chains, more = peer_filters(peers, filters)
        self.bgp_problems += problems + more
        return export_policy(peers, self.cache.items(keys.POOLS), chains), chains

    def own(self) -> set[str]:
        return own_prefixes(self.cache.items(keys.AFFINITIES), self.cache.items(keys.HANDLES),
                            self.node)

    def status(self, own: frozenset[str] | set[str], plan: RoutingPlan) -> dict:
        """What `node status` shows: peers, own blocks, installed routes, skipped paths,
        and every route or tunnel that could not be programmed, with its reason."""
        return {"node": self.node, "peers": [asdict(p) for p in self.speaker.peers()],
                "bfd": [asdict(b) for b in self.speaker.bfd_status()],
                **route_status(own, plan, self._tunnel_state,
                               self.setup_failures + self._route_failures),
                "services": [asdict(a) for a in self.services], **self._exports}

    def advertise_services(self) -> None:
        """The Service prefixes this node announces (calico_lite.services), from the global
        BGP record's ranges and kube-sync's Service and EndpointSlice records."""
        glob = self.cache.get(keys.BGP_CONFIG)
        try:
            self.service_ranges = BgpGlobal.from_dict(glob).service_ranges if glob else ServiceRanges()
        except ValueError as e:   # a bad hand-made record: keep what we announce
            self.bgp_problems.append(f"service ranges not applied: {e}")
            return
        self.services = service_prefixes(
            self.service_ranges, self.cache.items(keys.K8S_SERVICES).values(),
            self.cache.items(keys.K8S_ENDPOINTSLICES).values(), self.node)

    def read_inputs(self, own: frozenset[str], chains: dict | None = None,
                    exported: tuple[Rejected, ...] = ()) -> RoutingInputs:
        pools = [p["cidr"] for p in self.cache.items(keys.POOLS).values() if p.get("cidr")]
        learned = without_service_paths(self.speaker.learned(), self.service_ranges, pools)
        peers, default_max = self._max_prefixes
        items = self.cache.items
        return RoutingInputs(
            own=own,
            learned=frozenset((p, frozenset(ps)) for p, ps in learned.items()),
            tunnels=TunnelInputs.from_records(items(keys.POOLS), items(keys.NODES), self.node),
            synced=self.speaker.synced(),
            imports=import_policy(items(keys.POOLS), items(keys.AFFINITIES), items(keys.HANDLES),
                                  items(keys.NODES), subnet=self.settings.subnet, peers=peers,
                                  default_max=default_max, filters=chains),
            order=tuple(sorted(self.speaker.arrival().items())), exported=exported)

    def sync_once(self) -> None:
        """Read, plan, apply. The kernel is written only when an input changed, or at the
        periodic resync: an ADD's handle wakes this loop, but seldom changes a route
        (Felix's calc/dataplane split)."""
        self.apply_bgp_config()
        self.advertise_services()
        export, chains = self.export_inputs()
        own = frozenset(self.own())
        prefixes = set(own) | {a.prefix for a in self.services}
        self.speaker.announce(prefixes, export)
        announced, exported = announcements(prefixes, [p.address for p in self.speaker.cfg.peers],
                                            export)
        self._exports = export_status(export, announced)
        inputs = self.read_inputs(own, chains, exported)
        if inputs == self._last_inputs and time.monotonic() - self._last_apply < RESYNC_SECONDS:
            self.publish_status(inputs.own, self._last_plan)  # peer states may still have moved
            return
        self._tunnel_state, plan, failed = program_kernel(
            inputs, self.tunnels, self.applier, subnet=self.settings.subnet,
            address=self.settings.local_address, local_as=self.speaker.cfg.local_as)
        self.filter_report.report(plan.filtered)
        if failed is None:
            return
        self._route_failures = failed
        self.on_apply(failed)
        self._last_inputs, self._last_apply, self._last_plan = inputs, time.monotonic(), plan
        self.publish_status(inputs.own, plan)

    def publish_status(self, own: frozenset[str], plan: RoutingPlan) -> None:
        status = self.status(own, plan)
        comparable = {k: v for k, v in status.items() if k not in ("peers", "bfd")}
        comparable["bfd"] = [(b["peer"], b["state"], b["remote_discr"], b["tx_ms"], b["rx_ms"],
                              b["flaps"]) for b in status["bfd"]]
        comparable["peers"] = [(p["address"], p["state"], p["received"], p["sent"])
                               for p in status["peers"]]
        comparable["bgp"] = self._bgp_identity()
        if comparable != self._published:
            self.publish({**status, "bgp": comparable["bgp"], "updated": time.time()})
            self._published = comparable

    def _bgp_identity(self) -> dict:
        cfg = self.speaker.cfg
        return {"asNumber": cfg.local_as, "routerId": cfg.router_id, "address": cfg.local_address,
                "routeReflectorClusterId": cfg.cluster_id, "gracefulRestart": cfg.graceful_restart,
                "exabgpPid": self.speaker.exabgp_pid, "problems": list(self.bgp_problems)}

    def run(self, stop: threading.Event) -> None:
        self.apply_bgp_config()   # before start: an adopted ExaBGP is compared with it
        self.speaker.start()
        try:
            while not stop.is_set():
                self.beat()
                gen = self.cache.generation_of(INPUTS)
                self._wake.clear()
                self.sync_once()
                # wake on a BGP change (speaker callback), a datastore change, or the resync
                deadline = time.monotonic() + RESYNC_SECONDS
                while not stop.is_set() and not self._wake.is_set():
                    if (self.cache.wait_change(gen, 0.2, INPUTS, until=self._wake.is_set) != gen
                            or time.monotonic() > deadline):
                        break
        finally:
            if self.on_exit == "detach":
                self.speaker.detach()   # graceful restart: the next agent adopts ExaBGP
            else:
                self.speaker.stop()
