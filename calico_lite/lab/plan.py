"""The lab's address plan and topology, computed from its few parameters (pure).

    control plane  10.97.0.0/24   etcd at .10, spine at .1
    spine <-> ToR  10.98.R.0/24   spine .1, ToR R .2
    rack R         10.99.R.0/24   ToR .1 (bridge), node K at .10+K
    pods           10.244.0.0/16  /26 blocks claimed by nodes
    outside        10.100.0.0/24  a host beyond the cluster at .10, spine at .1

Every lab uses the same addresses: labs never touch each other or the machine's own
namespace, so they can overlap safely.
"""
from __future__ import annotations

from dataclasses import dataclass

SPINE_AS = 65000
NODE_AS_BASE = 64600  # ToR mode: one AS per node
MESH_AS = 64512
ETCD_IP = "10.97.0.10"      # also the Kubernetes API server (API_PORT)
API_PORT = 6443
SERVICE_CIDR = "10.96.0.0/16"  # Service cluster IPs (never routed: there is no kube-proxy)
SERVICE_IP = "10.96.0.1"     # the `kubernetes` Service
CP_SUBNET = "10.97.0.0/24"
SPINE_CP_IP = "10.97.0.1"
POD_POOL = "10.244.0.0/16"
OUTSIDE_SUBNET = "10.100.0.0/24"  # behind the spine, outside every pool and node subnet
OUTSIDE_IP = "10.100.0.10"        # where NAT outgoing is seen (or not)
SPINE_OUTSIDE_IP = "10.100.0.1"
BGP_MODES = ("tor", "mesh", "rr")  # rr: route reflector nodes (lab.bgp_records)
ENCAPS = ("none", "vxlan", "ipip")  # the default pool's encapsulation (mode CrossSubnet)


class PlanError(ValueError):
    pass


@dataclass(frozen=True)
class NodePlan:
    name: str
    rack: int
    netns: str
    address: str
    subnet: str
    gateway: str
    asn: int


@dataclass(frozen=True)
class TorPlan:
    rack: int
    name: str
    netns: str
    asn: int
    segment_ip: str
    subnet: str
    uplink_ip: str
    spine_ip: str


@dataclass(frozen=True)
class LabPlan:
    name: str
    racks: int
    nodes_per_rack: int
    bgp: str
    nodes: tuple[NodePlan, ...]
    tors: tuple[TorPlan, ...]
    encap: str = "none"
    etcd_tls: bool = True   # False: `lab up --insecure-etcd`, plain http and no auth
    kubernetes: bool = True  # False: `lab up --no-kubernetes` (lab.nokube)
    bfd: bool = False        # `lab up --bfd`: ToRs run bfdd, tor peers have BFD (100 ms x 3)

    @property
    def cp_netns(self) -> str:
        return f"{self.name}-cp"

    @property
    def spine_netns(self) -> str:
        return f"{self.name}-spine"

    @property
    def etcd_endpoint(self) -> str:
        """etcd as the nodes reach it."""
        return f"{'https' if self.etcd_tls else 'http'}://{ETCD_IP}:2379"

    @property
    def etcd_local_endpoint(self) -> str:
        """etcd from inside the control-plane namespace (API server, kube-sync, the lab)."""
        return f"{'https' if self.etcd_tls else 'http'}://127.0.0.1:2379"

    @property
    def outside_netns(self) -> str:
        """A host outside the cluster, behind the spine (what pods reach with NAT outgoing)."""
        return f"{self.name}-outside"

    def node(self, name: str) -> NodePlan:
        for n in self.nodes:
            if n.name == name:
                return n
        raise PlanError(f"lab {self.name} has no node {name!r} "
                        f"(nodes: {', '.join(n.name for n in self.nodes)})")

    def pod_netns(self, namespace: str, pod: str) -> str:
        return f"{self.name}-pod-{namespace}-{pod}"

    def infra_netns(self) -> list[str]:
        return [self.cp_netns, self.spine_netns, self.outside_netns, *(t.netns for t in self.tors),
                *(n.netns for n in self.nodes)]


def validate_name(name: str) -> None:
    if not name or len(name) > 12 or not name.replace("-", "").isalnum() or not name[0].isalpha():
        raise PlanError(f"lab name {name!r}: use 1-12 letters, digits or '-', starting with a letter")


def make_plan(name: str = "lab", racks: int = 2, nodes_per_rack: int = 2, bgp: str = "tor",
              encap: str = "none", etcd_tls: bool = True, kubernetes: bool = True,
              bfd: bool = False) -> LabPlan:
    validate_name(name)
    if not 1 <= racks <= 9:
        raise PlanError(f"--racks {racks}: the lab supports 1 to 9 racks")
    if not 1 <= nodes_per_rack <= 40:
        raise PlanError(f"--nodes-per-rack {nodes_per_rack}: the lab supports 1 to 40")
    if bgp not in BGP_MODES:
        raise PlanError(f"--bgp {bgp!r}: choose one of {', '.join(BGP_MODES)}")
    if encap not in ENCAPS:
        raise PlanError(f"--encap {encap!r}: choose one of {', '.join(ENCAPS)}")
    tors = tuple(TorPlan(rack=r, name=f"tor{r}", netns=f"{name}-tor{r}", asn=SPINE_AS + r,
                         segment_ip=f"10.99.{r}.1", subnet=f"10.99.{r}.0/24",
                         uplink_ip=f"10.98.{r}.2", spine_ip=f"10.98.{r}.1")
                 for r in range(1, racks + 1))
    addresses = [(r, k, f"10.99.{r}.{10 + k}") for r in range(1, racks + 1)
                 for k in range(1, nodes_per_rack + 1)]
    nodes = []
    for i, (r, k, addr) in enumerate(addresses, start=1):
        asn = NODE_AS_BASE + i if bgp == "tor" else MESH_AS
        nodes.append(NodePlan(name=f"r{r}n{k}", rack=r, netns=f"{name}-r{r}n{k}", address=addr,
                              subnet=f"10.99.{r}.0/24", gateway=f"10.99.{r}.1", asn=asn))
    return LabPlan(name, racks, nodes_per_rack, bgp, tuple(nodes), tors, encap, etcd_tls,
                   kubernetes, bfd)
