"""A test namespace with one worker thread inside it that owns a RulesetApplier (libnftables
binds to the namespace it is created in, so every call must run on that thread)."""
from __future__ import annotations

import json
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

from plugin.netns import enter
from policy.applier import RulesetApplier
from tests.nslib import remove_netns_with_prefix, sh, unique_prefix


class NftNode:
    def __init__(self, netns: str):
        self.netns = netns
        self.worker = ThreadPoolExecutor(1, initializer=enter, initargs=(f"/var/run/netns/{netns}",))
        self.applier: RulesetApplier = self.call(RulesetApplier)

    def call(self, fn, *args):
        return self.worker.submit(fn, *args).result()


class Node(NftNode):
    def table(self) -> dict:
        return normalized(sh("nft", "-j", "list", "table", "inet", "calico-lite", netns=self.netns).stdout)


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k != "handle"}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def normalized(listing: str) -> dict:
    """The table as comparable data: no handles, objects by name, elements sorted, rules in order."""
    out: dict = {"table": None, "set": {}, "map": {}, "chain": {}, "rule": {}}
    for item in json.loads(listing)["nftables"]:
        ((kind, body),) = item.items()
        if kind == "metainfo":
            continue
        body = _strip(body)
        if kind == "table":
            out["table"] = body
        elif kind in ("set", "map"):
            elems = sorted(json.dumps(e, sort_keys=True) for e in body.pop("elem", []))
            out[kind][body["name"]] = {**body, "elem": elems}
        elif kind == "chain":
            out["chain"][body["name"]] = body
        elif kind == "rule":
            out["rule"].setdefault(body["chain"], []).append(body)
        else:
            raise AssertionError(f"unexpected object in our table: {kind}")
    return out


def assert_equal_tables(inc: "Node", full: "Node", context: str) -> None:
    a, b = inc.table(), full.table()
    if a != b:
        diff = {k: (sorted(set(a[k]) ^ set(b[k])) if isinstance(a[k], dict) else "differs")
                for k in a if a[k] != b[k]}
        raise AssertionError(f"incremental table differs from a full sync after {context}: {diff}")


@contextmanager
def nft_nodes(tag: str, names: tuple[str, ...]) -> Iterator[list[Node]]:
    """One Node per name in fresh namespaces with a unique prefix, all removed afterwards."""
    prefix = unique_prefix(tag)
    made: list[Node] = []
    try:
        for name in names:
            sh("ip", "netns", "add", f"{prefix}{name}")
            made.append(Node(f"{prefix}{name}"))
        yield made
    finally:
        for n in made:
            n.worker.shutdown(wait=True)
        remove_netns_with_prefix(prefix)
