"""The policy controller: datastore -> ruleset (policy.incremental) -> nftables (policy.applier).

It owns the whole `inet calico-lite` table, so NAT outgoing (policy.nat: the pools' natOutgoing
flags and the node subnets) and host endpoint protection (policy.hostprotect: the node's
workload-to-host setting, the local pods' MACs) are composed into the same Ruleset and go through
the same atomic transactions: a pool change or a new allow list is a few set elements and one
refilled chain in the next small update. ARP anti-spoofing is an `arp calico-lite` table (ARP
is not IP), applied by a second applier right after the inet table.

On every datastore change it diffs its inputs (pods, namespaces, policies) against the last pass
and feeds only the differences to the incremental calculation, which touches only the sets and
chains involved; the applier sends those in one small transaction. Every RESYNC_SECONDS the full
compile (policy.compiler) runs as the resync: it is applied, and if the incremental state had
drifted from it, the calculation is rebuilt; and if the kernel's table no longer matches what we
applied (someone ran `nft flush ruleset` or deleted our table), it is loaded whole again. A
ruleset nftables refuses leaves the previous one in force.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from typing import Callable

from calico_lite import keys
from calico_lite.cache import Cache
from calico_lite.policy_inputs import (host_protection, local_endpoints, namespaces_from, nat_inputs,
                                       pods_by_workload, skip_record)
from policy.applier import ApplyResult, RulesetApplier
from policy.compiler import compile_ruleset
from policy.incremental import IncrementalRuleset
from policy.manifests import policy_from_dict
from policy.model import Namespace, NetworkPolicy, Pod
from policy.hostprotect import (HostProtection, LocalEndpoint, arp_ruleset, host_sets, to_host_chain,
                                with_host_protection)
from policy.nat import NatState, nat_chain, nat_sets, nat_state, with_nat
from policy.ruleset import Ruleset
from policy.conntrack import flows_to_forget, forget_udp_flows
from policy.nft import NftError

log = logging.getLogger("calico-lite.policy")
RESYNC_SECONDS = 30.0
SETTLE_SECONDS = 0.01  # let a burst of pod changes land, then compile once
# what the ruleset is computed from (pools and node records: NAT outgoing); IPAM traffic
# (blocks, handles, affinities) and routing status must not wake this controller
INPUTS = (keys.ROOT + "k8s/", keys.WORKLOADS, keys.POOLS, keys.NODES, keys.NODE_CONFIG, keys.BARRIER)


def host_inputs(items: Callable[[str], dict], node: str,
                pods: dict[str, Pod]) -> tuple[HostProtection, str, list[LocalEndpoint]]:
    """The node's protection setting, a problem reading it ('' if none), and its local pods
    with their MACs, from the cache (or any `items(prefix)`)."""
    protection, problem = host_protection(items(keys.NODE_CONFIG), node)
    return protection, problem, local_endpoints(pods, items(keys.WORKLOADS))


def node_tables(ruleset: Ruleset, items: Callable[[str], dict], node: str,
                pods: dict[str, Pod]) -> tuple[Ruleset, Ruleset]:
    """The node's whole inet table (policy + NAT outgoing + host protection) and its ARP table,
    built afresh from the same inputs as the controller (tests compare the kernel with this)."""
    state = nat_state(*nat_inputs(items(keys.POOLS), items(keys.NODES)))
    protection, _, endpoints = host_inputs(items, node, pods)
    table = with_nat(ruleset, nat_sets(state), nat_chain())
    return (with_host_protection(table, host_sets(protection, endpoints), to_host_chain(protection)),
            arp_ruleset(endpoints))


class PolicyController:
    def __init__(self, cache: Cache, node: str, node_ips: list[str],
                 publish: Callable[[dict], None] = lambda status: None,
                 resync_seconds: float = RESYNC_SECONDS):
        self.cache = cache
        self.resync_seconds = resync_seconds
        self.node = node
        self.node_ips = node_ips
        self.publish = publish
        self.applier: RulesetApplier | None = None
        self.arp_applier: RulesetApplier | None = None   # made in the applying thread (netns)
        self.calc: IncrementalRuleset | None = None
        self._raw_policies: dict[str, dict] = {}
        self._policy_keys: dict[str, str] = {}  # datastore key -> policy key
        self._namespaces: dict[str, Namespace] = {}
        self._pods: dict[str, Pod] = {}
        self._nat: tuple[NatState | None, dict] = (None, {})  # the state and its sets, reused
        self._host: tuple = (None, None, None)   # (inputs, (sets, chain), arp table), reused
        self.beat: Callable[[], None] = lambda: None   # liveness (agent_health)
        self.restored = 0   # times the resync found our table changed behind our back

    def _feed(self, raw_policies: dict, namespaces: dict[str, Namespace], pods: dict[str, Pod]) -> None:
        """Turn what changed since the last pass into events for the incremental calculation."""
        calc = self.calc
        assert calc is not None
        parsed = {k: policy_from_dict(v) for k, v in raw_policies.items()  # may raise: before any event
                  if self._raw_policies.get(k) != v}
        for k in self._raw_policies.keys() - raw_policies.keys():
            calc.remove_policy(self._policy_keys.pop(k))
        for k, pol in parsed.items():
            if k in self._policy_keys and self._policy_keys[k] != pol.key:
                calc.remove_policy(self._policy_keys[k])
            self._policy_keys[k] = pol.key
            calc.set_policy(pol)
        self._raw_policies = raw_policies
        for name in self._namespaces.keys() - namespaces.keys():
            calc.remove_namespace(name)
        for name, ns in namespaces.items():
            if self._namespaces.get(name) != ns:
                calc.set_namespace(ns)
        self._namespaces = namespaces
        for k in self._pods.keys() - pods.keys():
            calc.remove_pod(k)
        for k, pod in pods.items():
            if self._pods.get(k) != pod:
                calc.set_pod(k, pod)
        self._pods = pods

    def _full(self, raw_policies: dict, namespaces: dict[str, Namespace], pods: dict[str, Pod]) -> Ruleset:
        """The resync: the full compile; the incremental state is checked against it, rebuilt on drift."""
        policies: list[NetworkPolicy] = [policy_from_dict(v) for v in raw_policies.values()]
        ruleset = compile_ruleset(policies, pods.values(), namespaces.values(), self.node_ips)
        if self.calc is not None and self.calc.ruleset() == ruleset:
            return ruleset
        if self.calc is not None:
            log.error("incremental policy state drifted from the full compile; rebuilt from the full inputs")
        self.calc = IncrementalRuleset(self.node_ips)
        self._raw_policies, self._policy_keys, self._namespaces, self._pods = {}, {}, {}, {}
        self._feed(raw_policies, namespaces, pods)
        return ruleset

    def nat_table(self, ruleset: Ruleset) -> tuple[Ruleset, NatState]:
        """The policy Ruleset with NAT outgoing added, from the cached pools and node records.
        The NAT sets are the same objects while the state stays the same, so the applier's
        diff skips them."""
        state = nat_state(*nat_inputs(self.cache.items(keys.POOLS), self.cache.items(keys.NODES)))
        if self._nat[0] != state:
            self._nat = (state, nat_sets(state))
        return with_nat(ruleset, self._nat[1], nat_chain()), state

    def host_table(self, table: Ruleset, pods: dict[str, Pod]) -> tuple[Ruleset, Ruleset, dict]:
        """`table` with host protection added, the ARP table, and the setting's summary. The
        parts are the same objects while their inputs stay the same (the applier's diff skips
        them)."""
        protection, problem, endpoints = host_inputs(self.cache.items, self.node, pods)
        inputs = (protection, frozenset(endpoints))
        if self._host[0] != inputs:
            self._host = (inputs, (host_sets(protection, endpoints), to_host_chain(protection)),
                          arp_ruleset(endpoints))
        sets, chain = self._host[1]
        summary = {**protection.summary(), **({"problem": problem} if problem else {})}
        return with_host_protection(table, sets, chain), self._host[2], summary

    def sync_once(self, generation: int, full: bool = False) -> dict:
        revision = self.cache.revision  # read first: what we compile reflects at least this
        raw_policies = self._readable(self.cache.items(keys.K8S_POLICIES))
        namespaces = {n.name: n for n in namespaces_from(self.cache.items(keys.K8S_NAMESPACES))}
        pods = pods_by_workload(self.cache.items(keys.K8S_PODS), self.cache.items(keys.WORKLOADS), self.node)
        start = time.perf_counter()
        first = self.calc is None
        before = dict(self._pods), dict(self._namespaces), dict(self._raw_policies)
        if full or first:
            ruleset = self._full(raw_policies, namespaces, pods)
        else:
            self._feed(raw_policies, namespaces, pods)
            ruleset = self.calc.ruleset()  # type: ignore[union-attr]
        table, nat = self.nat_table(ruleset)
        table, arp, host = self.host_table(table, pods)
        compiled = time.perf_counter()
        assert self.applier
        result = self._apply(table, full)
        if self.arp_applier is None:
            self.arp_applier = RulesetApplier()
        self._apply(arp, full, self.arp_applier)
        # policies and labels decide who may talk; when they change, established UDP flows of
        # local pods are forgotten so each is judged again (not on the first pass: a restarted
        # agent inherits flows its predecessor's identical rules allowed)
        forgotten = 0
        if not first:
            everyone = before[1:] != (namespaces, raw_policies)
            forgotten = forget_udp_flows(flows_to_forget(before[0], pods, everyone))
        return {"node": self.node, "generation": generation, "revision": revision,
                "mode": result.mode, "calc": "full" if full or first else "incremental",
                "compile_ms": round((compiled - start) * 1e3, 1),
                "nft_ms": round(result.seconds * 1e3, 1), "nft_path": result.path,
                "update_refused": result.refused, "policies": len(raw_policies),
                "local_pods": sum(1 for p in pods.values() if p.interface), "error": "",
                "udp_flows_forgotten": forgotten, "nat": nat.summary(), "hostProtection": host,
                "table_restored": self.restored, "updated": time.time(), **table.stats()}

    def _readable(self, raw: dict[str, dict]) -> dict[str, dict]:
        """The policy records that parse. One that does not is logged and skipped: its last
        good version stays in force (a broken update never opens what the policy closed),
        and every other policy is applied as usual."""
        out = {}
        for k, v in raw.items():
            good = self._raw_policies.get(k)
            if v == good:
                out[k] = v
                continue
            try:
                policy_from_dict(v)
                out[k] = v
            except Exception as e:  # noqa: BLE001 - the parser raises its own (private) types
                skip_record(k, v, e)
                if good is not None:
                    out[k] = good
        return out

    def _apply(self, ruleset: Ruleset, full: bool, applier: RulesetApplier | None = None) -> ApplyResult:
        """At the resync, first check that the kernel still holds our table as we left it
        (another tool may have flushed or deleted it): if not, load it whole again."""
        applier = applier or self.applier
        assert applier
        drift = applier.drift() if full else ""
        if not drift:
            return applier.update(ruleset)
        log.warning(json.dumps({"event": "policy-table-restored", "table": ruleset.ref, "why": drift}))
        self.restored += 1
        return applier.sync(ruleset)

    def run(self, stop: threading.Event) -> None:
        self.applier = RulesetApplier()  # binds to this (the node's) network namespace
        self.cache.synced.wait()
        seen = -1
        last_full = time.monotonic()
        while not stop.is_set():
            self.beat()
            gen = self.cache.generation_of(INPUTS)
            full = time.monotonic() - last_full >= self.resync_seconds
            if gen != seen or full:
                time.sleep(SETTLE_SECONDS)
                gen = self.cache.generation_of(INPUTS)
                try:
                    status = self.sync_once(gen, full)
                except (NftError, ValueError) as e:
                    log.error("policy not applied, previous rules stay: %s", e)
                    status = {"node": self.node, "generation": gen, "error": str(e)[:2000],
                              "revision": self.cache.revision, "updated": time.time()}
                log.info(json.dumps({"event": "policy-sync", **{k: status.get(k) for k in (
                    "mode", "compile_ms", "nft_ms", "policies", "local_pods", "error")}}))
                self.publish(status)
                seen = gen
                if full:
                    last_full = time.monotonic()
            self.cache.wait_change(seen, self.resync_seconds, INPUTS)
