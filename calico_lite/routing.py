"""The routing controller: the node's blocks out to BGP, learned blocks into the kernel.

It composes bgp.Speaker (ExaBGP) and bgp.routes (the pure plan and the route applier) with
the datastore cache; the speaker and the applier know nothing of etcd.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from bgp.routes import RouteApplier, desired_routes
from bgp.speaker import PeerConfig, Speaker, SpeakerConfig
from calico_lite import keys
from calico_lite.cache import Cache
from calico_lite.tunnels import TunnelState, TunnelSync

log = logging.getLogger("calico-lite.routing")
RESYNC_SECONDS = 5.0


def own_prefixes(affinities: dict[str, dict], handles: dict[str, dict], node: str) -> set[str]:
    """Blocks affine to node, plus /32s it borrowed from other nodes' blocks (pure)."""
    prefix = keys.affinities(node)
    blocks = {keys.block_cidr(k) for k in affinities if k.startswith(prefix)}
    borrowed = {f"{h['ip']}/32" for h in handles.values()
                if h.get("node") == node and h.get("borrowed")}
    return blocks | borrowed


@dataclass(frozen=True)
class BgpSettings:
    router_id: str
    local_address: str
    local_as: int
    subnet: str
    peers: tuple[tuple[str, int], ...]
    listen: bool = False
    hold_time: int = 9


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
        self.speaker = Speaker(cfg, workdir=workdir, on_change=self._wake.set)
        self.applier = RouteApplier()
        self.tunnels = TunnelSync(node, settings.local_address)
        self._tunnel_state = TunnelState()

    def own(self) -> set[str]:
        return own_prefixes(self.cache.items(keys.AFFINITIES), self.cache.items(keys.HANDLES),
                            self.node)

    def status(self, own: set[str], plan) -> dict:
        """What `node status` shows: peers, own blocks, installed routes, skipped paths."""
        skipped = [s for s in plan.skipped if s.prefix not in own]
        return {"node": self.node, "peers": [asdict(p) for p in self.speaker.peers()],
                "blocks": sorted(own),
                "routes": [{"prefix": r.prefix, "via": list(r.next_hops), "encap": r.encap}
                           for r in plan.routes],
                "skipped": [{"prefix": s.prefix, "via": s.next_hop, "reason": s.reason}
                            for s in skipped],
                "notes": self._tunnel_state.notes
                + [f"{s.prefix} via {s.next_hop} not installed: {s.reason}" for s in skipped]}

    def sync_once(self) -> None:
        own = self.own()
        self.speaker.announce(own)
        tun = self._tunnel_state = self.tunnels.sync(self.cache.items(keys.POOLS),
                                                     self.cache.items(keys.NODES))
        plan = desired_routes(self.speaker.learned(), own_prefixes=own,
                              local_subnets=[self.settings.subnet],
                              local_addresses=[self.settings.local_address],
                              local_as=self.settings.local_as,
                              pools=tun.pools, remotes=tun.remotes,
                              supported_encaps=tun.supported)
        if not self.speaker.synced():
            return  # an adopted ExaBGP is still replaying what it learned: keep kernel routes
        result = self.applier.apply(plan.routes)
        for err in result.errors:
            log.warning("route apply: %s", err)
        status = self.status(own, plan)
        comparable = {k: v for k, v in status.items() if k != "peers"}
        comparable["peers"] = [(p["address"], p["state"], p["received"]) for p in status["peers"]]
        if comparable != self._published:
            self.publish({**status, "updated": time.time()})
            self._published = comparable

    def run(self, stop: threading.Event) -> None:
        self._published: dict | None = None
        self.speaker.start()
        try:
            while not stop.is_set():
                gen = self.cache.generation
                self._wake.clear()
                self.sync_once()
                # wake on a BGP change (speaker callback), a datastore change, or the resync
                deadline = time.monotonic() + RESYNC_SECONDS
                while not stop.is_set() and not self._wake.is_set():
                    if self.cache.wait_change(gen, 0.2) != gen or time.monotonic() > deadline:
                        break
        finally:
            self.speaker.stop()
