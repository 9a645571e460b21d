"""`calico-lite bgp config|peer|secret|filter`: BGP configuration in the datastore.

Every agent watches these records and reconfigures its speaker by itself; nothing here talks
to an agent.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys

from bgp.filters import BgpFilter, FilterRule
from bgp.bfd import BfdConfig
from bgp.imports import DEFAULT_MAX_PREFIXES
from calico_lite import keys
from calico_lite.bgpconfig import SERVICE_FIELDS, BgpGlobal, BgpPeer
from calico_lite.cli.common import Group, arg, comma_list, datastore
from calico_lite.cli.table import row
from calico_lite.services import parse_cidrs

COMMANDS = Group()
BGP = COMMANDS.group("bgp", "BGP configuration: global, peers, secrets", datastore=True)
CONFIG = BGP.group("config", "global BGP settings", dest="csub")
PEER = BGP.group("peer", "BGP peers", dest="psub")
SECRET = BGP.group("secret", "BGP passwords (TCP MD5)", dest="ssub")
FILTER = BGP.group("filter", "import/export rules for peers (Calico's BGPFilter)", dest="fsub")


def _on_off(value: str) -> bool:
    if value not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"{value!r}: expected on or off")
    return value == "on"


# --- bgp config ------------------------------------------------------------------------
# Service address advertisement (calico_lite.services): BgpGlobal field -> option
SERVICE_FLAGS = {"service_cluster_ips": "--service-cluster-ip",
                 "service_external_ips": "--service-external-ip",
                 "service_loadbalancer_ips": "--service-loadbalancer-ip"}


@CONFIG.command("set", arg("--as-number", type=int),
                arg("--mesh", type=_on_off, metavar="on|off", help="node-to-node mesh"),
                arg("--hold-time", type=int),
                arg("--graceful-restart", type=int, metavar="SECONDS",
                    help="restart time peers keep our routes for if ExaBGP restarts (0: off)"),
                arg("--max-prefixes", type=int, metavar="N",
                    help="prefixes accepted per peer unless its record says; more are ignored"),
                *(arg(flag, dest=f, action="append", metavar="CIDR",
                      help=f"{SERVICE_FIELDS[f]} every node announces: repeatable or a comma "
                           "list; replaces the list ('' clears it)")
                  for f, flag in SERVICE_FLAGS.items()))
def cmd_config_set(args) -> int:
    ds = datastore(args)
    e = ds.get(keys.BGP_CONFIG)
    cur = BgpGlobal.from_dict(e.value) if e else BgpGlobal()
    new = BgpGlobal(
        as_number=args.as_number if args.as_number is not None else cur.as_number,
        mesh=args.mesh if args.mesh is not None else cur.mesh,
        hold_time=args.hold_time if args.hold_time is not None else cur.hold_time,
        graceful_restart=(args.graceful_restart if args.graceful_restart is not None
                          else cur.graceful_restart),
        max_prefixes=args.max_prefixes if args.max_prefixes is not None else cur.max_prefixes,
        **{f: (parse_cidrs(getattr(args, f), flag) if getattr(args, f) is not None
               else getattr(cur, f)) for f, flag in SERVICE_FLAGS.items()})
    if not 0 < new.as_number < 2 ** 32:
        raise ValueError(f"--as-number {new.as_number}: out of range")
    if not 3 <= new.hold_time <= 65535:
        raise ValueError(f"--hold-time {new.hold_time}: must be 3..65535 seconds")
    if not 0 <= new.graceful_restart <= 4095:
        raise ValueError(f"--graceful-restart {new.graceful_restart}: must be 0..4095 seconds")
    if new.max_prefixes < 1:
        raise ValueError(f"--max-prefixes {new.max_prefixes}: must be 1 or more")
    ds.put(keys.BGP_CONFIG, new.to_dict())
    print(format_config(new.to_dict()))
    return 0


def format_config(d: dict) -> str:
    text = (f"AS {d['asNumber']}, node-to-node mesh {'on' if d['nodeToNodeMesh'] else 'off'}, "
            f"hold time {d['holdTime']} s, graceful restart {d['gracefulRestart']} s, "
            f"max prefixes per peer {d.get('maxPrefixes', DEFAULT_MAX_PREFIXES)}")
    services = [f"\n{k}: {', '.join(d[k])}" for k in SERVICE_FIELDS.values() if d.get(k)]
    return text + "".join(services)


@CONFIG.command("show", arg("--json", action="store_true"))
def cmd_config_show(args) -> int:
    return cmd_config_get(args)


@CONFIG.command("get", arg("--json", action="store_true"))
def cmd_config_get(args) -> int:
    e = datastore(args).get(keys.BGP_CONFIG)
    d = e.value if e else None
    if args.json:
        print(json.dumps(d, indent=2))
    else:
        print(format_config(d) if d else "no BGP configuration: agents use their command-line peers")
    return 0


# --- bgp peer --------------------------------------------------------------------------
EXPORT_ARGS = (
    arg("--community", action="append", metavar="A:B",
        help="BGP community on everything announced to this peer: repeatable or a comma "
             "list ('' clears)"),
    arg("--large-community", action="append", metavar="A:B:C",
        help="BGP large community, as --community"),
    arg("--filter", action="append", metavar="NAME[,NAME]",
        help="BGP filters (`bgp filter add`) for this peer, in order ('' clears)"))

BFD_ARGS = (arg("--bfd-interval", type=int, metavar="MS",
                help=f"BFD TX and RX interval (default {BfdConfig.interval_ms} ms)"),
            arg("--bfd-multiplier", type=int, metavar="N",
                help=f"BFD detect multiplier (default {BfdConfig.multiplier})"))


def _bfd(on: bool, args, cur: BfdConfig | None) -> BfdConfig | None:
    """The peer's BFD settings from --bfd/--bfd-interval/--bfd-multiplier over `cur`."""
    if not on:
        return None
    base = cur or BfdConfig()
    return BfdConfig(interval_ms=args.bfd_interval or base.interval_ms,
                     multiplier=args.bfd_multiplier or base.multiplier)


