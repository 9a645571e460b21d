"""Service address advertisement: the records kube-sync makes, the ranges in the global BGP
record, and the pure choice of the prefixes a node announces."""
import pytest

from calico_lite import keys
from calico_lite.bgpconfig import BgpGlobal
from calico_lite.cli.bgp import format_config
from calico_lite.cli.node import format_node_status
from calico_lite.kube_sync import endpointslice_record, service_record
from calico_lite.services import ServiceRanges, parse_cidrs, service_prefixes, without_service_paths

RANGES = ServiceRanges(cluster=("10.96.0.0/16",), external=("192.0.2.0/24",),
                       loadbalancer=("198.51.100.0/24",))


def svc(name, *, etp="Cluster", itp="Cluster", cluster="10.96.0.10", external=(), lb=(), ns="default"):
    return {"namespace": ns, "name": name, "clusterIPs": [cluster] if cluster else [],
            "externalIPs": list(external), "loadBalancerIPs": list(lb),
            "externalTrafficPolicy": etp, "internalTrafficPolicy": itp}


def eps(service, *endpoints, ns="default"):
    return {"namespace": ns, "service": service,
            "endpoints": [{"node": n, "ready": r} for n, r in endpoints]}


def prefixes(ranges, services, slices, node):
    return {a.prefix for a in service_prefixes(ranges, services, slices, node)}


RANGE_PREFIXES = {"10.96.0.0/16", "192.0.2.0/24", "198.51.100.0/24"}


def test_every_node_announces_the_ranges_and_cluster_policy_adds_nothing():
    services = [svc("web", external=["192.0.2.5"], lb=["198.51.100.7"])]
    slices = [eps("web", ("n1", True))]
    assert prefixes(RANGES, services, slices, "n1") == RANGE_PREFIXES
    assert prefixes(RANGES, services, slices, "n2") == RANGE_PREFIXES
    assert prefixes(ServiceRanges(), services, slices, "n1") == set()


def test_local_policy_pins_the_32s_to_nodes_with_a_ready_endpoint():
    services = [svc("web", etp="Local", external=["192.0.2.5"], lb=["198.51.100.7"])]
    slices = [eps("web", ("n1", True), ("n2", False)), eps("web", ("n3", True))]
    local = {"10.96.0.10/32", "192.0.2.5/32", "198.51.100.7/32"}
    assert prefixes(RANGES, services, slices, "n1") == RANGE_PREFIXES | local
    assert prefixes(RANGES, services, slices, "n3") == RANGE_PREFIXES | local
    assert prefixes(RANGES, services, slices, "n2") == RANGE_PREFIXES   # not ready
    assert prefixes(RANGES, services, slices, "n4") == RANGE_PREFIXES
    assert prefixes(RANGES, services, [], "n1") == RANGE_PREFIXES       # the last one went
    reasons = dict((a.prefix, a.reason) for a in service_prefixes(RANGES, services, slices, "n1"))
    assert reasons["192.0.2.5/32"] == "default/web external IP, local endpoint"
    assert reasons["10.96.0.0/16"] == "service cluster IP range"


def test_only_addresses_inside_their_kinds_ranges_are_announced():
    services = [svc("web", etp="Local", cluster="10.97.0.1", external=["203.0.113.1", "198.51.100.8"],
                    lb=["192.0.2.9", "198.51.100.7", "fd00::1"])]
    slices = [eps("web", ("n1", True))]
    assert prefixes(RANGES, services, slices, "n1") == RANGE_PREFIXES | {"198.51.100.7/32"}


def test_internal_local_pins_only_the_cluster_ip_and_namespaces_are_kept_apart():
    services = [svc("api", itp="Local", external=["192.0.2.5"]),
                svc("api", ns="other", etp="Local", cluster="10.96.0.20")]
    slices = [eps("api", ("n1", True)), eps("api", ("n2", True), ns="other")]
    assert prefixes(RANGES, services, slices, "n1") == RANGE_PREFIXES | {"10.96.0.10/32"}
    assert prefixes(RANGES, services, slices, "n2") == RANGE_PREFIXES | {"10.96.0.20/32"}


