"""The project's Datastore, served over stdin/stdout from inside a test's network namespace.

A test process cannot safely move its own gRPC client into another namespace, so it starts
this (nsenter --net=...) and sends one JSON request a line: {"op": ..., ...}; each answer is
one JSON line, {"ok": result} or {"error": message}.
"""
from __future__ import annotations

import json
import sys

from calico_lite.datastore import Datastore
from calico_lite.ipam import DEFAULT_POOL, Ipam, ensure_pool


def handle(ds: Datastore, req: dict):
    op = req["op"]
    if op == "list":
        return [[e.key, e.value, e.mod_revision] for e in ds.list(req["prefix"])]
    if op == "get":
        e = ds.get(req["key"])
        return None if e is None else [e.value, e.mod_revision]
    if op == "put":
        return ds.put(req["key"], req["value"])
    if op == "delete":
        return ds.delete(req["key"])
    if op == "revision":
        return ds.snapshot(req.get("prefix", "/calico-lite/"))[1]
    if op == "assign":
        ensure_pool(ds, DEFAULT_POOL)
        return Ipam(ds, req["node"]).assign(req["handle"], req.get("attrs")).to_dict()
    raise ValueError(f"unknown op {op!r}")


def main() -> None:
    ds = Datastore([sys.argv[1]])
    for line in sys.stdin:
        try:
            out = {"ok": handle(ds, json.loads(line))}
        except Exception as e:  # reported to the test, which fails with it
            out = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
