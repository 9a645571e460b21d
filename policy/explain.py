"""`policy explain NS/POD`: which policies select a pod and what they let through (pure)."""
from __future__ import annotations

from policy.model import (EGRESS, INGRESS, Namespace, NetworkPolicy, NetworkPolicyPeer,
                          NetworkPolicyPort, Pod)
from policy.label_selector import format_selector, selector_matches


def selects(policy: NetworkPolicy, pod: Pod) -> bool:
    return policy.namespace == pod.namespace and selector_matches(policy.pod_selector, pod.labels)


def describe_peer(peer: NetworkPolicyPeer, policy_ns: str) -> str:
    if peer.ip_block:
        exc = f" except {', '.join(peer.ip_block.except_)}" if peer.ip_block.except_ else ""
        return f"ipBlock {peer.ip_block.cidr}{exc}"
    pods = format_selector(peer.pod_selector) if peer.pod_selector else "<all>"
    if peer.namespace_selector is None:
        return f"pods {pods} in namespace {policy_ns}"
    return f"pods {pods} in namespaces {format_selector(peer.namespace_selector)}"


def describe_port(port: NetworkPolicyPort) -> str:
    if port.port is None:
        return f"{port.protocol}/any"
    if port.end_port:
        return f"{port.protocol}/{port.port}-{port.end_port}"
    return f"{port.protocol}/{port.port}"


def matching_pods(peer: NetworkPolicyPeer, policy_ns: str, pods: list[Pod],
                  namespaces: dict[str, Namespace]) -> list[str]:
    if peer.ip_block:
        return []
    out = []
    for p in pods:
        ns = namespaces.get(p.namespace, Namespace(p.namespace, {}))
        in_ns = (p.namespace == policy_ns if peer.namespace_selector is None
                 else selector_matches(peer.namespace_selector, ns.labels))
        if in_ns and (peer.pod_selector is None or selector_matches(peer.pod_selector, p.labels)):
            out.append(f"{p.namespace}/{p.name}")
    return out


def explain(pod: Pod, policies: list[NetworkPolicy], pods: list[Pod],
            namespaces: list[Namespace]) -> dict:
    """A structured answer; `format_explanation` turns it into text."""
    nss = {n.name: n for n in namespaces}
    out: dict = {"pod": f"{pod.namespace}/{pod.name}", "ip": pod.ip, "labels": pod.labels}
    for direction, rules_of in ((INGRESS, lambda p: p.ingress), (EGRESS, lambda p: p.egress)):
        selecting = [p for p in policies if selects(p, pod) and direction in p.policy_types]
        entry: dict = {"isolated": bool(selecting), "policies": []}
        for p in selecting:
            rules = []
            for r in rules_of(p):
                rules.append({
                    "peers": [{"peer": describe_peer(peer, p.namespace),
                               "pods": matching_pods(peer, p.namespace, pods, nss)}
                              for peer in r.peers] or [{"peer": "anywhere", "pods": []}],
                    "ports": [describe_port(port) for port in r.ports] or ["any"]})
            entry["policies"].append({"name": p.key, "rules": rules})
        out[direction.lower()] = entry
    return out


def format_explanation(e: dict) -> str:
    lines = [f"pod {e['pod']} ({e['ip']}) labels {e['labels'] or '{}'}"]
    for direction in ("ingress", "egress"):
        d = e[direction]
        if not d["isolated"]:
            lines.append(f"  {direction}: not isolated (no policy selects it): everything allowed")
            continue
        names = ", ".join(p["name"] for p in d["policies"])
        allowed = any(p["rules"] for p in d["policies"])
        lines.append(f"  {direction}: isolated by {names}; " + ("allowed:" if allowed else "nothing allowed"))
        word = "from" if direction == "ingress" else "to"
        for p in d["policies"]:
            for r in p["rules"]:
                for peer in r["peers"]:
                    who = f" = {', '.join(peer['pods'])}" if peer["pods"] else ""
                    lines.append(f"    {word} {peer['peer']}{who} on {', '.join(r['ports'])}  [{p['name']}]")
    return "\n".join(lines)
