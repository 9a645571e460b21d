"""plugin/rtnl.py packs its few rtnetlink messages by hand: pyroute2's decoders (an independent
implementation of the same layouts) must read back exactly what was meant."""
from __future__ import annotations

import struct

from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from plugin import rtnl


def decode(cls, request: tuple[int, int, bytes]):
    kind, flags, body = request
    m = cls(struct.pack("=IHHII", 16 + len(body), kind, rtnl.NLM_F_REQUEST | flags, 1, 0) + body)
    m.decode()
    return m


def test_veth_with_its_peer_in_the_pod_namespace():
    m = decode(ifinfmsg, rtnl.veth_request("cali0123456789a", "eth0", 7, 1450,
                                           "ee:ee:ee:ee:ee:ee", "02:00:00:00:00:01"))
    assert m["header"]["type"] == rtnl.RTM_NEWLINK
    assert m["header"]["flags"] & rtnl.NLM_F_CREATE and m["header"]["flags"] & rtnl.NLM_F_EXCL
    assert (m.get_attr("IFLA_IFNAME"), m.get_attr("IFLA_MTU"), m.get_attr("IFLA_ADDRESS")) == (
        "cali0123456789a", 1450, "ee:ee:ee:ee:ee:ee")
    assert m["flags"] & 1 and m["change"] & 1          # the host end is born up
    info = m.get_attr("IFLA_LINKINFO")
    assert info.get_attr("IFLA_INFO_KIND") == "veth"
    peer = info.get_attr("IFLA_INFO_DATA").get_attr("VETH_INFO_PEER")
    assert (peer.get_attr("IFLA_IFNAME"), peer.get_attr("IFLA_MTU"), peer.get_attr("IFLA_ADDRESS"),
            peer.get_attr("IFLA_NET_NS_FD")) == ("eth0", 1450, "02:00:00:00:00:01", 7)
    assert peer["flags"] == 0   # a veth peer cannot be opened before both ends are linked


def test_pod_address_and_routes():
    a = decode(ifaddrmsg, rtnl.address_request(5, "10.244.0.7"))
    assert (a.get_attr("IFA_LOCAL"), a.get_attr("IFA_ADDRESS"), a["prefixlen"], a["index"]) == (
        "10.244.0.7", "10.244.0.7", 32, 5)
    gw = decode(rtmsg, rtnl.route_request(5, "169.254.1.1", 32, scope=rtnl.RT_SCOPE_LINK))
    assert (gw.get_attr("RTA_DST"), gw.get_attr("RTA_OIF"), gw["dst_len"], gw["scope"],
            gw["table"]) == ("169.254.1.1", 5, 32, 253, 254)
    default = decode(rtmsg, rtnl.route_request(5, "0.0.0.0", 0, gateway="169.254.1.1"))
    assert default.get_attr("RTA_DST") is None and default["dst_len"] == 0
    assert default.get_attr("RTA_GATEWAY") == "169.254.1.1"


def test_host_route_replaces_and_is_marked_static():
    r = decode(rtmsg, rtnl.route_request(9, "10.244.0.7", 32, scope=rtnl.RT_SCOPE_LINK,
                                         proto=rtnl.RTPROT_STATIC, replace=True))
    assert r["header"]["flags"] & rtnl.NLM_F_REPLACE and not r["header"]["flags"] & rtnl.NLM_F_EXCL
    assert (r.get_attr("RTA_DST"), r.get_attr("RTA_OIF"), r["proto"], r["scope"]) == (
        "10.244.0.7", 9, 4, 253)


def test_link_by_name_requests():
    for request, kind in ((rtnl.delete_link_request("cali1"), rtnl.RTM_DELLINK),
                          (rtnl.get_link_request("cali1"), rtnl.RTM_GETLINK)):
        m = decode(ifinfmsg, request)
        assert m["header"]["type"] == kind and m["index"] == 0
        assert m.get_attr("IFLA_IFNAME") == "cali1"
