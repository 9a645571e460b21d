"""CNI conformance: this module plays the container runtime for every verb and spec version,
against a real one-node lab (etcd, agent, the static shim), including the bad-input cases.

After every failure it checks that nothing is held: no address, no interface.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid

import pytest

from tests.conftest import lab_cli
from tests.e2e.labutil import agent_pid, lab_name, run_dir, running_lab, status
from tests.nslib import remove_netns_with_prefix

VERSIONS = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]


class Runtime:
    """Execs the node's CNI plugin the way a runtime does (env + config on stdin)."""

    def __init__(self, lab: str):
        self.lab = lab
        node = status(lab)["nodes"][0]
        self.node_netns = node["netns"]
        self.binary = os.path.join(node["cni_bin_dir"], "calico-lite")
        conflist = json.load(open(os.path.join(node["cni_conf_dir"], "10-calico-lite.conflist")))
        self.plugin = conflist["plugins"][0]
        self.made: list[str] = []

    def netns(self) -> str:
        name = f"{self.lab}-c-{uuid.uuid4().hex[:6]}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.made.append(name)
        return f"/var/run/netns/{name}"

    def call(self, verb: str, cid: str = "", netns: str = "", version: str = "1.1.0",
             ifname: str = "eth0", extra: dict | None = None, env: dict | None = None,
             stdin: str | None = None) -> tuple[int, dict]:
        conf = {**self.plugin, "cniVersion": version, "name": "k8s-pod-network", **(extra or {})}
        e = {"CNI_COMMAND": verb, "CNI_CONTAINERID": cid, "CNI_NETNS": netns,
             "CNI_IFNAME": ifname, "CNI_PATH": os.path.dirname(self.binary),
             "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=conf;K8S_POD_NAME=p{cid[:6]}",
             **(env or {})}
        e = {k: v for k, v in e.items() if v is not None}
        p = subprocess.run([self.binary], input=json.dumps(conf) if stdin is None else stdin,
                           env=e, capture_output=True, text=True, timeout=60)
        assert "Traceback" not in p.stdout + p.stderr
        return p.returncode, (json.loads(p.stdout) if p.stdout.strip() else {})

    def used(self) -> int:
        shown = json.loads(lab_cli("ipam", "show", "--lab", self.lab, "--json").stdout)
        return sum(b["used"] for b in shown["blocks"])

    def host_links(self) -> list[str]:
        out = subprocess.run(["ip", "-n", self.node_netns, "-o", "link"], capture_output=True,
                             text=True).stdout
        return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if "cali" in line]


@pytest.fixture(scope="module")
def rt():
    name = lab_name("cnf")
    with running_lab(name, "--racks", "1", "--nodes-per-rack", "1"):
        r = Runtime(name)
        try:
            yield r
        finally:
            remove_netns_with_prefix(f"{name}-c-")


def cid() -> str:
    return uuid.uuid4().hex


@pytest.mark.parametrize("version", VERSIONS)
def test_version_lists_every_supported_version(rt, version):
    code, out = rt.call("VERSION", version=version)
    assert code == 0 and out["cniVersion"] == version
    assert out["supportedVersions"] == VERSIONS


@pytest.mark.parametrize("version", VERSIONS)
def test_add_check_del_in_every_version(rt, version):
    c, ns = cid(), rt.netns()
    before = rt.used()
    code, res = rt.call("ADD", c, ns, version)
    assert code == 0, res
    assert res["cniVersion"] == version
    ip = res["ips"][0]["address"]
    assert ip.endswith("/32") and res["ips"][0]["gateway"] == "169.254.1.1"
    assert ("version" in res["ips"][0]) == version.startswith("0.")
    assert res["interfaces"][res["ips"][0]["interface"]]["sandbox"] == ns
    assert rt.used() == before + 1
    inside = subprocess.run(["ip", "netns", "exec", os.path.basename(ns), "ip", "-o", "addr"],
                            capture_output=True, text=True).stdout
    assert ip in inside
    if version != "0.3.1":
        code, out = rt.call("CHECK", c, ns, version, extra={"prevResult": res})
        assert code == 0, out
    code, _ = rt.call("DEL", c, ns, version, extra={"prevResult": res})
    assert code == 0 and rt.used() == before
    assert res["interfaces"][0]["name"] not in rt.host_links()


def test_check_is_not_defined_for_0_3_1(rt):
    code, err = rt.call("CHECK", cid(), rt.netns(), "0.3.1", extra={"prevResult": {"ips": []}})
    assert code != 0 and err["code"] == 1