@PEER.command("add", arg("name"), arg("--peer-ip"), arg("--as", dest="asn", type=int),
              arg("--peer-selector", help="peer with the nodes this selects (e.g. route reflectors)"),
              arg("--node-selector", default="all()", help="which nodes have this peer"),
              arg("--node", help="only this node"),
              arg("--password-secret", help="TCP MD5 password from `bgp secret set NAME`"),
              arg("--hold-time", type=int),
              arg("--max-prefixes", type=int, metavar="N",
                  help="prefixes accepted from this peer (default: the global setting)"),
              *EXPORT_ARGS,
              arg("--bfd", action="store_true",
                  help="BFD with this peer: a silent peer is torn down in interval x multiplier"),
              *BFD_ARGS,
              arg("--replace", action="store_true", help="overwrite a peer of that name"))
def cmd_peer_add(args) -> int:
    peer = BgpPeer(name=args.name, peer_ip=args.peer_ip or "", as_number=args.asn or 0,
                   node_selector=args.node_selector, peer_selector=args.peer_selector or "",
                   node=args.node or "", password_secret=args.password_secret or "",
                   hold_time=args.hold_time or 0, max_prefixes=args.max_prefixes or 0,
                   bfd=_bfd(args.bfd, args, None), **_export_options(args, None))
    ds = datastore(args)
    _check_filters(ds, peer)
    if peer.password_secret and ds.get(keys.bgp_secret(peer.password_secret)) is None:
        print(f"warning: secret {peer.password_secret} does not exist yet "
              f"(calico-lite bgp secret set {peer.password_secret} --password ...)", file=sys.stderr)
    if not args.replace and not ds.create(keys.bgp_peer(peer.name), peer.to_dict()):
        raise ValueError(f"BGP peer {peer.name} already exists (--replace to overwrite)")
    if args.replace:
        ds.put(keys.bgp_peer(peer.name), peer.to_dict())
    print(f"BGP peer {peer.name} added: {describe_peer(peer.to_dict())}")
    return 0


