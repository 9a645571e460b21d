"""`calico-lite node run|status|set`: the node agent, what it reports, a node's BGP settings.

Every agent watches the records `node set` writes and reconfigures its speaker by itself;
nothing here talks to an agent.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from calico_lite import keys
from calico_lite.cli.common import (ETCD_OPTIONS, Group, arg, datastore, etcd_endpoints, etcd_tls,
                                    log_to_stderr, print_result)
from calico_lite.cli.table import boxed

COMMANDS = Group()
NODE = COMMANDS.group("node", "the node agent")


# --- node run --------------------------------------------------------------------------
@NODE.command(
    "run",
    arg("--name", required=True),
    # also global options (`calico-lite --etcd-endpoints URL node run`): no parser default
    *ETCD_OPTIONS,
    arg("--cni-socket", default="/var/run/calico-lite/cni.sock"),
    arg("--run-dir", default="/var/run/calico-lite"),
    arg("--address", required=True, help="the node's address on its subnet"),
    arg("--subnet", help="the node's subnet, e.g. 10.99.1.0/24 (default: the prefix "
                         "of the interface holding --address)"),
    arg("--as", dest="asn", type=int, default=64512),
    arg("--router-id"),
    arg("--peer", action="append", default=[], help="BGP peer ADDRESS:AS (repeat)"),
    arg("--bgp-listen", action="store_true", help="accept BGP sessions (mesh)"),
    arg("--hold-time", type=int, default=9),
    arg("--on-exit", choices=["detach", "stop"], default="detach",
        help="on SIGTERM: leave ExaBGP, routes and rules for the next agent (detach, "
             "graceful restart) or stop ExaBGP so peers withdraw at once (stop)"),
    arg("--rack", default=""),
    arg("--label", action="append", default=[]),
    arg("--block-release-grace", type=float, default=300.0,
        help="seconds a block stays empty before the node gives it back"),
    arg("--health-listen", default="127.0.0.1:9099", metavar="HOST:PORT|off",
        help="node-local address of /healthz, /readyz and /metrics ('off': none)"),
    arg("--liveness-timeout", type=float, default=90.0, metavar="SECONDS",
        help="/healthz fails when a loop has not gone round for this long"),
    arg("--policy-resync", type=float, default=30.0, metavar="SECONDS",
        help="seconds between full policy syncs; each also restores our nftables table "
             "if another tool flushed or changed it"),
    help="run the node agent (one per node)")
def cmd_node_run(args) -> int:
    from calico_lite.agent import AgentConfig, NodeAgent
    from calico_lite.routing import BgpSettings
    log_to_stderr()
    peers = []
    for item in args.peer:
        addr, _, asn = item.rpartition(":")
        if not addr or not asn.isdigit():
            raise ValueError(f"--peer {item!r}: expected ADDRESS:AS")
        peers.append((addr, int(asn)))
    labels = dict(item.split("=", 1) for item in args.label)
    subnet = args.subnet or detect_subnet(args.address)
    cfg = AgentConfig(
        node=args.name, etcd_endpoints=etcd_endpoints(args), etcd_tls=etcd_tls(args),
        cni_socket=Path(args.cni_socket), run_dir=Path(args.run_dir), address=args.address,
        subnet=subnet, rack=args.rack, labels=labels,
        block_release_grace=args.block_release_grace,
        health_listen=args.health_listen, liveness_timeout=args.liveness_timeout,
        policy_resync=args.policy_resync,
        bgp=BgpSettings(router_id=args.router_id or args.address, local_address=args.address,
                        local_as=args.asn, subnet=subnet, peers=tuple(peers),
                        listen=args.bgp_listen, hold_time=args.hold_time,
                        on_exit=args.on_exit))
    NodeAgent(cfg).run_forever()
    return 0


def detect_subnet(address: str) -> str:
    """The prefix of the interface holding `address`: a node's subnet is where it sits."""
    import ipaddress
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        for a in ipr.get_addr(family=2):
            if a.get_attr("IFA_ADDRESS") == address:
                return str(ipaddress.ip_network(f"{address}/{a['prefixlen']}", strict=False))
    raise ValueError(f"--address {address} is not configured on any interface here; "
                     "give --subnet, or the node's own address")


