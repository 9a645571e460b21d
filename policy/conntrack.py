"""Forget UDP flows of local pods when policy changes, so a newly denied flow stops.

Return traffic passes on `ct state established`, and a UDP "connection" stays established
while packets keep coming (or for 30 s after), so without this a policy that newly denies a
UDP flow would never see it. A new TCP connection is always evaluated, and what happens to an
established one when policy changes is left open by Kubernetes: TCP entries stay.
"""
from __future__ import annotations

import socket
from collections.abc import Mapping

from pyroute2 import Conntrack
from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

from policy.model import Pod


def flows_to_forget(before: Mapping[str, Pod], after: Mapping[str, Pod], everyone: bool) -> set[str]:
    """The pod addresses whose UDP flows must be judged again after a change (pure).

    everyone (a policy or a namespace changed): every local pod. Otherwise only pods whose
    identity or labels changed, and pods that went away (their address may be given out
    again, as Felix forgets a removed endpoint's flows). A new pod has no flow yet, and
    adding it only adds its address to sets: nothing to forget, so a CNI ADD costs no
    conntrack dump (12 ms of CPU under the interpreter lock, measured)."""
    if everyone:
        return {p.ip for p in after.values() if p.interface}
    def who(p: Pod) -> tuple:   # what policy matches on (not where its veth is)
        return p.namespace, p.name, p.ip, p.labels, p.ports
    gone = {p.ip for k, p in before.items() if k not in after}
    changed = {p.ip for k, p in after.items() if k in before and who(before[k]) != who(p)}
    return gone | changed


def forget_udp_flows(pod_ips: set[str]) -> int:
    """Delete conntrack entries of UDP flows from or to pod_ips in this netns; how many."""
    if not pod_ips:
        return 0
    n = 0
    with Conntrack() as ct:
        for e in list(ct.dump_entries(tuple_orig=NFCTAttrTuple(proto=socket.IPPROTO_UDP))):
            if e.tuple_orig.saddr in pod_ips or e.tuple_orig.daddr in pod_ips:
                try:
                    ct.delete(e)
                    n += 1
                except OSError:  # expired meanwhile
                    pass
    return n