def _export_options(args, cur: BgpPeer | None) -> dict:
    """--community, --large-community, --filter as BgpPeer fields (cur's where not given)."""
    out = {}
    for field_name, opt in (("communities", "community"), ("large_communities", "large_community"),
                            ("filters", "filter")):
        values = comma_list(getattr(args, opt))
        out[field_name] = (tuple(values) if values is not None
                           else getattr(cur, field_name) if cur else ())
    return out


def _check_filters(ds, peer: BgpPeer) -> None:
    missing = [f for f in peer.filters if ds.get(keys.bgp_filter(f)) is None]
    if missing:
        raise LookupError(f"BGP filter {', '.join(missing)} does not exist "
                          "(calico-lite bgp filter add NAME ...)")


@PEER.command("set", arg("peer", help="the peer's name or its peer IP"), *EXPORT_ARGS,
              arg("--bfd", type=_on_off, metavar="on|off", help="BFD with this peer"), *BFD_ARGS,
              help="change a peer's communities, filters and BFD; every node applies it live "
                   "(BGP is not re-established)")
def cmd_peer_set(args) -> int:
    ds = datastore(args)
    entry = ds.get(keys.bgp_peer(args.peer)) or next(
        (e for e in ds.list(keys.BGP_PEERS) if e.value.get("peerIP") == args.peer), None)
    if entry is None:
        raise LookupError(f"BGP peer {args.peer} does not exist (a name or a peer IP)")
    cur = BgpPeer.from_dict(entry.value)
    bfd_on = args.bfd if args.bfd is not None else (
        cur.bfd is not None or bool(args.bfd_interval or args.bfd_multiplier))
    peer = dataclasses.replace(cur, bfd=_bfd(bfd_on, args, cur.bfd), **_export_options(args, cur))
    _check_filters(ds, peer)
    record = {**entry.value, **peer.to_dict()}
    if peer.bfd is None:
        record.pop("bfd", None)
    ds.put(entry.key, record)
    print(f"BGP peer {peer.name}: {describe_peer(peer.to_dict())}")
    return 0


def describe_peer(d: dict) -> str:
    target = (f"{d['peerIP']} AS {d['asNumber']}" if d.get("peerIP")
              else f"nodes matching {d['peerSelector']!r}")
    scope = f"node {d['node']}" if d.get("node") else f"nodes matching {d.get('nodeSelector', 'all()')!r}"
    extra = "".join([f", password from secret {d['passwordSecret']}" if d.get("passwordSecret") else "",
                     f", hold time {d['holdTime']} s" if d.get("holdTime") else "",
                     f", max {d['maxPrefixes']} prefixes" if d.get("maxPrefixes") else "",
                     *(f", {k} {','.join(d[k])}" for k in ("communities", "largeCommunities",
                                                           "filters") if d.get(k)),
                     f", BFD {d['bfd']['intervalMs']} ms x {d['bfd']['multiplier']}"
                     if d.get("bfd") else ""])
    return f"{target}, for {scope}{extra}"


@PEER.command("list", arg("--json", action="store_true"))
def cmd_peer_list(args) -> int:
    rows = [e.value for e in datastore(args).list(keys.BGP_PEERS)]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for d in rows:
            print(row((d["name"], describe_peer(d)), (20,)))
    return 0


@PEER.command("delete", arg("name"))
def cmd_peer_delete(args) -> int:
    if not datastore(args).delete(keys.bgp_peer(args.name)):
        raise LookupError(f"BGP peer {args.name} does not exist")
    print(f"BGP peer {args.name} deleted")
    return 0


# --- bgp secret ------------------------------------------------------------------------
@SECRET.command("set", arg("name"), arg("--password", help="default: one line from stdin"))
def cmd_secret_set(args) -> int:
    password = args.password if args.password is not None else sys.stdin.readline().rstrip("\n")
    if not password or any(c in password for c in '"\n;{}\\'):
        raise ValueError("the password must be non-empty and hold none of \" ; { } \\ or a newline")
    datastore(args).put(keys.bgp_secret(args.name), {"password": password})
    print(f"secret {args.name} set")
    return 0


