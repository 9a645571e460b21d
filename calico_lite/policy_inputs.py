"""From datastore records to the plain values the policy compiler takes (pure).

Pods are the join of two records: the workload the CNI ADD wrote (address, host interface,
node) and the Kubernetes pod that kube-sync (or the lab) wrote (labels, declared ports).
"""
from __future__ import annotations

from calico_lite import keys
from policy.manifests import policy_from_dict
from policy.model import ContainerPort, Namespace, NetworkPolicy, Pod
from policy.nat import NatPool


def namespaces_from(raw: dict[str, dict]) -> list[Namespace]:
    return [Namespace(v["name"], dict(v.get("labels", {}))) for v in raw.values()]


def policies_from(raw: dict[str, dict]) -> list[NetworkPolicy]:
    return [policy_from_dict(v) for v in raw.values()]


def pods_from(k8s_pods: dict[str, dict], workloads: dict[str, dict], node: str | None) -> list[Pod]:
    """Every pod with an address; `interface` only for pods on `node` (None: no local pods)."""
    return list(pods_by_workload(k8s_pods, workloads, node).values())


def pods_by_workload(k8s_pods: dict[str, dict], workloads: dict[str, dict], node: str | None) -> dict[str, Pod]:
    """pods_from keyed by workload key (the identity the incremental policy calculation uses)."""
    out = {}
    for wkey, w in workloads.items():
        meta = k8s_pods.get(keys.k8s_pod(w.get("namespace", ""), w.get("pod", "")), {})
        ports = [ContainerPort(p.get("name"), p.get("protocol", "TCP"), int(p["port"]))
                 for p in meta.get("ports", [])]
        out[wkey] = Pod(namespace=w.get("namespace", ""), name=w.get("pod", ""), ip=w["ip"],
                        labels=dict(meta.get("labels", {})), ports=ports,
                        interface=w.get("host_ifname") if node and w.get("node") == node else None,
                        node=w.get("node"))
    return out


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
