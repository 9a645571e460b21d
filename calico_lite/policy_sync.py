"""The policy controller: datastore -> ruleset (policy.compiler) -> nftables (policy.applier).

It recompiles on every datastore change and lets the applier send only the difference, so a
pod coming or going is a small transaction; the first pass (and any structural change) is one
atomic full sync. A ruleset nftables refuses leaves the previous one in force.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from typing import Callable

from calico_lite import keys
from calico_lite.cache import Cache
from calico_lite.policy_inputs import inputs_from
from policy.applier import RulesetApplier
from policy.compiler import compile_ruleset
from policy.conntrack import forget_udp_flows
from policy.nft import NftError

log = logging.getLogger("calico-lite.policy")
RESYNC_SECONDS = 30.0
SETTLE_SECONDS = 0.01  # let a burst of pod changes land, then compile once
# what the ruleset is computed from; IPAM and routing traffic must not wake this controller
INPUTS = (keys.ROOT + "k8s/", keys.WORKLOADS, keys.BARRIER)


class PolicyController:
    def __init__(self, cache: Cache, node: str, node_ips: list[str],
                 publish: Callable[[dict], None] = lambda status: None):
        self.cache = cache
        self.node = node
        self.node_ips = node_ips
        self.publish = publish
        self.applier: RulesetApplier | None = None
        self._policy_view: str | None = None
        self.beat: Callable[[], None] = lambda: None   # liveness (agent_health)

    def sync_once(self, generation: int) -> dict:
        revision = self.cache.revision  # read first: what we compile reflects at least this
        policies, pods, namespaces = inputs_from(self.cache.items, self.node)
        start = time.perf_counter()
        ruleset = compile_ruleset(policies, pods, namespaces, self.node_ips)
        compiled = time.perf_counter()
        assert self.applier
        result = self.applier.update(ruleset)
        # policies and labels decide who may talk; when they change, established UDP flows of
        # local pods are forgotten so each is judged again (not on the first pass: a restarted
        # agent inherits flows its predecessor's identical rules allowed)
        view = repr([sorted(self.cache.items(p).items()) for p in (
            keys.K8S_POLICIES, keys.K8S_NAMESPACES)] + sorted((p.namespace, p.name, p.labels)
                                                               for p in pods))
        forgotten = 0
        if self._policy_view is not None and view != self._policy_view:
            forgotten = forget_udp_flows({p.ip for p in pods if p.interface})
        self._policy_view = view
        return {"node": self.node, "generation": generation, "revision": revision,
                "mode": result.mode,
                "compile_ms": round((compiled - start) * 1e3, 1),
                "nft_ms": round(result.seconds * 1e3, 1), "policies": len(policies),
                "local_pods": sum(1 for p in pods if p.interface), "error": "",
                "udp_flows_forgotten": forgotten,
                "updated": time.time(), **ruleset.stats()}

    def run(self, stop: threading.Event) -> None:
        self.applier = RulesetApplier()  # binds to this (the node's) network namespace
        self.cache.synced.wait()
        seen = -1
        while not stop.is_set():
            self.beat()
            gen = self.cache.generation_of(INPUTS)
            if gen != seen:
                time.sleep(SETTLE_SECONDS)
                gen = self.cache.generation_of(INPUTS)
                try:
                    status = self.sync_once(gen)
                except (NftError, ValueError) as e:
                    log.error("policy not applied, previous rules stay: %s", e)
                    status = {"node": self.node, "generation": gen, "error": str(e)[:2000],
                              "revision": self.cache.revision, "updated": time.time()}
                log.info(json.dumps({"event": "policy-sync", **{k: status.get(k) for k in (
                    "mode", "compile_ms", "nft_ms", "policies", "local_pods", "error")}}))
                self.publish(status)
                seen = gen
            self.cache.wait_change(seen, RESYNC_SECONDS, INPUTS)
