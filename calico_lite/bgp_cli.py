"""`calico-lite bgp ...` and `calico-lite node set|status`: BGP configuration in the datastore.

Kept out of cli.py so the parser there only wires these in. Every agent watches the records
and reconfigures its speaker by itself; nothing here talks to an agent.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

from calico_lite import keys
from calico_lite.bgpconfig import BgpGlobal, BgpPeer


def _ds(args):
    from calico_lite.cli import _ds as ds
    return ds(args)


def _on_off(value: str) -> bool:
    if value not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"{value!r}: expected on or off")
    return value == "on"


# --- bgp config ------------------------------------------------------------------------
def cmd_config_set(args) -> int:
    ds = _ds(args)
    e = ds.get(keys.BGP_CONFIG)
    cur = BgpGlobal.from_dict(e.value) if e else BgpGlobal()
    new = BgpGlobal(
        as_number=args.as_number if args.as_number is not None else cur.as_number,
        mesh=args.mesh if args.mesh is not None else cur.mesh,
        hold_time=args.hold_time if args.hold_time is not None else cur.hold_time,
        graceful_restart=(args.graceful_restart if args.graceful_restart is not None
                          else cur.graceful_restart))
    if not 0 < new.as_number < 2 ** 32:
        raise ValueError(f"--as-number {new.as_number}: out of range")
    if not 3 <= new.hold_time <= 65535:
        raise ValueError(f"--hold-time {new.hold_time}: must be 3..65535 seconds")
    if not 0 <= new.graceful_restart <= 4095:
        raise ValueError(f"--graceful-restart {new.graceful_restart}: must be 0..4095 seconds")
    ds.put(keys.BGP_CONFIG, new.to_dict())
    print(format_config(new.to_dict()))
    return 0


def format_config(d: dict) -> str:
    return (f"AS {d['asNumber']}, node-to-node mesh {'on' if d['nodeToNodeMesh'] else 'off'}, "
            f"hold time {d['holdTime']} s, graceful restart {d['gracefulRestart']} s")


def cmd_config_get(args) -> int:
    e = _ds(args).get(keys.BGP_CONFIG)
    d = e.value if e else None
    if args.json:
        print(json.dumps(d, indent=2))
    else:
        print(format_config(d) if d else "no BGP configuration: agents use their command-line peers")
    return 0


# --- bgp peer --------------------------------------------------------------------------
def cmd_peer_add(args) -> int:
    peer = BgpPeer(name=args.name, peer_ip=args.peer_ip or "", as_number=args.asn or 0,
                   node_selector=args.node_selector, peer_selector=args.peer_selector or "",
                   node=args.node or "", password_secret=args.password_secret or "",
                   hold_time=args.hold_time or 0)
    ds = _ds(args)
    if peer.password_secret and ds.get(keys.bgp_secret(peer.password_secret)) is None:
        print(f"warning: secret {peer.password_secret} does not exist yet "
              f"(calico-lite bgp secret set {peer.password_secret} --password ...)", file=sys.stderr)
    if not args.replace and not ds.create(keys.bgp_peer(peer.name), peer.to_dict()):
        raise ValueError(f"BGP peer {peer.name} already exists (--replace to overwrite)")
    if args.replace:
        ds.put(keys.bgp_peer(peer.name), peer.to_dict())
    print(f"BGP peer {peer.name} added: {describe_peer(peer.to_dict())}")
    return 0


def describe_peer(d: dict) -> str:
    target = (f"{d['peerIP']} AS {d['asNumber']}" if d.get("peerIP")
              else f"nodes matching {d['peerSelector']!r}")
    scope = f"node {d['node']}" if d.get("node") else f"nodes matching {d.get('nodeSelector', 'all()')!r}"
    extra = "".join([f", password from secret {d['passwordSecret']}" if d.get("passwordSecret") else "",
                     f", hold time {d['holdTime']} s" if d.get("holdTime") else ""])
    return f"{target}, for {scope}{extra}"


def cmd_peer_list(args) -> int:
    rows = [e.value for e in _ds(args).list(keys.BGP_PEERS)]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for d in rows:
            print(f"{d['name']:<20} {describe_peer(d)}")
    return 0


def cmd_peer_delete(args) -> int:
    if not _ds(args).delete(keys.bgp_peer(args.name)):
        raise LookupError(f"BGP peer {args.name} does not exist")
    print(f"BGP peer {args.name} deleted")
    return 0


# --- bgp secret ------------------------------------------------------------------------
def cmd_secret_set(args) -> int:
    password = args.password if args.password is not None else sys.stdin.readline().rstrip("\n")
    if not password or any(c in password for c in '"\n;{}\\'):
        raise ValueError("the password must be non-empty and hold none of \" ; { } \\ or a newline")
    _ds(args).put(keys.bgp_secret(args.name), {"password": password})
    print(f"secret {args.name} set")
    return 0


def cmd_secret_delete(args) -> int:
    if not _ds(args).delete(keys.bgp_secret(args.name)):
        raise LookupError(f"secret {args.name} does not exist")
    print(f"secret {args.name} deleted")
    return 0


# --- node set --------------------------------------------------------------------------
def cmd_node_set(args) -> int:
    from calico_lite.lab.lab import apply_label_changes, parse_label_args
    ds = _ds(args)
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
    return 0


# --- node status -----------------------------------------------------------------------
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
    age = now - s.get("updated", now)
    lines = [head, f"  reported {_uptime(s.get('updated', now), now)} ago" if age > 60 else "",
             "  IPv4 BGP status"]
    lines = [x for x in lines if x]
    cols = ("PEER ADDRESS", "PEER AS", "PEER TYPE", "STATE", "SINCE", "RECEIVED", "SENT", "INFO")
    rows = []
    for p in s.get("peers", []):
        up = p["state"] == "Established"
        rows.append((p["address"], str(p["peer_as"]), _peer_type(p.get("description", "")),
                     "up" if up else "down" if p["state"] == "Idle" else "start",
                     _uptime(p.get("since", now), now), str(p.get("received", 0)),
                     str(p.get("sent", 0)), p["state"] if up or not p.get("reason") else
                     f"{p['state']}: {p['reason']}"))
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(cols)]
    sep = "  +" + "+".join("-" * (w + 2) for w in widths) + "+"
    lines += [sep, "  | " + " | ".join(c.ljust(w) for c, w in zip(cols, widths)) + " |", sep]
    lines += ["  | " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |" for r in rows]
    lines.append(sep)
    lines.append(f"  blocks: {', '.join(s.get('blocks', [])) or '-'}")
    lines.append("  routes:")
    for r in s.get("routes", []):
        lines.append(f"    {r['prefix']:<18} via {', '.join(r['via'])} ({r.get('encap', 'none')})")
    for problem in bgp.get("problems", []):
        lines.append(f"  problem: {problem}")
    for n in s.get("notes", []):
        lines.append(f"  note: {n}")
    return "\n".join(lines)


# --- parser ----------------------------------------------------------------------------
def add_bgp_commands(sub, node_sub, datastore_args: Callable[[argparse.ArgumentParser], None]) -> None:
    """Wire `bgp config|peer|secret` under `sub` and `node set` under `node_sub`."""
    bgp = sub.add_parser("bgp", help="BGP configuration: global, peers, secrets").add_subparsers(
        dest="sub", required=True)
    conf = bgp.add_parser("config", help="global BGP settings").add_subparsers(dest="csub", required=True)
    cs = conf.add_parser("set")
    cs.add_argument("--as-number", type=int)
    cs.add_argument("--mesh", type=_on_off, metavar="on|off", help="node-to-node mesh")
    cs.add_argument("--hold-time", type=int)
    cs.add_argument("--graceful-restart", type=int, metavar="SECONDS",
                    help="restart time peers keep our routes for if ExaBGP restarts (0: off)")
    cs.set_defaults(fn=cmd_config_set)
    cg = conf.add_parser("get")
    cg.add_argument("--json", action="store_true")
    cg.set_defaults(fn=cmd_config_get)

    peer = bgp.add_parser("peer", help="BGP peers").add_subparsers(dest="psub", required=True)
    pa = peer.add_parser("add")
    pa.add_argument("name")
    pa.add_argument("--peer-ip")
    pa.add_argument("--as", dest="asn", type=int)
    pa.add_argument("--peer-selector", help="peer with the nodes this selects (e.g. route reflectors)")
    pa.add_argument("--node-selector", default="all()", help="which nodes have this peer")
    pa.add_argument("--node", help="only this node")
    pa.add_argument("--password-secret", help="TCP MD5 password from `bgp secret set NAME`")
    pa.add_argument("--hold-time", type=int)
    pa.add_argument("--replace", action="store_true", help="overwrite a peer of that name")
    pa.set_defaults(fn=cmd_peer_add)
    pl = peer.add_parser("list")
    pl.add_argument("--json", action="store_true")
    pl.set_defaults(fn=cmd_peer_list)
    pd = peer.add_parser("delete")
    pd.add_argument("name")
    pd.set_defaults(fn=cmd_peer_delete)

    sec = bgp.add_parser("secret", help="BGP passwords (TCP MD5)").add_subparsers(dest="ssub", required=True)
    ss = sec.add_parser("set")
    ss.add_argument("name")
    ss.add_argument("--password", help="default: one line from stdin")
    ss.set_defaults(fn=cmd_secret_set)
    sd = sec.add_parser("delete")
    sd.add_argument("name")
    sd.set_defaults(fn=cmd_secret_delete)

    ns = node_sub.add_parser("set", help="a node's BGP settings: AS, router id, labels, RR cluster")
    ns.add_argument("node")
    ns.add_argument("--as", dest="asn", type=int)
    ns.add_argument("--router-id")
    ns.add_argument("--route-reflector-cluster-id", help="make the node a route reflector ('' to stop)")
    ns.add_argument("--label", action="append", default=[], help="k=v to set, k- to remove")
    ns.set_defaults(fn=cmd_node_set)
    for sp in (cs, cg, pa, pl, pd, ss, sd, ns):
        datastore_args(sp)


# --- lab node restart|stop|start -------------------------------------------------------
def cmd_lab_node(args) -> int:
    from calico_lite.lab.lab import Lab
    lab = Lab(args.name)
    if args.nsub == "restart":
        pid = lab.node_restart(args.node)
        print(f"agent of {args.node} restarted (pid {pid}); ExaBGP pid {lab.exabgp_pid(args.node)} kept")
    elif args.nsub == "stop":
        lab.node_stop(args.node, args.how)
        print(f"agent of {args.node} stopped ({args.how})")
    else:
        print(f"agent of {args.node} started (pid {lab.node_start(args.node)})")
    return 0


def add_lab_node_commands(lab_sub) -> None:
    """`lab node restart|stop|start NODE`: agent restarts (graceful restart) and failures."""
    node = lab_sub.add_parser("node", help="restart, stop or start a node's agent").add_subparsers(
        dest="nsub", required=True)
    for verb, help_ in (("restart", "SIGTERM the agent and start it again with the same argv"),
                        ("stop", "stop the agent (and ExaBGP with --how withdraw|kill)"),
                        ("start", "start a stopped agent again")):
        sp = node.add_parser(verb, help=help_)
        sp.add_argument("node")
        sp.add_argument("--name", default="lab", help="which lab (default: lab)")
        if verb == "stop":
            sp.add_argument("--how", choices=["detach", "withdraw", "kill"], default="withdraw",
                            help="detach: leave ExaBGP up; withdraw: stop it too (peers withdraw "
                                 "at once); kill: SIGKILL both (a crashed node)")
        sp.set_defaults(fn=cmd_lab_node)
