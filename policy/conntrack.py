"""Forget UDP flows of local pods when policy changes, so a newly denied flow stops.

Return traffic passes on `ct state established`, and a UDP "connection" stays established
while packets keep coming (or for 30 s after), so without this a policy that newly denies a
UDP flow would never see it. A new TCP connection is always evaluated, and what happens to an
established one when policy changes is left open by Kubernetes: TCP entries stay.
"""
from __future__ import annotations

import socket

from pyroute2 import Conntrack
from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple


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
