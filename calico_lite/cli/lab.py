"""`calico-lite lab ...`: a whole cluster in network namespaces on this machine.

Each subcommand is one decorated function below: `@LAB.command("shell", arg(...), help=...)`
adds `lab shell`, with --name (which lab) already given; `@LAB.group(...)` adds a group like
`lab pod`. A command taking `argv` (nargs="*") receives what follows `--` on the command line.
"""
from __future__ import annotations

import json
import subprocess
import sys

from calico_lite.cli.common import Group, arg, split_ref
from calico_lite.cli.table import columns, row

COMMANDS = Group()
LAB = COMMANDS.group("lab", "a whole cluster in network namespaces",
                     args=(arg("--name", default="lab", help="which lab (default: lab)"),))


def _lab(args):
    from calico_lite.lab.lab import Lab
    return Lab(args.name)


def _labels(items: list[str], allow_remove: bool = False) -> dict:
    from calico_lite.labels import parse_label_args
    return parse_label_args(items, allow_remove)


def parse_ports(items: list[str]) -> list[dict]:
    """--port name:proto:number -> declared container ports (for named-port policies)."""
    out = []
    for item in items:
        parts = item.split(":")
        if len(parts) != 3 or parts[1].upper() not in ("TCP", "UDP", "SCTP") or not parts[2].isdigit():
            raise ValueError(f"--port {item!r}: expected name:proto:number, e.g. http:tcp:80")
        out.append({"name": parts[0], "protocol": parts[1].upper(), "port": int(parts[2])})
    return out


# --- the lab as a whole ----------------------------------------------------------------
@LAB.command("up", arg("--racks", type=int, default=2), arg("--nodes-per-rack", type=int, default=2),
             arg("--bgp", choices=["tor", "mesh", "rr"], default="tor",
                 help="rr: mesh off, nodes peer with route-reflector nodes"),
             arg("--encap", choices=["none", "vxlan", "ipip"], default="none",
                 help="the default pool's encapsulation across subnets (mode CrossSubnet)"),
             arg("--insecure-etcd", action="store_true",
                 help="etcd on plain http without client certificates or auth (default: TLS)"),
             arg("--no-kubernetes", action="store_true",
                 help="no control plane: the agents run as plain processes with the DaemonSet's "
                      "argv, pods are made by the plain CNI path (no policies, no kubectl)"),
             arg("--bfd", action="store_true",
                 help="ToRs run BFD (bfdd) with their nodes, 100 ms x 3, and the nodes' ToR "
                      "peers have BFD on (--bgp tor)"),
             help="build and start a lab")
def cmd_lab_up(args) -> int:
    lab = _lab(args)
    lab.up(args.racks, args.nodes_per_rack, args.bgp, log=lambda m: print(m, file=sys.stderr),
           encap=args.encap, etcd_tls=not args.insecure_etcd, kubernetes=not args.no_kubernetes,
           bfd=args.bfd)
    print(format_lab_status(lab.status()))
    return 0


@LAB.command("down", help="remove everything a lab made")
def cmd_lab_down(args) -> int:
    removed = _lab(args).down()
    print(f"lab {args.name} down ({len(removed)} namespaces removed)")
    return 0


def format_lab_status(s: dict) -> str:
    k = s["kubernetes"]
    lines = [f"lab {s['name']} (bgp {s['bgp_mode']}), etcd {s['etcd']}, kubernetes {k['version']} "
             f"(apiserver {k['apiserver']}, kube-sync {k['kube_sync']})", ""]
    widths = (8, 6, 12, 8, 22, 8, 6)
    lines.append(row(("NODE", "RACK", "ADDRESS", "AGENT", "AGENT POD", "KUBELET", "READY", "BGP"), widths))
    for n in s["nodes"]:
        bgp = ", ".join(f"{b['peer']} {b['state']}" for b in n["bgp"]) or "-"
        ready = "yes" if n["ready"] else "no"
        lines.append(row((n["name"], n["rack"], n["address"], n["agent"], n.get("agent_pod") or "-",
                          n["kubelet"], ready, bgp), widths))
        lines += [f"         not ready: {check}: {why}" for check, why in n["unready"].items()]
        lines += [f"         note: {note}" for note in n.get("notes", [])]
    lines.append("")
    lines += columns(("POD", "NODE", "IP"), [(f"{p['namespace']}/{p['name']}", p["node"], p["ip"])
                                              for p in s["pods"]], (24, 8))
    return "\n".join(lines)


@LAB.command("status", arg("--json", action="store_true"), help="nodes (agent, node component, readiness from /readyz), BGP sessions, etcd, Kubernetes, pods")
def cmd_lab_status(args) -> int:
    s = _lab(args).status()
    print(json.dumps(s, indent=2) if args.json else format_lab_status(s))
    return 0


# --- lab ns ----------------------------------------------------------------------------
NS = LAB.group("ns", "Kubernetes namespaces", dest="nsub")


@NS.command("add", arg("namespace"), arg("--label", action="append", default=[]))
def cmd_lab_ns_add(args) -> int:
    _lab(args).ns_add(args.namespace, _labels(args.label))
    print(f"namespace {args.namespace} added")
    return 0


@NS.command("label", arg("namespace"), arg("labels", nargs="+", help="k=v to set, k- to remove"))
def cmd_lab_ns_label(args) -> int:
    labels = _lab(args).ns_label(args.namespace, _labels(args.labels, allow_remove=True))
    print(f"namespace {args.namespace} labels: {json.dumps(labels, sort_keys=True)}")
    return 0


# --- lab pod ---------------------------------------------------------------------------
POD = LAB.group("pod", "pods", dest="psub")


