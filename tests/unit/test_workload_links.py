from calico_lite import keys
from calico_lite.workload_links import WorkloadLinkCheck, missing_interfaces


def w(ifname, node="n1"):
    return {"host_ifname": ifname, "node": node, "namespace": "a", "pod": "p", "ip": "10.0.0.1"}


def test_only_this_nodes_workloads_with_a_missing_interface():
    records = {"k1": w("cali1"), "k2": w("cali2"), "k3": w("cali3", node="n2"), "k4": "garbage", "k5": {"node": "n1"}}
    assert missing_interfaces(records, "n1", {"cali1", "eth0"}) == {"k2": "cali2"}


class FakeCache:
    """Only the items() the check reads (a dict, no datastore behind it)."""

    def __init__(self, data):
        self.data = data

    def items(self, prefix):
        return {k: v for k, v in self.data.items() if k.startswith(prefix)}


def test_reported_only_when_missing_at_two_checks_in_a_row():
    links = {"cali1", "cali2"}
    seen = []
    cache = FakeCache({keys.workload("n1", "h1"): w("cali1"), keys.workload("n1", "h2"): w("cali2")})
    c = WorkloadLinkCheck(cache, "n1", lambda: set(links), seen.append)
    assert c.check_once() == {}
    links.discard("cali2")
    assert c.check_once() == {}          # an ADD may still be making the veth
    assert c.check_once() == {keys.workload("n1", "h2"): "cali2"}
    links.add("cali2")
    assert c.check_once() == {}
    assert seen == [0, 0, 1, 0]
