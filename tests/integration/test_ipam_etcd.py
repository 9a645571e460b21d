"""IPAM against a real etcd: claims, assignment, release, borrowing, concurrency."""
from __future__ import annotations

import ipaddress
import multiprocessing as mp
from concurrent.futures import ThreadPoolExecutor

import pytest

from calico_lite import keys
from calico_lite.blocks import Block, Pool
from calico_lite.ipam import Ipam, PoolExhausted, ensure_pool, release_node


def small_pool(ds, cidr="10.244.0.0/28", block_size=30):
    ensure_pool(ds, Pool("p", cidr, block_size=block_size))


def test_first_assignment_claims_a_block_and_records_the_handle(ds):
    small_pool(ds)
    a = Ipam(ds, "n1").assign("c1/eth0")
    assert a.ip == "10.244.0.0" and a.block == "10.244.0.0/30" and not a.borrowed
    assert Ipam(ds, "n1").affine_blocks() == ["10.244.0.0/30"]
    h = ds.get(keys.handle("c1/eth0")).value
    assert h["ip"] == a.ip and h["node"] == "n1"
    blk = Block.from_dict(ds.get(keys.block("10.244.0.0/30")).value)
    assert blk.allocations == {0: "c1/eth0"} and blk.affinity == "n1"


def test_assign_is_idempotent_per_handle(ds):
    small_pool(ds)
    ipam = Ipam(ds, "n1")
    assert ipam.assign("c1/eth0") == ipam.assign("c1/eth0")
    assert len(Block.from_dict(ds.get(keys.block("10.244.0.0/30")).value).allocations) == 1


def test_nodes_get_separate_blocks_and_claim_more_when_full(ds):
    small_pool(ds)
    n1, n2 = Ipam(ds, "n1"), Ipam(ds, "n2")
    ips1 = [n1.assign(f"a{i}/eth0").ip for i in range(5)]  # /30 holds 4: a second block
    ip2 = n2.assign("b0/eth0").ip
    assert n1.affine_blocks() == ["10.244.0.0/30", "10.244.0.4/30"]
    assert n2.affine_blocks() == ["10.244.0.8/30"] and ip2 == "10.244.0.8"
    assert len(set(ips1)) == 5


def test_release_frees_the_address_for_reuse_and_is_idempotent(ds):
    small_pool(ds)
    ipam = Ipam(ds, "n1")
    ip = ipam.assign("c1/eth0").ip
    assert ipam.release("c1/eth0").ip == ip
    assert ipam.release("c1/eth0") is None
    assert ds.get(keys.handle("c1/eth0")) is None
    assert ipam.assign("c2/eth0").ip == ip


def test_borrowing_when_no_block_is_left_then_exhaustion(ds):
    small_pool(ds, "10.244.0.0/29", 30)  # two blocks of 4
    n1, n2, n3 = Ipam(ds, "n1"), Ipam(ds, "n2"), Ipam(ds, "n3")
    n1.assign("a/eth0")
    n2.assign("b/eth0")
    borrowed = n3.assign("c/eth0")
    assert borrowed.borrowed and borrowed.node == "n3"
    assert n3.affine_blocks() == []
    strict = Ipam(ds, "n4", strict_affinity=True)
    with pytest.raises(PoolExhausted, match="n4"):
        strict.assign("d/eth0")
    for i in range(5):
        n3.assign(f"c{i}/eth0")
    with pytest.raises(PoolExhausted, match="10.244.0.0/29"):
        n3.assign("last/eth0")


def test_release_node_gives_back_its_addresses_and_blocks_but_not_what_others_borrowed(ds):
    small_pool(ds, "10.244.0.0/29", 30)  # two blocks of 4
    n1, n2, n3 = Ipam(ds, "n1"), Ipam(ds, "n2"), Ipam(ds, "n3")
    a1 = n1.assign("a/eth0")
    n2.assign("b/eth0")
    n3_got = [n3.assign(f"c{i}/eth0") for i in range(5)]  # n3 has no block: it borrows from both
    borrowed_from_n1 = next(a for a in n3_got if a.block == a1.block)
    x = n1.assign("x/eth0")  # n1's block is full by now: borrowed from n2's
    assert x.borrowed
    for h in ("a/eth0", "x/eth0"):
        ds.put(keys.workload("n1", h), {"ip": "?"})
    ds.put(keys.workload("n1", "stale/eth0"), {"ip": "?"})
    released = release_node(ds, "n1")
    assert sorted(released.handles) == ["a/eth0", "x/eth0"] and released.blocks_deleted == []
    assert released.blocks_unaffined == [a1.block]  # still holds n3's borrowed address
    assert n1.get("a/eth0") is None and n1.get("x/eth0") is None
    assert ds.list(keys.affinities("n1")) == [] and ds.list(f"{keys.WORKLOADS}n1/") == []
    block = Block.from_dict(ds.get(keys.block(a1.block)).value)
    assert block.affinity is None and borrowed_from_n1.handle in block.allocations.values()
    assert n3.get(borrowed_from_n1.handle) == borrowed_from_n1
    n2_block = Block.from_dict(ds.get(keys.block(x.block)).value)
    assert "x/eth0" not in n2_block.allocations.values() and n2_block.affinity == "n2"
    assert n2.get("b/eth0") and all(n3.get(a.handle) == a for a in n3_got)
    assert release_node(ds, "n1") == type(released)([], [], [])  # idempotent