def test_learned_service_paths_stay_out_of_the_kernel():
    learned = {"10.244.1.0/26": {"a"}, "10.96.0.0/16": {"b"}, "192.0.2.5/32": {"c"},
               "10.96.0.0/12": {"d"}}
    assert set(without_service_paths(learned, RANGES)) == {"10.244.1.0/26", "10.96.0.0/12"}
    assert without_service_paths(learned, ServiceRanges()) == learned
    too_wide = ServiceRanges(cluster=("10.0.0.0/8",))
    assert set(without_service_paths(learned, too_wide, pools=["10.244.0.0/16"])) == {
        "10.244.1.0/26", "192.0.2.5/32"}


def test_parse_cidrs_takes_repeats_and_comma_lists_and_refuses_typos():
    assert parse_cidrs(["10.96.0.0/12,192.0.2.0/24", "192.0.2.0/24", " 10.0.0.0/8 "]) == (
        "10.0.0.0/8", "10.96.0.0/12", "192.0.2.0/24")
    assert parse_cidrs([""]) == ()
    with pytest.raises(ValueError, match="--service-external-ip '10.96.0.1/16'"):
        parse_cidrs(["10.96.0.1/16"], "--service-external-ip")
    with pytest.raises(ValueError, match="fd00::/64"):
        parse_cidrs(["fd00::/64"])


def test_global_record_round_trips_and_old_records_have_no_ranges():
    g = BgpGlobal(service_cluster_ips=("10.96.0.0/16",), service_loadbalancer_ips=("198.51.100.0/24",))
    d = g.to_dict()
    assert d["serviceClusterIPs"] == ["10.96.0.0/16"] and d["serviceExternalIPs"] == []
    assert BgpGlobal.from_dict(d) == g
    assert BgpGlobal.from_dict({"asNumber": 65000}).service_ranges == ServiceRanges()
    assert "serviceLoadBalancerIPs: 198.51.100.0/24" in format_config(d)
    with pytest.raises(ValueError):
        BgpGlobal.from_dict({"serviceClusterIPs": ["nonsense"]})


def test_service_record_keeps_addresses_ports_and_policies():
    obj = {"metadata": {"namespace": "default", "name": "web", "uid": "u"},
           "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                    "externalIPs": ["192.0.2.5"], "externalTrafficPolicy": "Local",
                    "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 31000}]},
           "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.7"}, {"hostname": "x"}]}}}
    key, rec = service_record(obj)
    assert key == keys.k8s_service("default", "web")
    assert rec == {"namespace": "default", "name": "web", "type": "LoadBalancer",
                   "clusterIPs": ["10.96.0.10"], "externalIPs": ["192.0.2.5"],
                   "loadBalancerIPs": ["198.51.100.7"],
                   "ports": [{"name": "http", "protocol": "TCP", "port": 80}],
                   "externalTrafficPolicy": "Local", "internalTrafficPolicy": "Cluster"}
    headless = service_record({"metadata": {"namespace": "d", "name": "h"},
                               "spec": {"clusterIP": "None", "ports": []}})[1]
    assert headless["clusterIPs"] == [] and headless["loadBalancerIPs"] == []


def test_endpointslice_record_keeps_node_and_readiness_only():
    obj = {"metadata": {"namespace": "default", "name": "web-abc",
                        "labels": {"kubernetes.io/service-name": "web"}},
           "addressType": "IPv4",
           "endpoints": [{"addresses": ["10.244.0.5"], "nodeName": "n1", "conditions": {"ready": True}},
                         {"addresses": ["10.244.0.6"], "nodeName": "n2", "conditions": {"ready": False}},
                         {"addresses": ["10.244.0.7"], "nodeName": "n3", "conditions": {}},
                         {"addresses": ["10.244.0.8"]}]}
    key, rec = endpointslice_record(obj)
    assert key == keys.k8s_endpointslice("default", "web-abc")
    assert rec == {"namespace": "default", "service": "web",
                   "endpoints": [{"node": "n1", "ready": True}, {"node": "n2", "ready": False},
                                 {"node": "n3", "ready": True}, {"node": "", "ready": True}]}
    assert endpointslice_record({"metadata": {"namespace": "d", "name": "x"}}) is None
    assert endpointslice_record({**obj, "endpoints": None})[1]["endpoints"] == []


def test_node_status_lists_the_advertised_service_prefixes():
    status = {"node": "n1", "blocks": [], "routes": [], "updated": 0,
              "services": [{"prefix": "192.0.2.5/32", "reason": "default/web external IP, local endpoint"}]}
    text = format_node_status(status, now=0)
    assert "advertised service prefixes:" in text
    assert "192.0.2.5/32       default/web external IP, local endpoint" in text
    assert "advertised" not in format_node_status({**status, "services": []}, now=0)
