"""`calico-lite pool ...` and `calico-lite ipam ...`: IP pools, blocks and leaked addresses."""
from __future__ import annotations

import argparse

from calico_lite import keys
from calico_lite.cli.common import Group, arg, comma_list, datastore, print_result
from calico_lite.cli.table import columns, row

COMMANDS = Group()
POOL = COMMANDS.group("pool", "IP pools", datastore=True)
IPAM = COMMANDS.group("ipam", "address management", datastore=True)
_GRACE = arg("--grace", type=float, default=60.0,
             help="ignore handles younger than this many seconds (ADDs in flight)")


# --- pools -----------------------------------------------------------------------------
@POOL.command("add", arg("name"), arg("--cidr", required=True),
              arg("--block-size", type=int, default=26),
              arg("--encapsulation", choices=["none", "ipip", "vxlan"], default="none"),
              arg("--encap-mode", choices=["Never", "Always", "CrossSubnet"]),
              arg("--nat-outgoing", action="store_true"), arg("--disabled", action="store_true"))
def cmd_pool_add(args) -> int:
    from calico_lite.blocks import Pool
    mode = args.encap_mode or ("Never" if args.encapsulation == "none" else "Always")
    pool = Pool(name=args.name, cidr=args.cidr, block_size=args.block_size,
                encapsulation=args.encapsulation, encap_mode=mode,
                nat_outgoing=args.nat_outgoing, disabled=args.disabled)
    if not datastore(args).create(keys.pool(pool.name), pool.to_dict()):
        raise ValueError(f"pool {pool.name} already exists")
    print(f"pool {pool.name} {pool.cidr} added")
    return 0


@POOL.command("set", arg("name"),
              arg("--nat-outgoing", action=argparse.BooleanOptionalAction,
                  help="masquerade the pool's pods to destinations outside the pools and nodes"),
              arg("--disabled", action=argparse.BooleanOptionalAction,
                  help="assign no more addresses from the pool (its pods keep theirs)"),
              arg("--community", action="append", metavar="A:B",
                  help="BGP community on the pool's blocks and borrowed /32s: repeatable or a "
                       "comma list; replaces the list ('' clears it)"),
              arg("--large-community", action="append", metavar="A:B:C",
                  help="BGP large community, as --community"),
              help="change a pool's flags, as `calicoctl patch ippool` does; every node "
                   "picks the change up by itself")
def cmd_pool_set(args) -> int:
    from calico_lite.blocks import Pool
    from calico_lite.datastore import Op
    ds = datastore(args)
    for _ in range(10):  # compare-and-swap: a concurrent `pool set` is not lost
        e = ds.get(keys.pool(args.name))
        if e is None:
            raise LookupError(f"pool {args.name} does not exist")
        d = dict(e.value)
        if args.nat_outgoing is not None:
            d["natOutgoing"] = args.nat_outgoing
        if args.disabled is not None:
            d["disabled"] = args.disabled
        for key, values in (("communities", comma_list(args.community)),
                            ("largeCommunities", comma_list(args.large_community))):
            if values is not None:
                d[key] = values
        pool = Pool.from_dict(d)
        if ds.txn([Op.unchanged(e.key, e.mod_revision)], [Op.put(e.key, pool.to_dict())]):
            print(f"pool {pool.name} {pool.cidr}: natOutgoing {str(pool.nat_outgoing).lower()}, "
                  f"disabled {str(pool.disabled).lower()}"
                  + "".join(f", {k} {' '.join(pool.to_dict()[k])}"
                            for k in ("communities", "largeCommunities") if k in pool.to_dict()))
            return 0
    raise RuntimeError(f"pool {args.name}: changed concurrently too often; try again")


def _pool_row(p: dict) -> tuple[str, ...]:
    return (p["name"], p["cidr"], f"/{p['blockSize']}",
            f"{p['encapsulation']}/{p['encapMode']}{' nat-outgoing' if p['natOutgoing'] else ''}"
            f"{' disabled' if p['disabled'] else ''}"
            + "".join(f" {k} {','.join(p[k])}" for k in ("communities", "largeCommunities")
                      if p.get(k)))


@POOL.command("list", arg("--json", action="store_true"))
def cmd_pool_list(args) -> int:
    from calico_lite.ipam import list_pools
    pools = [p.to_dict() for p in list_pools(datastore(args))]
    rows = [_pool_row(p) for p in pools]
    print_result(pools, args.json, "\n".join(columns(None, rows, (24, 18))))
    return 0


@POOL.command("delete", arg("name"))
def cmd_pool_delete(args) -> int:
    if not datastore(args).delete(keys.pool(args.name)):
        raise LookupError(f"pool {args.name} does not exist")
    print(f"pool {args.name} deleted")
    return 0


# --- ipam ------------------------------------------------------------------------------
@IPAM.command("show", arg("--json", action="store_true"))
def cmd_ipam_show(args) -> int:
    from calico_lite.blocks import Block
    from calico_lite.ipam import list_pools
    ds = datastore(args)
    blocks = [Block.from_dict(e.value) for e in ds.list(keys.BLOCKS)]
    out = {"pools": [p.to_dict() for p in list_pools(ds)],
           "blocks": [{"cidr": b.cidr, "node": b.affinity, "used": len(b.allocations),
                       "size": b.size} for b in blocks]}
    text = "\n".join([f"pool {p['name']} {p['cidr']}" for p in out["pools"]] +
                     [f"block {b['cidr']:<18} node {b['node'] or '-':<10} {b['used']}/{b['size']} used"
                      for b in out["blocks"]])
    print_result(out, args.json, text)
    return 0


@IPAM.command("release", arg("ip"))
def cmd_ipam_release(args) -> int:
    from calico_lite.ipam import Ipam
    a = Ipam(datastore(args), node="").release_ip(args.ip)
    if a is None:
        raise LookupError(f"{args.ip} is not assigned")
    print(f"released {a.ip} (handle {a.handle})")
    return 0


@IPAM.command("check", arg("--json", action="store_true"), _GRACE,
              help="report leaked addresses and conflicts (exit 3 if any)")
def cmd_ipam_check(args) -> int:
    from dataclasses import asdict
    from calico_lite.ipam_check import load_and_check
    r = load_and_check(datastore(args), args.grace)
    out = {"handles": r.handles, "in_use": r.in_use, "findings": [asdict(f) for f in r.findings]}
    text = "\n".join([f"{r.handles} handles, {r.in_use} in use by existing pods"] +
                     [row((f.kind, f.ip, f"{f.handle}: {f.detail}"), (18, 15)) for f in r.findings] +
                     ["ok: nothing leaked, no conflicts" if r.ok else
                      f"{len(r.findings)} problem(s); `calico-lite ipam gc` releases leaks"])
    print_result(out, args.json, text)
    return 0 if r.ok else 3


@IPAM.command("gc", _GRACE, help="release what `ipam check` reports as leaked")
def cmd_ipam_gc(args) -> int:
    from calico_lite.ipam_check import gc
    done = gc(datastore(args), args.grace)
    for f in done:
        print(f"released {f.ip} ({f.kind}, handle {f.handle})")
    print(f"{len(done)} released")
    return 0