def test_release_ip_finds_the_handle(ds):
    small_pool(ds)
    ipam = Ipam(ds, "n1")
    ip = ipam.assign("c1/eth0").ip
    assert ipam.release_ip(ip).handle == "c1/eth0"
    assert ipam.release_ip(ip) is None


def test_many_concurrent_assignments_on_one_node_never_collide(ds):
    small_pool(ds, "10.244.0.0/24", 28)
    ipam = Ipam(ds, "n1")
    with ThreadPoolExecutor(16) as ex:
        ips = list(ex.map(lambda i: ipam.assign(f"c{i}/eth0").ip, range(60)))
    assert len(set(ips)) == 60
    blocks = [Block.from_dict(e.value) for e in ds.list(keys.BLOCKS)]
    assert sum(len(b.allocations) for b in blocks) == 60
    assert all(b.affinity == "n1" for b in blocks)


def _node_worker(args):
    endpoint, node, count = args
    from calico_lite.datastore import Datastore
    ipam = Ipam(Datastore([endpoint]), node)
    with ThreadPoolExecutor(4) as ex:
        return list(ex.map(lambda i: ipam.assign(f"{node}-{i}/eth0").ip, range(count)))


def test_concurrent_assignments_across_nodes_never_hand_out_one_address_twice(ds, etcd_endpoint):
    small_pool(ds, "10.244.0.0/25", 29)  # 16 blocks of 8: nodes race for blocks too
    ctx = mp.get_context("spawn")
    with ctx.Pool(4) as pool:
        results = pool.map(_node_worker, [(etcd_endpoint, f"n{i}", 20) for i in range(4)])
    ips = [ip for r in results for ip in r]
    assert len(ips) == 80 and len(set(ips)) == 80
    assert all(ipaddress.ip_address(ip) in ipaddress.ip_network("10.244.0.0/25") for ip in ips)
    handles = ds.list(keys.HANDLES)
    assert len(handles) == 80
    owners = {}
    for e in ds.list(keys.BLOCKS):
        b = Block.from_dict(e.value)
        for off, h in b.allocations.items():
            assert b.address(off) not in owners
            owners[b.address(off)] = h
    assert len(owners) == 80


def test_an_emptied_block_is_given_back_after_the_grace_period_only(ds):
    small_pool(ds)
    ipam = Ipam(ds, "n1")
    ipam.assign("c1/eth0")
    assert ipam.release_empty_blocks(grace=0) == []  # not empty
    ipam.release("c1/eth0")
    empty_since = Block.from_dict(ds.get(keys.block("10.244.0.0/30")).value).empty_since
    assert ipam.release_empty_blocks(grace=3600, now=empty_since + 10) == []
    assert ipam.release_empty_blocks(grace=3600, now=empty_since + 3601) == ["10.244.0.0/30"]
    assert ds.get(keys.block("10.244.0.0/30")) is None and ipam.affine_blocks() == []
    assert Ipam(ds, "n2").assign("d/eth0").block == "10.244.0.0/30"  # claimable again


def test_gc_releases_leaks_but_never_an_address_in_use(ds, tmp_path):
    from calico_lite.ipam_check import gc, load_and_check
    small_pool(ds)
    ipam = Ipam(ds, "n1")
    live = ipam.assign("live/eth0")
    netns = tmp_path / "netns-live"
    netns.write_text("")
    ds.put(keys.workload("n1", "live/eth0"), {"handle": "live/eth0", "netns": str(netns),
                                             "namespace": "a", "pod": "live"})
    leaked = ipam.assign("crashed/eth0")  # ADD that died before recording its workload
    report = load_and_check(ds, grace=0)
    assert [(f.kind, f.ip) for f in report.findings] == [("leaked-handle", leaked.ip)]
    assert load_and_check(ds, grace=3600).ok  # too young to call a leak
    done = gc(ds, grace=0)
    assert [f.ip for f in done] == [leaked.ip]
    assert ipam.get("live/eth0") == live and ipam.get("crashed/eth0") is None
    assert load_and_check(ds, grace=0).ok


def test_blocks_of_a_disabled_or_deleted_pool_hand_out_nothing_new(ds):
    small_pool(ds)
    ipam = Ipam(ds, "n1")
    ipam.assign("a/eth0")
    ds.put(keys.pool("p"), Pool("p", "10.244.0.0/28", block_size=30, disabled=True).to_dict())
    ensure_pool(ds, Pool("q", "10.245.0.0/28", block_size=30))
    assert ipam.assign("b/eth0").ip == "10.245.0.0"
    ds.delete(keys.pool("q"))
    with pytest.raises(PoolExhausted, match="none enabled"):
        ipam.assign("c/eth0")
    assert ipam.get("a/eth0").ip == "10.244.0.0"  # existing assignments stay