def test_check_detects_a_missing_route_and_disable_check_is_honoured(rt):
    c, ns = cid(), rt.netns()
    _, res = rt.call("ADD", c, ns)
    subprocess.run(["ip", "netns", "exec", os.path.basename(ns), "ip", "route", "del", "default"],
                   check=True)
    code, err = rt.call("CHECK", c, ns, extra={"prevResult": res})
    assert code != 0 and "169.254.1.1" in err["msg"]
    code, _ = rt.call("CHECK", c, ns, extra={"prevResult": res, "disableCheck": True})
    assert code == 0
    code, err = rt.call("CHECK", c, ns, extra={"prevResult": {**res, "ips": [
        {"address": "10.244.255.1/32", "gateway": "169.254.1.1", "interface": 1}]}})
    assert code != 0 and "10.244.255.1" in err["msg"]
    assert rt.call("DEL", c, ns)[0] == 0


def test_checks_leave_no_descriptor_behind_in_the_agent(rt):
    """Each call runs on a new thread of the agent; pyroute2 keeps a socket per thread that
    uses an IPRoute, so a long-lived one shared by the calls kept a socket for every CHECK."""
    c, ns = cid(), rt.netns()
    code, res = rt.call("ADD", c, ns)
    assert code == 0, res
    pid = agent_pid(rt.lab, status(rt.lab)["nodes"][0]["name"])
    assert pid, "the agent's PID"
    before = len(os.listdir(f"/proc/{pid}/fd"))
    checks = 40
    for _ in range(checks):
        code, out = rt.call("CHECK", c, ns, extra={"prevResult": res})
        assert code == 0, out
    after = len(os.listdir(f"/proc/{pid}/fd"))
    assert rt.call("DEL", c, ns)[0] == 0
    assert after - before < checks // 2, f"{after - before} more descriptors after {checks} CHECKs"


def test_del_is_idempotent_in_every_shape(rt):
    c, ns = cid(), rt.netns()
    before = rt.used()
    assert rt.call("ADD", c, ns)[0] == 0
    assert rt.call("DEL", c, ns)[0] == 0
    assert rt.call("DEL", c, ns)[0] == 0                       # twice
    assert rt.call("DEL", c, "")[0] == 0                       # empty netns
    assert rt.call("DEL", cid(), "/var/run/netns/nope")[0] == 0  # unknown container, no netns
    c2, ns2 = cid(), rt.netns()
    assert rt.call("ADD", c2, ns2)[0] == 0
    subprocess.run(["ip", "netns", "delete", os.path.basename(ns2)], check=True)
    assert rt.call("DEL", c2, ns2)[0] == 0                     # netns already gone
    assert rt.used() == before and rt.host_links() == []


def test_second_add_for_an_existing_interface_fails_and_keeps_the_first(rt):
    c, ns = cid(), rt.netns()
    _, res = rt.call("ADD", c, ns)
    used = rt.used()
    code, err = rt.call("ADD", cid(), ns)  # another container claiming eth0 in the same netns
    assert code != 0 and err["code"] == 4 and "CNI_IFNAME" in err["msg"]
    assert rt.used() == used and len(rt.host_links()) == 1
    assert rt.call("CHECK", c, ns, extra={"prevResult": res})[0] == 0
    assert rt.call("DEL", c, ns)[0] == 0


@pytest.mark.parametrize("case,expect_code,needle", [
    ("malformed-json", 6, "not valid JSON"),
    ("unknown-version", 1, "9.9.9"),
    ("missing-containerid", 4, "CNI_CONTAINERID"),
    ("missing-ifname", 4, "CNI_IFNAME"),
    ("missing-netns", 4, "CNI_NETNS"),
    ("bogus-netns", 4, "does not exist"),
    ("plain-file-netns", 4, "is not a network namespace"),
    ("bad-mtu", 7, "mtu"),
])
def test_bad_input_gets_a_clear_spec_error_and_holds_nothing(rt, case, expect_code, needle):
    before, links = rt.used(), rt.host_links()
    c, ns = cid(), rt.netns()
    kw: dict = {}
    if case == "malformed-json":
        kw["stdin"] = json.dumps({**rt.plugin, "cniVersion": "1.1.0"})[:-1] + ', "mtu": }'
    elif case == "unknown-version":
        kw["version"] = "9.9.9"
    elif case == "missing-containerid":
        kw["env"] = {"CNI_CONTAINERID": None}
    elif case == "missing-ifname":
        kw["env"] = {"CNI_IFNAME": None}
    elif case == "missing-netns":
        ns = ""
    elif case == "bogus-netns":
        ns = "/var/run/netns/does-not-exist-" + c[:6]
    elif case == "plain-file-netns":
        ns = f"/run/calico-lite-conformance-{c[:6]}"
        open(ns, "w").close()
    elif case == "bad-mtu":
        kw["extra"] = {"mtu": "jumbo"}
    try:
        code, err = rt.call("ADD", c, ns, **kw)
    finally:
        if case == "plain-file-netns":
            os.unlink(ns)
    assert code != 0 and err["code"] == expect_code and needle in err["msg"], err
    assert set(err) >= {"cniVersion", "code", "msg"}
    assert rt.used() == before and rt.host_links() == links
    assert not os.path.exists("/var/run/netns/does-not-exist-" + c[:6])  # never created


