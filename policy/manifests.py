"""Parse and validate NetworkPolicy manifests as `kubectl apply -f` takes them.

Accepts multi-document YAML, JSON, and `kind: List` (or `*List`) with items. Every error names
the source, the document (1-based index and namespace/name) and the field path, so an operator
can fix the file without guessing; all errors of a file are reported together.
"""
from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

import yaml

from .model import (
    EGRESS, INGRESS, PROTOCOLS, IPBlock, LabelSelector, LabelSelectorRequirement, NetworkPolicy,
    NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicyRule, infer_policy_types,
)
from .label_selector import OPERATORS

API_VERSION = "networking.k8s.io/v1"
KIND = "NetworkPolicy"
DEFAULT_NAMESPACE = "default"

# \Z, not $: `$` also matches before a trailing newline ("web\n" passed as a name or label)
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?\Z")
_SVC_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?\Z")


class PolicyError(ValueError):
    """Invalid manifests; `errors` holds one line per problem."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("\n".join(errors))


class _Invalid(ValueError):
    """One invalid field. A ValueError, so callers that read single objects (kube-sync's
    informer, the agent's policy controller) treat it as a record they cannot read."""

    def __init__(self, path: str, msg: str):
        super().__init__(f"{path}: {msg}")
        self.path, self.msg = path, msg


# ---------------------------------------------------------------- small field validators

def _mapping(value: Any, path: str, allowed: set[str] | None = None) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Invalid(path or "<document>", f"must be an object, got {type(value).__name__} {value!r}")
    if allowed is not None:
        for k in value:
            if k not in allowed:
                raise _Invalid(f"{path}.{k}" if path else str(k),
                               f"unknown field (expected one of {', '.join(sorted(allowed))})")
    return value


def _list(value: Any, path: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _Invalid(path, f"must be a list, got {type(value).__name__} {value!r}")
    return value


def _string(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise _Invalid(path, f"must be a string, got {value!r}")
    return value


def _check_label_key(key: Any, path: str) -> str:
    key = _string(key, path)
    prefix, _, name = key.rpartition("/")
    if "/" in key and (not prefix or len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix)):
        raise _Invalid(path, f"{key!r}: prefix must be a DNS subdomain")
    if not name or len(name) > 63 or not _LABEL_NAME.match(name):
        raise _Invalid(path, f"{key!r}: not a valid label key (name part: at most 63 characters, "
                             "alphanumeric, '-', '_' or '.', starting and ending alphanumeric)")
    return key


def _check_label_value(value: Any, path: str) -> str:
    if isinstance(value, (int, float, bool)) and not isinstance(value, str):
        raise _Invalid(path, f"{value!r}: label values must be strings (quote it)")
    value = _string(value, path)
    if value and (len(value) > 63 or not _LABEL_NAME.match(value)):
        raise _Invalid(path, f"{value!r}: not a valid label value (at most 63 characters, "
                             "alphanumeric, '-', '_' or '.', starting and ending alphanumeric)")
    return value


def _selector(raw: Any, path: str) -> LabelSelector:
    m = _mapping(raw, path, {"matchLabels", "matchExpressions"})
    labels = {}
    for k, v in _mapping(m.get("matchLabels"), f"{path}.matchLabels").items():
        labels[_check_label_key(k, f"{path}.matchLabels")] = _check_label_value(v, f"{path}.matchLabels.{k}")
    exprs = []
    for i, e in enumerate(_list(m.get("matchExpressions"), f"{path}.matchExpressions")):
        ep = f"{path}.matchExpressions[{i}]"
        e = _mapping(e, ep, {"key", "operator", "values"})
        key = _check_label_key(e.get("key"), f"{ep}.key")
        op = e.get("operator")
        if op not in OPERATORS:
            raise _Invalid(f"{ep}.operator", f"{op!r}: must be one of {', '.join(OPERATORS)}")
        values = tuple(_check_label_value(v, f"{ep}.values[{j}]")
                       for j, v in enumerate(_list(e.get("values"), f"{ep}.values")))
        if op in ("In", "NotIn") and not values:
            raise _Invalid(f"{ep}.values", f"must be non-empty for operator {op}")
        if op in ("Exists", "DoesNotExist") and values:
            raise _Invalid(f"{ep}.values", f"must be empty for operator {op}")
        exprs.append(LabelSelectorRequirement(key, op, values))
    return LabelSelector.of(labels, exprs)


def _network(value: Any, path: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    text = _string(value, path)
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        raise _Invalid(path, f"{text!r}: not a valid CIDR ({e})") from None


def _ip_block(raw: Any, path: str) -> IPBlock:
    m = _mapping(raw, path, {"cidr", "except"})
    if "cidr" not in m:
        raise _Invalid(f"{path}.cidr", "required")
    cidr = _network(m["cidr"], f"{path}.cidr")
    excepts = []
    for i, x in enumerate(_list(m.get("except"), f"{path}.except")):
        net = _network(x, f"{path}.except[{i}]")
        if net.version != cidr.version or not net.subnet_of(cidr) or net == cidr:  # type: ignore[arg-type]
            raise _Invalid(f"{path}.except[{i}]", f"{x!r} must be strictly within cidr {cidr}")
        excepts.append(str(net))
    return IPBlock(str(cidr), tuple(excepts))


def _peer(raw: Any, path: str) -> NetworkPolicyPeer:
    m = _mapping(raw, path, {"podSelector", "namespaceSelector", "ipBlock"})
    m = {k: v for k, v in m.items() if v is not None}   # null is absent (a nil pointer), never "all"
    if not m:
        raise _Invalid(path, "must specify at least one of podSelector, namespaceSelector, ipBlock")
    if "ipBlock" in m and len(m) > 1:
        raise _Invalid(path, "ipBlock may not be combined with podSelector or namespaceSelector")
    if "ipBlock" in m:
        return NetworkPolicyPeer(ip_block=_ip_block(m["ipBlock"], f"{path}.ipBlock"))
    return NetworkPolicyPeer(
        pod_selector=_selector(m["podSelector"], f"{path}.podSelector") if "podSelector" in m else None,
        namespace_selector=(_selector(m["namespaceSelector"], f"{path}.namespaceSelector")
                            if "namespaceSelector" in m else None))


def _port_number(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise _Invalid(path, f"{value!r}: must be a port number between 1 and 65535")
    return value


def _port(raw: Any, path: str) -> NetworkPolicyPort:
    m = _mapping(raw, path, {"protocol", "port", "endPort"})
    proto = m.get("protocol", "TCP")
    if proto not in PROTOCOLS:
        raise _Invalid(f"{path}.protocol", f"{proto!r}: must be one of {', '.join(PROTOCOLS)}")
    port = m.get("port")
    if isinstance(port, str) and port.isascii() and port.isdigit():
        port = int(port)  # IntOrString given as "80"
    if isinstance(port, str):
        if len(port) > 15 or not _SVC_NAME.match(port) or "--" in port or not re.search("[a-z]", port):
            raise _Invalid(f"{path}.port", f"{port!r}: not a valid port name (IANA service name: at most "
                                           "15 lowercase letters, digits and '-', with at least one letter)")
    elif port is not None:
        port = _port_number(port, f"{path}.port")
    end = m.get("endPort")
    if end is not None:
        end = _port_number(end, f"{path}.endPort")
        if not isinstance(port, int):
            raise _Invalid(f"{path}.endPort", "may only be set with a numeric port")
        if end < port:
            raise _Invalid(f"{path}.endPort", f"{end} is below port {port}")
    return NetworkPolicyPort(proto, port, end)


def _rule(raw: Any, path: str, peers_field: str) -> NetworkPolicyRule:
    m = _mapping(raw, path, {peers_field, "ports"})
    peers = tuple(_peer(p, f"{path}.{peers_field}[{i}]")
                  for i, p in enumerate(_list(m.get(peers_field), f"{path}.{peers_field}")))
    ports = tuple(_port(p, f"{path}.ports[{i}]") for i, p in enumerate(_list(m.get("ports"), f"{path}.ports")))
    return NetworkPolicyRule(peers, ports)


def policy_from_dict(doc: Any, path: str = "") -> NetworkPolicy:
    """Validate one NetworkPolicy object (already decoded) and build the model; raises _Invalid."""
    p = f"{path}." if path else ""
    doc = _mapping(doc, path, {"apiVersion", "kind", "metadata", "spec", "status"})
    if doc.get("kind") != KIND:
        raise _Invalid(f"{p}kind", f"{doc.get('kind')!r}: only {KIND} is accepted here")
    if doc.get("apiVersion") != API_VERSION:
        raise _Invalid(f"{p}apiVersion", f"{doc.get('apiVersion')!r}: must be {API_VERSION}")
    meta = _mapping(doc.get("metadata"), f"{p}metadata")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise _Invalid(f"{p}metadata.name", "required")
    if len(name) > 253 or not _DNS1123_SUBDOMAIN.match(name):
        raise _Invalid(f"{p}metadata.name", f"{name!r}: must be a lowercase DNS subdomain")
    namespace = meta.get("namespace") or DEFAULT_NAMESPACE
    if not isinstance(namespace, str) or len(namespace) > 63 or not _DNS1123_LABEL.match(namespace):
        raise _Invalid(f"{p}metadata.namespace", f"{namespace!r}: must be a lowercase DNS label")
    spec = _mapping(doc.get("spec"), f"{p}spec", {"podSelector", "policyTypes", "ingress", "egress"})
    pod_selector = _selector(spec.get("podSelector"), f"{p}spec.podSelector")
    types = _list(spec.get("policyTypes"), f"{p}spec.policyTypes")
    for i, t in enumerate(types):
        if t not in (INGRESS, EGRESS):
            raise _Invalid(f"{p}spec.policyTypes[{i}]", f"{t!r}: must be Ingress or Egress")
    if len(set(types)) != len(types):
        raise _Invalid(f"{p}spec.policyTypes", f"{types!r}: duplicate entry")
    ingress = tuple(_rule(r, f"{p}spec.ingress[{i}]", "from")
                    for i, r in enumerate(_list(spec.get("ingress"), f"{p}spec.ingress")))
    egress = tuple(_rule(r, f"{p}spec.egress[{i}]", "to")
                   for i, r in enumerate(_list(spec.get("egress"), f"{p}spec.egress")))
    return NetworkPolicy(namespace, name, pod_selector, infer_policy_types(types, bool(egress)), ingress, egress)


def _one_line(text: str) -> str:
    """An error line with control characters escaped (a name or field key may hold a newline)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _doc_label(doc: Any) -> str:
    meta = doc.get("metadata") if isinstance(doc, dict) else None
    if isinstance(meta, dict) and isinstance(meta.get("name"), str):
        return f"{meta.get('namespace') or DEFAULT_NAMESPACE}/{meta['name']}"
    return "unnamed"


def _decode(text: str, source: str) -> list[Any]:
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:  # a JSON stream: one or more concatenated values
            decoder, docs, i = json.JSONDecoder(), [], 0
            while i < len(stripped):
                doc, i = decoder.raw_decode(stripped, i)
                docs.append(doc)
                while i < len(stripped) and stripped[i].isspace():
                    i += 1
            return docs
        except json.JSONDecodeError:
            pass  # maybe YAML flow style; let the YAML parser report
    try:
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        raise PolicyError([f"{source}: not valid YAML or JSON: {e}"]) from None


def parse_manifests(text: str, source: str = "<stdin>") -> list[NetworkPolicy]:
    """All NetworkPolicies in `text`, in order; raise PolicyError listing every problem."""
    policies: list[NetworkPolicy] = []
    errors: list[str] = []
    seen: dict[str, str] = {}
    for index, doc in enumerate(_decode(text, source), start=1):
        where = f"{source}: doc {index}"
        if isinstance(doc, dict) and isinstance(doc.get("kind"), str) and doc["kind"].endswith("List"):
            items = doc.get("items")
            if not isinstance(items, list):
                errors.append(_one_line(f"{where} ({doc['kind']}): items: must be a list"))
                continue
            entries = [(f"items[{i}]", item) for i, item in enumerate(items)]
        else:
            entries = [("", doc)]
        for path, item in entries:
            label = f"{where} ({_doc_label(item)})"
            try:
                pol = policy_from_dict(item, path)
            except _Invalid as e:
                errors.append(_one_line(f"{label}: {e.path}: {e.msg}"))
                continue
            if pol.key in seen:
                errors.append(_one_line(f"{label}: metadata.name: {pol.key} already defined in {seen[pol.key]}"))
                continue
            seen[pol.key] = f"doc {index}"
            policies.append(pol)
    if errors:
        raise PolicyError(errors)
    return policies


# ---------------------------------------------------------------- serialization

def _selector_to_dict(s: LabelSelector) -> dict:
    out: dict[str, Any] = {}
    if s.match_labels:
        out["matchLabels"] = dict(s.match_labels)
    if s.match_expressions:
        out["matchExpressions"] = [
            {"key": r.key, "operator": r.operator, **({"values": list(r.values)} if r.values else {})}
            for r in s.match_expressions]
    return out


def _peer_to_dict(peer: NetworkPolicyPeer) -> dict:
    out: dict[str, Any] = {}
    if peer.pod_selector is not None:
        out["podSelector"] = _selector_to_dict(peer.pod_selector)
    if peer.namespace_selector is not None:
        out["namespaceSelector"] = _selector_to_dict(peer.namespace_selector)
    if peer.ip_block is not None:
        out["ipBlock"] = {"cidr": peer.ip_block.cidr,
                          **({"except": list(peer.ip_block.except_)} if peer.ip_block.except_ else {})}
    return out


def _port_to_dict(port: NetworkPolicyPort) -> dict:
    out: dict[str, Any] = {"protocol": port.protocol}
    if port.port is not None:
        out["port"] = port.port
    if port.end_port is not None:
        out["endPort"] = port.end_port
    return out


def _rule_to_dict(rule: NetworkPolicyRule, peers_field: str) -> dict:
    out: dict[str, Any] = {}
    if rule.peers:
        out[peers_field] = [_peer_to_dict(p) for p in rule.peers]
    if rule.ports:
        out["ports"] = [_port_to_dict(p) for p in rule.ports]
    return out


def policy_to_dict(p: NetworkPolicy) -> dict:
    """The Kubernetes object for `p` (policyTypes made explicit); parse_manifests round-trips it."""
    spec: dict[str, Any] = {"podSelector": _selector_to_dict(p.pod_selector), "policyTypes": list(p.policy_types)}
    if p.ingress:
        spec["ingress"] = [_rule_to_dict(r, "from") for r in p.ingress]
    if p.egress:
        spec["egress"] = [_rule_to_dict(r, "to") for r in p.egress]
    return {"apiVersion": API_VERSION, "kind": KIND,
            "metadata": {"name": p.name, "namespace": p.namespace}, "spec": spec}
