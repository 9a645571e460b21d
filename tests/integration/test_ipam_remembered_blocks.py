"""IPAM's one-transaction path against a real etcd: a node remembers its blocks as it last
wrote them, and that memory must never let it hand out an address twice or write into a block
that is no longer its own (other writers, gc, a block given back and claimed by another node)."""
from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

from calico_lite import keys
from calico_lite.blocks import Block, Pool
from calico_lite.cni_backend import DatastoreBackend
from calico_lite.ipam import Ipam, ensure_pool
from calico_lite.ipam_check import load_and_check
from plugin.cni import Workload


def small_pool(ds, cidr="10.244.0.0/28", block_size=30):
    ensure_pool(ds, Pool("p", cidr, block_size=block_size))


def allocations(ds) -> dict[str, str]:
    """address -> handle over every block, failing on an address held twice."""
    owners: dict[str, str] = {}
    for e in ds.list(keys.BLOCKS):
        b = Block.from_dict(e.value)
        for off, h in b.allocations.items():
            assert b.address(off) not in owners, f"{b.address(off)} held twice"
            owners[b.address(off)] = h
    return owners


def consistent(ds) -> bool:
    """ipam check finds nothing but handles without a workload (these tests assign bare
    handles, as a tunnel address is)."""
    return all(f.kind == "leaked-handle" for f in load_and_check(ds, grace=0).findings)


def test_an_add_is_one_transaction_block_handle_and_workload_together(ds):
    small_pool(ds)
    backend = DatastoreBackend(ds, "n1")
    backend.assign("warm/eth0", {})  # the first one claims the block
    ip = backend.assign("c1/eth0", {"pod": "p1"}, lambda ip: Workload(
        "c1/eth0", "c1", "eth0", "default", "p1", ip, "calixyz", "/var/run/netns/x", "n1"))
    revs = {ds.get(k).mod_revision for k in (keys.block("10.244.0.0/30"),
                                             keys.handle("c1/eth0"), keys.workload("n1", "c1/eth0"))}
    assert len(revs) == 1   # written at one store revision: one transaction
    assert ds.get(keys.workload("n1", "c1/eth0")).value["ip"] == ip
    backend.release("c1/eth0")
    assert ds.get(keys.handle("c1/eth0")) is None and ds.get(keys.workload("n1", "c1/eth0")) is None
    assert allocations(ds) == {"10.244.0.0": "warm/eth0"}


def test_a_second_writer_on_the_node_makes_the_memory_stale_not_wrong(ds):
    small_pool(ds)
    agent, cli = Ipam(ds, "n1"), Ipam(ds, "n1")   # e.g. the agent and a restarted agent
    a = agent.assign("a/eth0")
    b = cli.assign("b/eth0")                      # the block moved on behind agent's back
    c = agent.assign("c/eth0")
    assert len({a.ip, b.ip, c.ip}) == 3
    cli.release("c/eth0")                         # released behind agent's back too
    assert agent.release("c/eth0") is None        # nothing left to release, nothing harmed
    assert agent.release("a/eth0").ip == a.ip
    assert allocations(ds) == {b.ip: "b/eth0"}
    assert consistent(ds)


def test_a_block_given_back_and_claimed_by_another_node_is_never_written_from_memory(ds):
    small_pool(ds)
    n1 = Ipam(ds, "n1")
    first = n1.assign("a/eth0")
    n1.release("a/eth0")
    assert Ipam(ds, "n1").release_empty_blocks(grace=0) == [first.block]  # another instance
    taken = Ipam(ds, "n2").assign("b/eth0")
    assert taken.block == first.block            # n2 now owns the block n1 remembers
    mine = n1.assign("c/eth0")
    assert mine.block != first.block and not mine.borrowed
    blk = Block.from_dict(ds.get(keys.block(first.block)).value)
    assert blk.affinity == "n2" and blk.allocations == {0: "b/eth0"}
    assert consistent(ds)


def test_concurrent_assign_and_release_churn_never_holds_an_address_twice(ds):
    small_pool(ds, "10.244.0.0/26", 29)
    backend = DatastoreBackend(ds, "n1")
    rng = random.Random(7)

    def churn(i: int) -> str:
        h = f"c{i}/eth0"
        backend.assign(h, {}, lambda ip: Workload(h, f"c{i}", "eth0", "ns", f"p{i}", ip,
                                                   f"cali{i}", "/x", "n1"))
        if rng.random() < 0.5:
            backend.release(h)
            return ""
        return h

    with ThreadPoolExecutor(16) as ex:
        live = {h for h in ex.map(churn, range(120)) if h}
    owners = allocations(ds)
    assert sorted(owners.values()) == sorted(live)
    assert len({e.value["ip"] for e in ds.list(keys.HANDLES)}) == len(live)
    with ThreadPoolExecutor(16) as ex:
        list(ex.map(backend.release, live))
    assert allocations(ds) == {} and ds.list(keys.HANDLES) == [] and ds.list(keys.WORKLOADS) == []
    assert load_and_check(ds, grace=0).ok