@SECRET.command("delete", arg("name"))
def cmd_secret_delete(args) -> int:
    if not datastore(args).delete(keys.bgp_secret(args.name)):
        raise LookupError(f"secret {args.name} does not exist")
    print(f"secret {args.name} deleted")
    return 0


# --- bgp filter --------------------------------------------------------------------------
def _length_range(value: str) -> tuple[int, int]:
    lo, _, hi = value.partition("-")
    try:
        return int(lo), int(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected MIN-MAX, e.g. 24-32") from None


@FILTER.command("add", arg("name"),
                arg("--import", dest="to_import", action="store_true", help="an importV4 rule"),
                arg("--export", dest="to_export", action="store_true", help="an exportV4 rule"),
                arg("--cidr", required=True),
                arg("--match-operator", default="In", choices=["Equal", "NotEqual", "In", "NotIn"]),
                arg("--prefix-length", type=_length_range, metavar="MIN-MAX",
                    help="prefix lengths an In/NotIn rule matches (default: the CIDR's..32)"),
                arg("--action", required=True, type=str.lower, choices=["accept", "reject"]),
                help="append a rule to filter NAME (created if new); the first rule that "
                     "matches decides, a prefix no rule matches is accepted")
def cmd_filter_add(args) -> int:
    if args.to_import == args.to_export:
        raise ValueError("give one of --import or --export")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", args.name):
        raise ValueError(f"filter name {args.name!r}: letters, digits, '.', '_' and '-' only")
    direction = "import" if args.to_import else "export"
    rule = FilterRule(cidr=args.cidr, match_operator=args.match_operator,
                      action=args.action.capitalize(), prefix_length=args.prefix_length)
    ds = datastore(args)
    e = ds.get(keys.bgp_filter(args.name))
    cur = BgpFilter.from_dict(e.value) if e else BgpFilter(args.name)
    field_name = "import_v4" if direction == "import" else "export_v4"
    new = dataclasses.replace(cur, **{field_name: getattr(cur, field_name) + (rule,)})
    ds.put(keys.bgp_filter(args.name), new.to_dict())
    print(f"BGP filter {args.name}: {direction} rule {len(new.rules(direction))} "
          f"{rule.describe()}")
    return 0


def format_filter(d: dict) -> str:
    f = BgpFilter.from_dict(d)
    lines = [f"filter {f.name}"]
    for direction in ("import", "export"):
        lines += [f"  {direction} {i}: {r.describe()}" for i, r in enumerate(f.rules(direction), 1)]
    return "\n".join(lines)


@FILTER.command("list", arg("--json", action="store_true"))
def cmd_filter_list(args) -> int:
    rows = [e.value for e in datastore(args).list(keys.BGP_FILTERS)]
    print(json.dumps(rows, indent=2) if args.json else "\n".join(map(format_filter, rows)))
    return 0


@FILTER.command("show", arg("name"), arg("--json", action="store_true"))
def cmd_filter_show(args) -> int:
    e = datastore(args).get(keys.bgp_filter(args.name))
    if e is None:
        raise LookupError(f"BGP filter {args.name} does not exist")
    print(json.dumps(e.value, indent=2) if args.json else format_filter(e.value))
    return 0


@FILTER.command("delete", arg("name"))
def cmd_filter_delete(args) -> int:
    ds = datastore(args)
    users = [e.value["name"] for e in ds.list(keys.BGP_PEERS)
             if args.name in (e.value.get("filters") or ())]
    if users:
        raise ValueError(f"BGP filter {args.name} is used by peer {', '.join(users)} "
                         "(bgp peer set PEER --filter ...)")
    if not ds.delete(keys.bgp_filter(args.name)):
        raise LookupError(f"BGP filter {args.name} does not exist")
    print(f"BGP filter {args.name} deleted")
    return 0
