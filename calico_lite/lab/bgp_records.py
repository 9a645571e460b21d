"""The BGP records a lab writes into its etcd before any agent starts (pure).

The lab configures BGP the way an operator would (`calico-lite bgp config set`, `bgp peer
add`, `node set`), so the agents take their peers from the datastore and the lab exercises
the same path as a real cluster:

    tor   mesh off; node K has its own AS (646NN); one peer per rack: its ToR, selected by
          the `rack` label the agent registers
    mesh  mesh on, every node AS 64512
    rr    mesh off, AS 64512; the first node of racks 1 and 2 are route reflectors (label
          route-reflector=true, one cluster id); every node peers with them (peerSelector)
"""
from __future__ import annotations

from bgp.bfd import BfdConfig
from calico_lite import keys
from calico_lite.bgpconfig import RR_LABEL, BgpGlobal, BgpPeer
from calico_lite.lab.plan import MESH_AS, LabPlan

RR_CLUSTER_ID = "244.0.0.1"
LAB_HOLD_TIME = 9
LAB_BFD = BfdConfig(interval_ms=100, multiplier=3)   # `lab up --bfd`, as the ToRs' profile


def route_reflectors(plan: LabPlan) -> list[str]:
    return [n.name for n in plan.nodes if n.rack <= 2 and n.name.endswith("n1")]


def bgp_records(plan: LabPlan) -> dict[str, dict]:
    out: dict[str, dict] = {}
    mesh = plan.bgp == "mesh"
    out[keys.BGP_CONFIG] = BgpGlobal(as_number=MESH_AS, mesh=mesh, hold_time=LAB_HOLD_TIME).to_dict()
    if plan.bgp == "tor":
        for n in plan.nodes:
            # the rack label is the Kubernetes Node's too; here it also serves labs without
            # Kubernetes (`lab up --no-kubernetes`), whose nodes have no Node object
            out[keys.bgp_node(n.name)] = {"name": n.name, "asNumber": n.asn,
                                          "labels": {"rack": f"rack{n.rack}"}}
        for t in plan.tors:
            p = BgpPeer(name=f"tor-rack{t.rack}", peer_ip=t.segment_ip, as_number=t.asn,
                        node_selector=f'rack == "rack{t.rack}"',
                        bfd=LAB_BFD if plan.bfd else None)
            out[keys.bgp_peer(p.name)] = p.to_dict()
    elif plan.bgp == "rr":
        for name in route_reflectors(plan):
            out[keys.bgp_node(name)] = {"name": name, "labels": {RR_LABEL: "true"},
                                        "routeReflectorClusterId": RR_CLUSTER_ID}
        p = BgpPeer(name="route-reflectors", peer_selector=f"has({RR_LABEL})", node_selector="all()")
        out[keys.bgp_peer(p.name)] = p.to_dict()
    return out
