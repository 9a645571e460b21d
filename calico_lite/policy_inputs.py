"""From datastore records to the plain values the policy compiler takes (pure).

Pods are the join of two records: the workload the CNI ADD wrote (address, host interface,
node) and the Kubernetes pod that kube-sync (or the lab) wrote (labels, declared ports).
"""
from __future__ import annotations

import ipaddress
import json
import logging

from calico_lite import keys
from policy.manifests import policy_from_dict
from policy.model import ContainerPort, Namespace, NetworkPolicy, Pod
from policy.hostprotect import HostProtection, HostProtectionError, LocalEndpoint, protection_from
from policy.nat import NatPool

log = logging.getLogger("calico-lite.policy")
RECORD_ERRORS = (KeyError, TypeError, ValueError, AttributeError)   # a record of the wrong shape
_skipped: dict[str, str] = {}   # key -> the bad value last logged (log each bad value once)


def skip_record(key: str, value, error: Exception) -> None:
    """Log (once per bad value) a record that cannot be read; the caller leaves it out."""
    text = json.dumps(value, sort_keys=True, default=str)[:500]
    if _skipped.get(key) == text:
        return
    if len(_skipped) > 10000:
        _skipped.clear()
    _skipped[key] = text
    log.error(json.dumps({"event": "datastore-record-skipped", "key": key,
                          "why": f"{type(error).__name__}: {error}"[:300]}))


def namespaces_from(raw: dict[str, dict]) -> list[Namespace]:
    out = []
    for k, v in raw.items():
        try:
            out.append(Namespace(str(v["name"]), _labels(v.get("labels", {}))))
        except RECORD_ERRORS as e:
            skip_record(k, v, e)
    return out


def _labels(raw) -> dict[str, str]:
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise TypeError(f"labels must be an object of strings, not {raw!r}"[:200])
    return dict(raw)


def policies_from(raw: dict[str, dict]) -> list[NetworkPolicy]:
    return [policy_from_dict(v) for v in raw.values()]


def pods_from(k8s_pods: dict[str, dict], workloads: dict[str, dict], node: str | None) -> list[Pod]:
    """Every pod with an address; `interface` only for pods on `node` (None: no local pods)."""
    return list(pods_by_workload(k8s_pods, workloads, node).values())


def pods_by_workload(k8s_pods: dict[str, dict], workloads: dict[str, dict], node: str | None) -> dict[str, Pod]:
    """pods_from keyed by workload key (the identity the incremental policy calculation uses)."""
    out = {}
    for wkey, w in workloads.items():
        try:
            out[wkey] = _pod(k8s_pods, w, node)
        except RECORD_ERRORS as e:   # that pod is left out; every other keeps its rules
            skip_record(wkey, w, e)
    return out


def _pod(k8s_pods: dict[str, dict], w: dict, node: str | None) -> Pod:
    """One workload record joined with its pod record; raises on a record of the wrong shape."""
    if not isinstance(w["ip"], str):
        raise TypeError(f"ip {w['ip']!r} is not a string")
    ip = str(ipaddress.IPv4Address(w["ip"]))   # AddressValueError is a ValueError
    pod_key = keys.k8s_pod(str(w.get("namespace", "")), str(w.get("pod", "")))
    meta = k8s_pods.get(pod_key, {})
    try:
        ports = [ContainerPort(p.get("name"), p.get("protocol", "TCP"), int(p["port"]))
                 for p in meta.get("ports", [])]
        labels = _labels(meta.get("labels", {}))
    except RECORD_ERRORS as e:   # a broken pod record: the workload stays, without labels
        skip_record(pod_key, meta, e)
        ports, labels = [], {}
    iface = w.get("host_ifname") if node and w.get("node") == node else None
    if iface is not None and not isinstance(iface, str):
        raise TypeError(f"host_ifname {iface!r} is not a string")
    return Pod(namespace=str(w.get("namespace", "")), name=str(w.get("pod", "")), ip=ip,
               labels=labels, ports=ports, interface=iface, node=w.get("node"))


def inputs_from(items, node: str | None) -> tuple[list[NetworkPolicy], list[Pod], list[Namespace]]:
    """items(prefix) -> {key: value}: the agent's cache or a datastore listing."""
    return (policies_from(items(keys.K8S_POLICIES)),
            pods_from(items(keys.K8S_PODS), items(keys.WORKLOADS), node),
            namespaces_from(items(keys.K8S_NAMESPACES)))


def nat_inputs(pools: dict[str, dict], nodes: dict[str, dict]) -> tuple[list[NatPool], list[str]]:
    """The pools (keys.POOLS) with their natOutgoing flag, and the subnets the node records
    (keys.NODES) name: what policy.nat.nat_state takes."""
    return ([NatPool(v.get("name", k.rsplit("/", 1)[-1]), v["cidr"], bool(v.get("natOutgoing", False)))
             for k, v in pools.items() if v.get("cidr")],
            [v["subnet"] for v in nodes.values() if v.get("subnet")])


def local_endpoints(pods: dict[str, Pod], workloads: dict[str, dict]) -> list[LocalEndpoint]:
    """The local pods (those pods_by_workload gave an interface) with the MAC their workload
    record names (policy.hostprotect: anti-spoofing of source MACs and ARP)."""
    out = []
    for wkey, pod in pods.items():
        if not pod.interface:
            continue
        mac = workloads.get(wkey, {}).get("mac", "")
        out.append(LocalEndpoint(pod.interface, pod.ip, mac if _is_mac(mac) else ""))
    return out


def _is_mac(text) -> bool:
    parts = text.split(":") if isinstance(text, str) else []
    return len(parts) == 6 and all(len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p)
                                   for p in parts)


def host_protection(configs: dict[str, dict], node: str) -> tuple[HostProtection, str]:
    """This node's host endpoint protection (keys.node_config) and a problem ('' if none).
    A record that does not read is logged and the default (protection on) applies: a typo
    must not open the node to its pods."""
    key = keys.node_config(node)
    try:
        return protection_from(configs.get(key)), ""
    except HostProtectionError as e:
        skip_record(key, configs.get(key), e)
        return HostProtection(), f"{key}: {e} (the default applies)"