# --- node status -----------------------------------------------------------------------
@NODE.command("status", arg("node", nargs="?"), arg("--json", action="store_true"),
              help="BGP peers, blocks and routes of nodes", datastore=True)
def cmd_node_status(args) -> int:
    ds = datastore(args)
    rows = [e.value for e in ds.list(keys.STATUS)
            if not args.node or e.value.get("node") == args.node]
    policy = {e.value.get("node"): e.value for e in ds.list(keys.POLICY_STATUS)}
    for r in rows:  # NAT outgoing and host protection are the policy controller's: as applied
        p = policy.get(r.get("node"), {})
        for field in ("nat", "hostProtection"):
            if p.get(field) is not None:
                r[field] = p[field]
        r["policyProblems"] = policy_problems(p)
    if args.node and not rows:
        raise LookupError(f"no status for node {args.node}: is its agent running?")
    print_result(rows, args.json, "\n\n".join(format_node_status(r) for r in rows))
    return 0


def _uptime(since: float, now: float) -> str:
    s = max(0, int(now - since))
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else (
        f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")


def _peer_type(description: str) -> str:
    if description.startswith("node-to-node mesh"):
        return "node-to-node mesh"
    if description.startswith("peer "):
        return "node specific" if "(" in description else "global"
    return description or "command line"


def _peer_row(p: dict, now: float) -> tuple[str, ...]:
    up = p["state"] == "Established"
    return (p["address"], str(p["peer_as"]), _peer_type(p.get("description", "")),
            "up" if up else "down" if p["state"] == "Idle" else "start",
            _uptime(p.get("since", now), now), str(p.get("received", 0)), str(p.get("sent", 0)),
            p["state"] if up or not p.get("reason") else f"{p['state']}: {p['reason']}")


def _bfd_row(b: dict, now: float) -> tuple[str, ...]:
    """One BFD session (bgp.bfd.SessionStatus as a dict)."""
    return (b["peer"], b["state"], _uptime(b.get("since") or now, now), str(b["local_discr"]),
            str(b["remote_discr"]), f"{b['tx_ms']:g} ms", f"{b['rx_ms']:g} ms",
            f"{b['multiplier']}/{b['remote_multiplier']}", str(b["flaps"]),
            f"bfd: {b['last_down']}" if b.get("last_down") else "-")


def format_node_status(s: dict, now: float | None = None) -> str:
    """Like `calicoctl node status` (peer table), plus the node's blocks and routes."""
    now = time.time() if now is None else now
    bgp = s.get("bgp", {})
    head = f"node {s['node']}"
    if bgp:
        head += (f"  AS {bgp.get('asNumber')}  router id {bgp.get('routerId')}"
                 + (f"  route reflector (cluster {bgp['routeReflectorClusterId']})"
                    if bgp.get("routeReflectorClusterId") else "")
                 + (f"  exabgp pid {bgp['exabgpPid']}" if bgp.get("exabgpPid") else "  exabgp NOT running"))
    lines = [head]
    if now - s.get("updated", now) > 60:
        lines.append(f"  reported {_uptime(s.get('updated', now), now)} ago")
    lines.append("  IPv4 BGP status")
    lines += boxed(("PEER ADDRESS", "PEER AS", "PEER TYPE", "STATE", "SINCE", "RECEIVED",
                   "SENT", "INFO"), [_peer_row(p, now) for p in s.get("peers", [])], "  ")
    if s.get("bfd"):
        lines.append("  BFD sessions")
        lines += boxed(("PEER ADDRESS", "STATE", "SINCE", "LOCAL DISCR", "REMOTE DISCR", "TX",
                        "RX", "MULT", "FLAPS", "LAST DOWN"),
                       [_bfd_row(b, now) for b in s["bfd"]], "  ")
    lines.append(f"  blocks: {', '.join(s.get('blocks', [])) or '-'}")
    lines.append("  routes:")
    for r in s.get("routes", []):
        lines.append(f"    {r['prefix']:<18} via {', '.join(r['via'])} ({r.get('encap', 'none')})")
    if s.get("services"):
        lines.append("  advertised service prefixes:")
        lines += [f"    {a['prefix']:<18} {a['reason']}" for a in s["services"]]
    if "nat" in s:
        lines.append(f"  NAT outgoing: {format_nat(s['nat'])}")
    if "hostProtection" in s:
        lines.append(f"  workload to host: {format_host_protection(s['hostProtection'])}")
    filtered = s.get("filtered", [])
    if filtered:
        total = s.get("filteredTotal", len(filtered))
        lines.append(f"  filtered by the import policy: {total}"
                     + (f" (first {len(filtered)} shown)" if total > len(filtered) else ""))
        lines += [f"    {f['prefix']:<18} via {f['via']} from {f['peer']}: {f['reason']}"
                  for f in filtered]
    lines += format_exports(s)
    lines += [f"  problem: {problem}" for problem in bgp.get("problems", []) + s.get("policyProblems", [])]
    lines += [f"  note: {n}" for n in s.get("notes", [])]
    return "\n".join(lines)


def format_exports(s: dict) -> list[str]:
    """Communities and filters per peer and pool, and what export filters kept back."""
    lines = []
    for p in s.get("poolCommunities", []):
        lines.append(f"  pool {p['cidr']} communities: "
                     + " ".join(p["communities"] + p["largeCommunities"]))
    for e in s.get("exports", []):
        extra = [" ".join(e["communities"] + e["largeCommunities"]),
                 f"filters {', '.join(e['filters'])}" if e["filters"] else ""]
        if any(extra):
            lines.append(f"  to {e['peer']}: {e['announced']} prefixes"
                         + "".join(f", {x}" if x.startswith("filters") else f", communities {x}"
                                   for x in extra if x))
    rows = s.get("exportFiltered", [])
    if rows:
        total = s.get("exportFilteredTotal", len(rows))
        lines.append(f"  not announced (export filters): {total}")
        lines += [f"    {r['prefix']:<18} to {r['peer']}: {r['reason']}" for r in rows]
    return lines


def policy_problems(status: dict) -> list[str]:
    """What the node's last policy sync could not do, from its policy status record."""
    out = []
    if status.get("error"):
        out.append(f"policy not applied, previous rules stay: {status['error']}")
    if status.get("update_refused"):
        out.append("policy: the kernel refused the incremental update, the whole table was loaded "
                   f"instead: {status['update_refused']}")
    return out


def format_nat(nat: dict) -> str:
    """Which pools masquerade, as applied on the node (policy.nat.NatState.summary)."""
    masq = nat.get("masquerade", [])
    if not masq:
        return "off (no pool has natOutgoing)"
    return (", ".join(f"{m['pool']} {m['cidr']}" for m in masq)
            + " masquerade to destinations outside the pools and node subnets")


def format_host_protection(h: dict) -> str:
    """The node's host endpoint protection as applied (policy.hostprotect.HostProtection.summary)."""
    allow = ", ".join(h.get("allow", [])) or "nothing"
    text = ("accept (protection off)" if h.get("action") == "accept" else
            f"drop except {allow}; replies to the node's own connections pass")
    text += " (default)" if h.get("default") else " (set with `node set`)"
    return text + (f"; problem: {h['problem']}" if h.get("problem") else "")


# --- node set --------------------------------------------------------------------------
@NODE.command("set", arg("node"), arg("--as", dest="asn", type=int), arg("--router-id"),
              arg("--route-reflector-cluster-id", help="make the node a route reflector ('' to stop)"),
              arg("--label", action="append", default=[], help="k=v to set, k- to remove"),
              arg("--workload-to-host-allow", metavar="PROTO:PORT[-PORT],...|default",
                  help="what pods may open on this node (e.g. tcp:53,udp:53); '' for nothing, "
                       "'default' for udp:53,tcp:53,udp:67"),
              arg("--workload-to-host-action", choices=["drop", "accept", "default"],
                  help="pod traffic to this node outside the allow list: drop (the default) or "
                       "accept (host endpoint protection off)"),
              help="a node's settings: BGP (AS, router id, labels, RR cluster) and host "
                   "endpoint protection", datastore=True)
def cmd_node_set(args) -> int:
    ds = datastore(args)
    bgp_change = (args.asn is not None or args.router_id is not None
                  or args.route_reflector_cluster_id is not None or args.label)
    host_change = args.workload_to_host_allow is not None or args.workload_to_host_action is not None
    if host_change:
        config = _set_host_protection(ds, args)
        print(f"node {args.node}: {json.dumps(config, sort_keys=True)}")
    if bgp_change or not host_change:
        _set_bgp(ds, args)
    return 0


def _set_host_protection(ds, args) -> dict:
    """keys.node_config: checked here (a bad entry is refused, nothing written); every
    agent applies it at once (no restart)."""
    from policy.hostprotect import parse_allow, protection_from
    e = ds.get(keys.node_config(args.node))
    d = dict(e.value) if e and isinstance(e.value, dict) else {}
    if args.workload_to_host_allow == "default":
        d.pop("workloadToHostAllow", None)
    elif args.workload_to_host_allow is not None:
        d["workloadToHostAllow"] = [str(p) for p in parse_allow(args.workload_to_host_allow)]
    if args.workload_to_host_action == "default":
        d.pop("workloadToHostAction", None)
    elif args.workload_to_host_action is not None:
        d["workloadToHostAction"] = args.workload_to_host_action
    protection_from(d)   # raises on anything the agent could not read
    ds.put(keys.node_config(args.node), d)
    return d


def _set_bgp(ds, args) -> None:
    from calico_lite.labels import apply_label_changes, parse_label_args
    e = ds.get(keys.bgp_node(args.node))
    d = dict(e.value) if e else {"name": args.node}
    if args.asn is not None:
        d["asNumber"] = args.asn
    if args.router_id is not None:
        d["routerId"] = args.router_id
    if args.route_reflector_cluster_id is not None:
        d["routeReflectorClusterId"] = args.route_reflector_cluster_id
    if args.label:
        d["labels"] = apply_label_changes(d.get("labels", {}),
                                          parse_label_args(args.label, allow_remove=True))
    ds.put(keys.bgp_node(args.node), d)
    print(f"node {args.node}: {json.dumps({k: v for k, v in d.items() if k != 'name'}, sort_keys=True)}")


# --- node cleanup ----------------------------------------------------------------------
@NODE.command(
    "cleanup",
    arg("--run-dir", default="/var/run/calico-lite"),
    arg("--cni-bin-dir", default="/opt/cni/bin"),
    arg("--cni-conf-dir", default="/etc/cni/net.d"),
    arg("--check", action="store_true", help="remove nothing: list what is left (exit 1 if any)"),
    arg("--then-wait", action="store_true",
        help="after a clean result, wait until SIGTERM (deploy/cleanup/'s DaemonSet: a pod is "
             "Ready only on a node found clean)"),
    help="remove what calico-lite leaves on a node after `kubectl delete -f deploy/`")
def cmd_node_cleanup(args) -> int:
    import signal
    from calico_lite.cleanup import NodeFiles, cleanup, leftovers
    files = NodeFiles(Path(args.run_dir), Path(args.cni_bin_dir), Path(args.cni_conf_dir))
    if not args.check:
        for line in cleanup(files):
            print(line, flush=True)
    left = leftovers(files)
    for line in left:
        print(f"left: {line}", flush=True)
    if left:
        return 1
    print("node clean", flush=True)
    if args.then_wait:
        stop = {signal.SIGTERM, signal.SIGINT}
        signal.pthread_sigmask(signal.SIG_BLOCK, stop)
        signal.sigwait(stop)
    return 0
