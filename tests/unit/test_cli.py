"""The `calico-lite` parser: global options before or after the subcommand, every --help,
the `--` of `lab exec`, the table formatter and the label/port parsers."""
from __future__ import annotations

import argparse
import ast
from pathlib import Path

import pytest

from calico_lite.cli import build_parser
from calico_lite.cli.app import parse
from calico_lite.cli.common import DEFAULT_ETCD, Group, arg, datastore_target, etcd_endpoints, etcd_tls
from calico_lite.cli.lab import format_lab_status, parse_ports
from calico_lite.cli.node import format_node_status
from calico_lite.cli.table import boxed, columns, row
from calico_lite.etcd_tls import EtcdTls
from calico_lite.labels import LabelError, apply_label_changes, parse_label_args


def _parsers(p: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(path, parser) of every parser in the tree, groups included."""
    yield path, p
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sp in a.choices.items():
                yield from _parsers(sp, path + (name,))


ALL_PATHS = [path for path, _ in _parsers(build_parser())]


@pytest.mark.parametrize("path", ALL_PATHS, ids=lambda p: " ".join(p) or "top")
def test_every_help_builds(path, capsys):
    with pytest.raises(SystemExit) as e:
        parse([*path, "--help"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith(" ".join(("usage: calico-lite",) + path))


def test_the_tree_has_every_command_group():
    assert {p[0] for p in ALL_PATHS if p} == {"node", "bgp", "kube-sync", "install-cni", "pool",
                                              "ipam", "policy", "lab"}
    assert ("lab", "node", "restart") in ALL_PATHS and ("node", "set") in ALL_PATHS


DATASTORE_COMMANDS = [("policy", "get"), ("policy", "explain", "default/p", "--json"),
                      ("pool", "list", "--json"), ("ipam", "check", "--grace", "0"),
                      ("node", "status", "r1n1"), ("node", "set", "r1n1", "--as", "65001"),
                      ("bgp", "peer", "list"), ("bgp", "config", "get")]


@pytest.mark.parametrize("cmd", DATASTORE_COMMANDS, ids=" ".join)
@pytest.mark.parametrize("option,target", [(("--lab", "x"), ("lab", "x")),
                                           (("--etcd-endpoints", "http://a:1,http://b:2"),
                                            ("etcd", ["http://a:1", "http://b:2"]))])
def test_global_options_work_before_and_after_the_subcommand(cmd, option, target):
    before, after = parse([*option, *cmd]), parse([*cmd, *option])
    assert vars(before) == vars(after)
    assert datastore_target(before, environ={}) == target


@pytest.mark.parametrize("cmd", [["node", "run", "--name", "n1", "--address", "10.0.0.1"],
                                 ["kube-sync"]], ids=" ".join)
def test_daemons_take_etcd_endpoints_before_or_after(cmd):
    """The agent and kube-sync run in a pod, never against a lab: the etcd options only."""
    tls = ["--etcd-ca-file", "/c", "--etcd-cert-file", "/t", "--etcd-key-file", "/k"]
    for argv in (["--etcd-endpoints", "https://e:1", *tls, *cmd],
                 [*cmd, "--etcd-endpoints", "https://e:1", *tls]):
        args = parse(argv)
        assert etcd_endpoints(args, environ={}) == ["https://e:1"]
        assert etcd_tls(args, environ={}) == EtcdTls("/c", "/t", "/k")
    args = parse(cmd)
    assert not hasattr(args, "etcd_endpoints")  # then $ETCD_ENDPOINTS
    assert etcd_tls(args, environ={}) is None


def test_empty_etcd_endpoints_are_an_error_not_the_default():
    """The DaemonSet passes `--etcd-endpoints $(ETCD_ENDPOINTS)`: an unset ConfigMap value
    must stop the agent with a reason, not point it at 127.0.0.1."""
    args = parse(["--etcd-endpoints", "", "kube-sync"])
    with pytest.raises(ValueError, match="--etcd-endpoints is empty.*ConfigMap"):
        etcd_endpoints(args, environ={})
    with pytest.raises(ValueError, match="is empty"):
        etcd_endpoints(parse(["kube-sync"]), environ={"ETCD_ENDPOINTS": " , "})
    assert etcd_endpoints(parse(["kube-sync"]), environ={}) == ["http://127.0.0.1:2379"]


def test_tls_files_come_from_calicos_variables_unless_a_flag_says_otherwise():
    env = {"ETCD_CA_CERT_FILE": "/env/ca", "ETCD_CERT_FILE": "/env/crt", "ETCD_KEY_FILE": "/env/key"}
    assert etcd_tls(parse(["pool", "list"]), environ=env) == EtcdTls("/env/ca", "/env/crt", "/env/key")
    args = parse(["pool", "list", "--etcd-ca-file", "/flag/ca"])
    assert etcd_tls(args, environ=env) == EtcdTls("/flag/ca", "/env/crt", "/env/key")
    assert etcd_tls(args, environ={}) == EtcdTls("/flag/ca")   # the server's CA only


@pytest.mark.parametrize("flag", ["--etcd-ca-file", "--etcd-cert-file", "--etcd-key-file"])
def test_the_tls_options_are_global_too(flag):
    assert vars(parse([flag, "/f", "pool", "list"])) == vars(parse(["pool", "list", flag, "/f"]))
    with pytest.raises(SystemExit):
        parse([flag, "/f", "lab", "probe"])


def test_the_option_after_the_subcommand_wins():
    args = parse(["--lab", "before", "policy", "get", "--lab", "after"])
    assert datastore_target(args, environ={}) == ("lab", "after")


def test_without_options_the_environment_decides():
    args = parse(["pool", "list"])
    assert datastore_target(args, environ={}) == ("etcd", [DEFAULT_ETCD])
    assert datastore_target(args, environ={"ETCD_ENDPOINTS": "http://a:1"}) == ("etcd", ["http://a:1"])
    assert datastore_target(args, environ={"CALICO_LITE_LAB": "l"}) == ("lab", "l")


@pytest.mark.parametrize("argv", [["--lab", "x", "install-cni"], ["--lab", "x", "lab", "status"],
                                  ["--lab", "x", "node", "run", "--name", "n", "--address", "a"],
                                  ["--etcd-endpoints", "http://e:1", "lab", "probe"]])
def test_a_global_option_the_command_does_not_use_is_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as e:
        parse(argv)
    assert e.value.code == 2
    assert "does not take it" in capsys.readouterr().err


def test_after_the_subcommand_such_an_option_stays_unknown(capsys):
    with pytest.raises(SystemExit) as e:
        parse(["install-cni", "--lab", "x"])
    assert e.value.code == 2 and "unrecognized arguments: --lab x" in capsys.readouterr().err


def test_everything_after_dash_dash_is_the_exec_command():
    args = parse(["lab", "exec", "default/p", "--name", "l1", "--", "ip", "-j", "route", "--name"])
    assert (args.pod, args.name, args.argv) == ("default/p", "l1", ["ip", "-j", "route", "--name"])
    with pytest.raises(SystemExit) as e:
        parse(["pool", "list", "--", "x"])
    assert e.value.code == 2


def test_every_command_knows_its_handler_and_path():
    for path, p in _parsers(build_parser()):
        if not any(isinstance(a, argparse._SubParsersAction) for a in p._actions) and path:
            assert callable(p.get_default("fn")) and p.get_default("command_path") == " ".join(path)


def test_a_lab_command_is_one_decorated_function():
    top = Group()
    lab = top.group("lab", "labs", args=(arg("--name", default="lab"),))

    @lab.command("shell", arg("pod"), arg("argv", nargs="*"), help="a shell in a pod")
    def shell(args):
        return len(args.argv)
    p = argparse.ArgumentParser(prog="t")
    top.add_to(p.add_subparsers(dest="cmd", required=True))
    args = p.parse_args(["lab", "shell", "--name", "l2", "ns/p", "sh", "x"])
    assert (args.name, args.fn(args), args.command_path) == ("l2", 2, "lab shell")


def test_command_modules_import_only_common_and_table():
    """One module per command group, no cycle: app wires them, they never import each other."""
    cli = Path(__file__).resolve().parents[2] / "calico_lite" / "cli"
    for f in cli.glob("*.py"):
        if f.stem in ("__init__", "__main__", "app"):
            continue
        imported = {n.module for n in ast.walk(ast.parse(f.read_text()))
                    if isinstance(n, ast.ImportFrom) and n.module}
        inside = {m for m in imported if m.startswith("calico_lite.cli")}
        assert inside <= {"calico_lite.cli.common", "calico_lite.cli.table"}, f.name


# --- tables ----------------------------------------------------------------------------
def test_columns_pad_to_a_minimum_and_leave_the_last_cell_alone():
    assert columns(("A", "B", "C"), [("x", "yy", "z z"), ("a-long-one", "b", "c")], (3, 2)) == [
        "A   B  C", "x   yy z z", "a-long-one b  c"]
    assert row(("only",), (10,)) == "only"


def test_boxed_sizes_columns_to_their_content():
    assert boxed(("A", "BB"), [("xyz", 1)], "  ") == [
        "  +-----+----+", "  | A   | BB |", "  +-----+----+", "  | xyz | 1  |", "  +-----+----+"]


def test_node_status_is_calicoctl_style():
    s = {"node": "r1n1", "updated": 0.0, "bgp": {"asNumber": 65001, "routerId": "10.0.0.1"},
         "peers": [{"address": "10.0.0.2", "peer_as": 65002, "state": "Idle", "since": 90.0,
                    "reason": "refused", "description": "node-to-node mesh"}],
         "blocks": ["10.244.0.0/26"], "routes": [{"prefix": "10.244.1.0/26", "via": ["10.0.0.2"]}]}
    assert format_node_status(s, now=100.0).splitlines() == [
        "node r1n1  AS 65001  router id 10.0.0.1  exabgp NOT running",
        "  reported 1m40s ago",
        "  IPv4 BGP status",
        "  +--------------+---------+-------------------+-------+-------+----------+------+---------------+",
        "  | PEER ADDRESS | PEER AS | PEER TYPE         | STATE | SINCE | RECEIVED | SENT | INFO          |",
        "  +--------------+---------+-------------------+-------+-------+----------+------+---------------+",
        "  | 10.0.0.2     | 65002   | node-to-node mesh | down  | 10s   | 0        | 0    | Idle: refused |",
        "  +--------------+---------+-------------------+-------+-------+----------+------+---------------+",
        "  blocks: 10.244.0.0/26",
        "  routes:",
        "    10.244.1.0/26      via 10.0.0.2 (none)"]


def test_node_status_names_the_pools_that_masquerade():
    base = {"node": "r1n1", "updated": 0.0}
    on = {**base, "nat": {"masquerade": [{"pool": "out", "cidr": "10.245.0.0/16"}]}}
    assert ("  NAT outgoing: out 10.245.0.0/16 masquerade to destinations outside the pools "
            "and node subnets") in format_node_status(on, now=1.0).splitlines()
    off = format_node_status({**base, "nat": {"masquerade": []}}, now=1.0)
    assert "  NAT outgoing: off (no pool has natOutgoing)" in off.splitlines()
    assert "NAT" not in format_node_status(base, now=1.0)  # no policy status yet


def test_pool_set_takes_both_polarities_of_each_flag():
    args = parse(["pool", "set", "p", "--no-nat-outgoing", "--disabled"])
    assert (args.nat_outgoing, args.disabled) == (False, True)
    args = parse(["pool", "set", "p", "--nat-outgoing"])
    assert (args.nat_outgoing, args.disabled) == (True, None)


def test_lab_status_table():
    s = {"name": "lab", "bgp_mode": "tor", "etcd": "healthy",
         "kubernetes": {"version": "v1.34.4", "apiserver": "running", "kube_sync": "running"},
         "nodes": [{"name": "r1n1", "rack": "r1", "address": "10.99.1.11", "agent": "running",
                    "agent_pod": "calico-lite-node-x7k2p", "kubelet": "running", "ready": False, "unready": {"bgp": "no peer Established"},
                    "bgp": [{"peer": "10.99.1.1", "state": "Established"}], "notes": ["slow"]}],
         "pods": [{"namespace": "default", "name": "p", "node": "r1n1", "ip": "10.244.0.1"}]}
    assert format_lab_status(s).splitlines() == [
        "lab lab (bgp tor), etcd healthy, kubernetes v1.34.4 (apiserver running, kube-sync running)", "",
        "NODE     RACK   ADDRESS      AGENT    AGENT POD              KUBELET  READY  BGP",
        "r1n1     r1     10.99.1.11   running  calico-lite-node-x7k2p running  no     10.99.1.1 Established",
        "         not ready: bgp: no peer Established",
        "         note: slow", "",
        "POD                      NODE     IP",
        "default/p                r1n1     10.244.0.1"]


# --- labels and ports ------------------------------------------------------------------
def test_labels_parse_and_apply_like_kubectl_label():
    assert parse_label_args(["a=1", "b="]) == {"a": "1", "b": ""}
    assert parse_label_args(["a-", "c=2"], allow_remove=True) == {"a": None, "c": "2"}
    with pytest.raises(LabelError, match="key=value"):
        parse_label_args(["nolabel"])
    with pytest.raises(LabelError, match="key=value"):
        parse_label_args(["a-"])  # removing only where the command allows it
    assert apply_label_changes({"a": "1", "b": "2"}, {"a": None, "c": "3"}) == {"b": "2", "c": "3"}


def test_declared_ports():
    assert parse_ports(["http:tcp:80"]) == [{"name": "http", "protocol": "TCP", "port": 80}]
    with pytest.raises(ValueError, match="name:proto:number"):
        parse_ports(["http:icmp:1"])
