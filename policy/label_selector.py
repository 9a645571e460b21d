"""Label selector matching with Kubernetes semantics (pure)."""
from __future__ import annotations

from collections.abc import Mapping

from .model import LabelSelector, LabelSelectorRequirement

OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


def requirement_matches(req: LabelSelectorRequirement, labels: Mapping[str, str]) -> bool:
    """NotIn and DoesNotExist match when the key is absent, as in Kubernetes."""
    if req.operator == "In":
        return req.key in labels and labels[req.key] in req.values
    if req.operator == "NotIn":
        return req.key not in labels or labels[req.key] not in req.values
    if req.operator == "Exists":
        return req.key in labels
    if req.operator == "DoesNotExist":
        return req.key not in labels
    raise ValueError(f"unknown label selector operator {req.operator!r}")


def selector_matches(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    """All matchLabels and all matchExpressions must hold; the empty selector matches everything."""
    for key, value in selector.match_labels:
        if labels.get(key) != value:
            return False
    return all(requirement_matches(r, labels) for r in selector.match_expressions)


def format_selector(selector: LabelSelector) -> str:
    """kubectl-style text (`app=web,tier in (a,b)`), for comments and messages."""
    parts = [f"{k}={v}" for k, v in selector.match_labels]
    for r in selector.match_expressions:
        if r.operator == "Exists":
            parts.append(r.key)
        elif r.operator == "DoesNotExist":
            parts.append(f"!{r.key}")
        else:
            parts.append(f"{r.key} {r.operator.lower()} ({','.join(r.values)})")
    return ",".join(parts) or "<all>"
