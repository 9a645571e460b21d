"""The etcd key layout, in one place so every reader and writer agrees on it."""
from __future__ import annotations

ROOT = "/calico-lite/"

POOLS = ROOT + "ipam/pools/"
BLOCKS = ROOT + "ipam/blocks/"
AFFINITIES = ROOT + "ipam/affinities/"
HANDLES = ROOT + "ipam/handles/"
NODES = ROOT + "nodes/"
WORKLOADS = ROOT + "workloads/"
K8S_NAMESPACES = ROOT + "k8s/namespaces/"
K8S_PODS = ROOT + "k8s/pods/"
K8S_POLICIES = ROOT + "k8s/networkpolicies/"
K8S_NODES = ROOT + "k8s/nodes/"  # kube-sync's memory of the Nodes it saw (agents keep NODES)
K8S_SERVICES = ROOT + "k8s/services/"              # addresses, ports, traffic policies
K8S_ENDPOINTSLICES = ROOT + "k8s/endpointslices/"  # per endpoint: node and readiness


def block_id(cidr: str) -> str:
    """'10.244.1.0/26' -> '10.244.1.0-26' (a key segment without a slash)."""
    return cidr.replace("/", "-")


def block_cidr(block_key_or_id: str) -> str:
    return block_key_or_id.rsplit("/", 1)[-1].replace("-", "/")


def pool(name: str) -> str:
    return POOLS + name


def block(cidr: str) -> str:
    return BLOCKS + block_id(cidr)


def affinity(node: str, cidr: str) -> str:
    return f"{AFFINITIES}{node}/{block_id(cidr)}"


def affinities(node: str) -> str:
    return f"{AFFINITIES}{node}/"


def handle(handle_id: str) -> str:
    return HANDLES + handle_id


def node(name: str) -> str:
    return NODES + name


NODE_CONFIG = ROOT + "nodeconfig/"   # operator settings for one node's data plane (`node set`)


def node_config(name: str) -> str:
    """A node's data-plane settings (Felix's per-node FelixConfiguration): host endpoint
    protection (workloadToHostAction, workloadToHostAllow). Absent: the defaults."""
    return NODE_CONFIG + name


def workload(node_name: str, handle_id: str) -> str:
    return f"{WORKLOADS}{node_name}/{handle_id}"


def k8s_namespace(name: str) -> str:
    return K8S_NAMESPACES + name


def k8s_pod(namespace: str, name: str) -> str:
    return f"{K8S_PODS}{namespace}/{name}"


def k8s_policy(namespace: str, name: str) -> str:
    return f"{K8S_POLICIES}{namespace}/{name}"


def k8s_node(name: str) -> str:
    return K8S_NODES + name


def k8s_service(namespace: str, name: str) -> str:
    return f"{K8S_SERVICES}{namespace}/{name}"


def k8s_endpointslice(namespace: str, name: str) -> str:
    return f"{K8S_ENDPOINTSLICES}{namespace}/{name}"


STATUS = ROOT + "status/"


def status(node_name: str) -> str:
    """What a node's agent reports about itself (BGP peers, routes), like CalicoNodeStatus."""
    return STATUS + node_name


POLICY_STATUS = ROOT + "policystatus/"


def policy_status(node_name: str) -> str:
    """The policy controller's last sync on that node (generation, timings, errors)."""
    return POLICY_STATUS + node_name


KUBE_SYNC_STATUS = ROOT + "kubesyncstatus/"


def kube_sync_status(kind: str) -> str:
    """kube-sync's informer for one kind (namespaces, pods, networkpolicies, nodes): synced,
    last resourceVersion seen, last error."""
    return KUBE_SYNC_STATUS + kind


BARRIER = ROOT + "sync/barrier"  # written to make every agent's cache (and controllers) catch up


# BGP configuration (calico_lite.bgpconfig): global settings, peers, per-node settings, secrets
BGP_CONFIG = ROOT + "bgp/config"
BGP_PEERS = ROOT + "bgp/peers/"
BGP_NODES = ROOT + "bgp/nodes/"
BGP_SECRETS = ROOT + "bgp/secrets/"


def bgp_peer(name: str) -> str:
    return BGP_PEERS + name


def bgp_node(name: str) -> str:
    """Operator settings for a node (AS, router id, labels, RR cluster id): kept apart from
    the node record, which the agent rewrites whenever it starts."""
    return BGP_NODES + name


def bgp_secret(name: str) -> str:
    return BGP_SECRETS + name


BGP_FILTERS = ROOT + "bgp/filters/"   # Calico's BGPFilter (bgp.filters), named by BGP peers


def bgp_filter(name: str) -> str:
    return BGP_FILTERS + name
