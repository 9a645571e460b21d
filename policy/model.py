"""Plain-data records for NetworkPolicy enforcement.

The agent builds these from the datastore; the compiler only ever sees values, so it stays pure
and testable without etcd or a kernel.
"""
from __future__ import annotations

from dataclasses import dataclass, field

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
PROTOCOLS = ("TCP", "UDP", "SCTP")
INGRESS = "Ingress"
EGRESS = "Egress"


@dataclass
class Namespace:
    """A namespace and its labels; always carries kubernetes.io/metadata.name like Kubernetes."""

    name: str
    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.labels.get(NAMESPACE_NAME_LABEL) != self.name:
            self.labels = {**self.labels, NAMESPACE_NAME_LABEL: self.name}


@dataclass(frozen=True)
class ContainerPort:
    name: str | None
    protocol: str
    port: int


@dataclass
class Pod:
    """A workload as policy sees it; `interface` is the host-side veth when the pod is on this node."""

    namespace: str
    name: str
    ip: str
    labels: dict[str, str] = field(default_factory=dict)
    ports: list[ContainerPort] = field(default_factory=list)
    interface: str | None = None
    node: str | None = None


@dataclass(frozen=True)
class LabelSelectorRequirement:
    key: str
    operator: str  # In | NotIn | Exists | DoesNotExist
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class LabelSelector:
    """Kubernetes LabelSelector; the empty selector matches everything."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[LabelSelectorRequirement, ...] = ()

    @classmethod
    def of(cls, match_labels: dict[str, str] | None = None,
           match_expressions: list[LabelSelectorRequirement] | None = None) -> "LabelSelector":
        return cls(tuple(sorted((match_labels or {}).items())), tuple(match_expressions or ()))

    def is_empty(self) -> bool:
        return not self.match_labels and not self.match_expressions


@dataclass(frozen=True)
class IPBlock:
    cidr: str
    except_: tuple[str, ...] = ()


@dataclass(frozen=True)
class NetworkPolicyPeer:
    """One `from`/`to` entry. podSelector alone means the policy's namespace; ipBlock stands alone."""

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None


@dataclass(frozen=True)
class NetworkPolicyPort:
    """protocol defaults to TCP; port None = every port of the protocol; str = named port."""

    protocol: str = "TCP"
    port: int | str | None = None
    end_port: int | None = None


@dataclass(frozen=True)
class NetworkPolicyRule:
    """An ingress (`from`) or egress (`to`) rule. Empty peers = every peer; empty ports = every port."""

    peers: tuple[NetworkPolicyPeer, ...] = ()
    ports: tuple[NetworkPolicyPort, ...] = ()


@dataclass(frozen=True)
class NetworkPolicy:
    namespace: str
    name: str
    pod_selector: LabelSelector = LabelSelector()
    policy_types: tuple[str, ...] = (INGRESS,)
    ingress: tuple[NetworkPolicyRule, ...] = ()
    egress: tuple[NetworkPolicyRule, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def infer_policy_types(policy_types: list[str] | tuple[str, ...] | None, has_egress: bool) -> tuple[str, ...]:
    """Kubernetes defaulting: omitted policyTypes = Ingress, plus Egress when egress rules exist."""
    if policy_types:
        return tuple(t for t in (INGRESS, EGRESS) if t in policy_types)
    return (INGRESS, EGRESS) if has_egress else (INGRESS,)