@POD.command("add", arg("pod", help="NAMESPACE/POD"), arg("--node", required=True),
             arg("--label", action="append", default=[]),
             arg("--serve", action="append", default=[], help="tcp:80,udp:80,..."),
             arg("--port", action="append", default=[], help="declared port name:proto:number"))
def cmd_lab_pod_add(args) -> int:
    ns, pod = split_ref(args.pod)
    ip = _lab(args).pod_add(ns, pod, args.node, _labels(args.label), args.serve,
                            parse_ports(args.port))
    print(ip)
    return 0


@POD.command("del", arg("pod"))
def cmd_lab_pod_del(args) -> int:
    ns, pod = split_ref(args.pod)
    _lab(args).pod_del(ns, pod)
    print(f"pod {args.pod} deleted")
    return 0


@POD.command("label", arg("pod"), arg("labels", nargs="+"))
def cmd_lab_pod_label(args) -> int:
    ns, pod = split_ref(args.pod)
    labels = _lab(args).pod_label(ns, pod, _labels(args.labels, allow_remove=True))
    print(f"pod {args.pod} labels: {json.dumps(labels, sort_keys=True)}")
    return 0


# --- in and across pods ----------------------------------------------------------------
@LAB.command("exec", arg("pod"), arg("argv", nargs="*", help="-- COMMAND ..."),
             help="run a command in a pod")
def cmd_lab_exec(args) -> int:
    ns, pod = split_ref(args.pod)
    if not args.argv:
        raise ValueError("lab exec: give a command after --")
    return _lab(args).exec(ns, pod, args.argv)


@LAB.command("kubectl", arg("argv", nargs="*", help="-- KUBECTL ARGS ..."),
             help="kubectl against the lab's API server (output and exit code passed through)")
def cmd_lab_kubectl(args) -> int:
    """kubectl runs inside the lab's control-plane namespace: the machine's own namespace
    never gets a lab address or route."""
    return subprocess.call(_lab(args).kubectl_argv(args.argv))


@LAB.command("shell", help="a shell where plain kubectl talks to the lab")
def cmd_lab_shell(args) -> int:
    return subprocess.call(_lab(args).shell_argv())


@LAB.command("wait", arg("--timeout", type=float, default=30.0),
             arg("--policy", action="store_true",
                 help="also until every node enforces the policies in the datastore"),
             help="wait until every node routes every pod block")
def cmd_lab_wait(args) -> int:
    lab = _lab(args)
    lab.wait_converged(args.timeout)
    print("converged: every node routes every pod block")
    if args.policy:
        took = lab.wait_policy(args.timeout)
        print(f"policy enforced on every node ({took * 1000:.0f} ms)")
    return 0


def format_probe(rows: list[dict]) -> str:
    """A connectivity matrix: rows connect from, columns to (numbered to stay narrow)."""
    pods = sorted({r["from"] for r in rows} | {r["to"] for r in rows})
    ok = {(r["from"], r["to"]): r["connected"] for r in rows}
    w = max([len(p) for p in pods] + [4])
    lines = [" " * w + "  " + " ".join(f"{i:>3}" for i in range(len(pods)))]
    for i, a in enumerate(pods):
        cells = ["  -" if a == b else ("  ." if ok.get((a, b)) else "  X") for b in pods]
        lines.append(f"{a:<{w}}{i:>2} " + " ".join(cells))
    n_ok = sum(ok.values())
    lines.append(f"\n{n_ok}/{len(rows)} connected ('.' connected, 'X' blocked; rows: from, columns: to)")
    return "\n".join(lines)


@LAB.command("probe", arg("--port", type=int, default=80),
             arg("--protocol", choices=["tcp", "udp"], default="tcp"),
             arg("--json", action="store_true"), help="every pod to every other pod")
def cmd_lab_probe(args) -> int:
    rows = _lab(args).probe(args.port, args.protocol)
    print(json.dumps(rows, indent=1) if args.json else format_probe(rows))
    return 0


# --- lab node: agent restarts (graceful restart) and failures --------------------------
NODE = LAB.group("node", "restart, stop or start a node's agent", dest="nsub")


@NODE.command("restart", arg("node"), help="SIGTERM the agent; its node component starts the "
                                            "container again (the new agent adopts ExaBGP)")
def cmd_lab_node_restart(args) -> int:
    lab = _lab(args)
    pid = lab.node_restart(args.node)
    print(f"agent of {args.node} restarted (pid {pid}); ExaBGP pid {lab.exabgp_pid(args.node)} kept")
    return 0


@NODE.command("stop", arg("node"),
              arg("--how", choices=["detach", "withdraw", "kill"], default="withdraw",
                  help="detach: leave ExaBGP up; withdraw: stop it too (peers withdraw "
                       "at once); kill: SIGKILL both (a crashed node)"),
              help="stop the agent (and ExaBGP with --how withdraw|kill) and hold it stopped "
                   "(the node component does not restart it until `lab node start`)")
def cmd_lab_node_stop(args) -> int:
    _lab(args).node_stop(args.node, args.how)
    print(f"agent of {args.node} stopped ({args.how})")
    return 0


@NODE.command("start", arg("node"),
              arg("--component", choices=["agent", "kubelet"], default="agent",
                  help="the calico-lite agent, or the node component (the lab's kubelet)"),
              help="lift the hold on a stopped agent (or start the node component) again")
def cmd_lab_node_start(args) -> int:
    pid = _lab(args).node_start(args.node, args.component)
    print(f"{args.component} of {args.node} started (pid {pid})")
    return 0