def test_mtu_from_config_and_detected_from_the_uplink(rt):
    c, ns = cid(), rt.netns()
    assert rt.call("ADD", c, ns, extra={"mtu": 1400})[0] == 0
    link = json.loads(subprocess.run(["ip", "-n", os.path.basename(ns), "-j", "link", "show", "eth0"],
                                     capture_output=True, text=True).stdout)[0]
    assert link["mtu"] == 1400
    assert rt.call("DEL", c, ns)[0] == 0
    c, ns = cid(), rt.netns()
    _, res = rt.call("ADD", c, ns)
    assert res["interfaces"][1]["mtu"] == 1500  # the node's uplink, no encapsulation
    assert rt.call("DEL", c, ns)[0] == 0


def test_status_and_gc(rt):
    assert rt.call("STATUS")[0] == 0
    keep, drop = [(cid(), rt.netns()) for _ in range(2)], [(cid(), rt.netns()) for _ in range(2)]
    before = rt.used()
    for c, ns in keep + drop:
        assert rt.call("ADD", c, ns)[0] == 0
    valid = [{"containerID": c, "ifname": "eth0"} for c, _ in keep]
    assert rt.call("GC", extra={"cni.dev/valid-attachments": valid, "disableGC": True})[0] == 0
    assert rt.used() == before + 4
    assert rt.call("GC", extra={"cni.dev/valid-attachments": valid})[0] == 0
    assert rt.used() == before + 2 and len(rt.host_links()) == 2
    for c, ns in keep:
        assert rt.call("DEL", c, ns)[0] == 0
    assert rt.used() == before


def test_pool_exhausted_is_code_100_and_holds_nothing(rt):
    lab_cli("pool", "add", "tiny", "--cidr", "10.251.0.0/30", "--block-size", "30", "--lab", rt.lab)
    lab_cli("pool", "delete", "default-ipv4-ippool", "--lab", rt.lab)
    try:
        pods = []
        for _ in range(4):
            c, ns = cid(), rt.netns()
            code, res = rt.call("ADD", c, ns)
            pods.append((c, ns))
        used = rt.used()
        code, err = rt.call("ADD", cid(), rt.netns())
        assert code != 0 and err["code"] == 100 and "no free address" in err["msg"]
        assert rt.used() == used and len(rt.host_links()) == len(pods)
        for c, ns in pods:
            assert rt.call("DEL", c, ns)[0] == 0
    finally:
        lab_cli("pool", "add", "default-ipv4-ippool", "--cidr", "10.244.0.0/16", "--lab", rt.lab,
                check=False)
        lab_cli("pool", "delete", "tiny", "--lab", rt.lab, check=False)


def test_agent_not_reachable_is_code_11_and_names_the_socket(rt):
    code, err = rt.call("ADD", cid(), rt.netns(), extra={"agent_socket": "/run/nothing-here.sock"})
    assert code != 0 and err["code"] == 11 and "/run/nothing-here.sock" in err["msg"]


def test_etcd_down_is_try_again_later_and_holds_nothing(rt):
    """Last in the module: it stops the lab's etcd."""
    links = rt.host_links()
    state = json.loads((run_dir(rt.lab) / "state.json").read_text())
    os.kill(state["pids"]["etcd"], signal.SIGKILL)
    code, err = rt.call("ADD", cid(), rt.netns())
    assert code != 0 and err["code"] == 11 and "datastore" in err["msg"], err
    assert rt.host_links() == links
    code, err = rt.call("STATUS")
    assert code != 0 and err["code"] == 50
