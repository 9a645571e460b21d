"""Cluster-wide IPAM in etcd: where pod addresses are assigned and released.

A node claims whole blocks (affinity) by creating the block key with a CAS transaction; an
address is assigned by a CAS on the block's key that also creates the handle
(containerID/ifname), so two writers never hand out one address and every assignment can be
found again by DEL or GC. When no block can be claimed, an address is borrowed from another
node's block (the borrower announces it as a /32).
"""
from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass
from typing import Callable

from calico_lite import keys
from calico_lite.blocks import Block, IpamError, Pool
from calico_lite.datastore import CorruptValue, Datastore, Entry, Op, report_corrupt

DEFAULT_POOL = Pool(name="default-ipv4-ippool", cidr="10.244.0.0/16")
MAX_CAS_RETRIES = 50


class PoolExhausted(IpamError):
    """No free address in any enabled pool."""


@dataclass(frozen=True)
class Assignment:
    handle: str
    ip: str
    block: str
    node: str
    borrowed: bool = False

    def to_dict(self) -> dict:
        return {"handle": self.handle, "ip": self.ip, "block": self.block,
                "node": self.node, "borrowed": self.borrowed}


def list_pools(ds: Datastore) -> list[Pool]:
    return [Pool.from_dict(e.value) for e in ds.list(keys.POOLS)]


def ensure_pool(ds: Datastore, pool: Pool = DEFAULT_POOL) -> bool:
    """Create the pool unless one exists with that name; True if created."""
    return ds.create(keys.pool(pool.name), pool.to_dict())


Extra = Callable[[Assignment], list[tuple]]  # more ops for the assignment's transaction


class Ipam:
    """IPAM as seen from one node: assigns from the node's blocks, claims or borrows more.

    The node's own blocks are remembered as last written or read (value and mod_revision), so
    an assignment in one of them is a single etcd transaction: CAS on the remembered revision,
    the block with the new allocation, the handle, and whatever `extra` adds (the workload
    record). A lost CAS (another writer, gc, a released block) re-reads the block and retries,
    so the memory is only ever a guess that etcd confirms. Handles assigned here are remembered
    too, so their release is one transaction as well. Callers serialize assign and release
    (DatastoreBackend's lock); release_empty_blocks may run beside them (CAS covers it)."""

    def __init__(self, ds: Datastore, node: str, strict_affinity: bool = False,
                 pools: Callable[[], list[Pool]] | None = None):
        self.ds = ds
        self.node = node
        self.strict_affinity = strict_affinity
        self._pools = pools or (lambda: list_pools(ds))   # e.g. the agent's watched cache
        self._blocks: dict[str, Entry] = {}   # own block cidr -> the block as last seen
        self._mine: dict[str, str] = {}       # handle assigned here -> its block cidr

    # --- queries -------------------------------------------------------------------------
    def get(self, handle: str) -> Assignment | None:
        e = self.ds.get(keys.handle(handle))
        if e is None:
            return None
        v = e.value
        return Assignment(handle, v["ip"], v["block"], v["node"], v.get("borrowed", False))

    def affine_blocks(self) -> list[str]:
        return sorted(keys.block_cidr(e.key) for e in self.ds.list(keys.affinities(self.node)))

    # --- assign --------------------------------------------------------------------------
    def assign(self, handle: str, attrs: dict | None = None, extra: Extra | None = None) -> Assignment:
        """Assign one address to handle; idempotent (an existing handle returns its address:
        the assignment transaction requires the handle to be absent, see _assign_in_block)."""
        attrs, extra = attrs or {}, extra or (lambda a: [])
        enabled = [p for p in self._pools() if not p.disabled]
        usable = lambda cidr: any(  # noqa: E731 - a block serves only while its pool is enabled
            ipaddress.ip_network(cidr).subnet_of(p.network) for p in enabled)
        for cidr in sorted(filter(usable, list(self._blocks))):  # the blocks we know: no reads
            if got := self._assign_in_block(cidr, handle, attrs, False, extra):
                return got
        while True:  # own blocks first; claim another only when they are all full
            for cidr in filter(usable, self.affine_blocks()):
                if got := self._assign_in_block(cidr, handle, attrs, False, extra):
                    return got
            if existing := self.get(handle):  # our blocks are full, but this one was done before
                return existing
            if self._claim_block() is None:
                break
        if not self.strict_affinity:
            for e in self.ds.list(keys.BLOCKS):
                b = block_of(e)
                if b is not None and usable(b.cidr):
                    if got := self._assign_in_block(b.cidr, handle, attrs, True, extra):
                        return got
        raise PoolExhausted(f"no free address for node {self.node} in pools "
                            f"{', '.join(p.cidr for p in enabled) or '(none enabled)'}")

    def _assign_in_block(self, cidr: str, handle: str, attrs: dict, borrowed: bool,
                         extra: Extra) -> Assignment | None:
        key = keys.block(cidr)
        e = None if borrowed else self._blocks.get(cidr)
        for _ in range(MAX_CAS_RETRIES):
            e = e or get_entry(self.ds, key)
            block = block_of(e) if e is not None else None
            if e is None or block is None or borrowed == (block.affinity == self.node):
                # absent or corrupt (skipped, logged, never overwritten), or no longer ours:
                # borrow only from others' blocks
                self._blocks.pop(cidr, None)
                return None
            offset = block.free_offset()
            if offset is None:
                return None
            block.allocations[offset] = handle
            a = Assignment(handle, block.address(offset), cidr, self.node, borrowed)
            rev = self.ds.commit(
                [Op.unchanged(key, e.mod_revision), Op.absent(keys.handle(handle))],
                [Op.put(key, block.to_dict()),
                 Op.put(keys.handle(handle), {**a.to_dict(), **attrs, "created": time.time()}),
                 *extra(a)])
            if rev is not None:
                if not borrowed:
                    self._remember(Entry(key, block.to_dict(), rev), handle)
                return a
            self._blocks.pop(cidr, None)
            if existing := self.get(handle):  # assigned before, or by a concurrent retry
                return existing
            e = None  # the block changed under us: read it again
        raise IpamError(f"block {cidr}: too much contention ({MAX_CAS_RETRIES} CAS retries)")

    def _remember(self, block: Entry, handle: str | None) -> None:
        cidr = keys.block_cidr(block.key)
        if block.mod_revision:
            self._blocks[cidr] = block
        else:
            self._blocks.pop(cidr, None)
        if handle:
            self._mine[handle] = cidr

    def _claim_block(self) -> str | None:
        """Claim the first unclaimed block of any enabled pool; None when all are taken."""
        taken = {keys.block_cidr(e.key) for e in self.ds.list(keys.BLOCKS)}
        for pool in self._pools():
            if pool.disabled:
                continue
            for cidr in pool.block_cidrs():
                if cidr in taken:
                    continue
                block = Block(cidr=cidr, affinity=self.node, pool=pool.name)
                if self.ds.txn([Op.absent(keys.block(cidr))],
                               [Op.put(keys.block(cidr), block.to_dict()),
                                Op.put(keys.affinity(self.node, cidr), {"node": self.node})]):
                    return cidr
                taken.add(cidr)  # another node won this one; try the next
        return None

    # --- release -------------------------------------------------------------------------
    def release(self, handle: str) -> Assignment | None:
        """Release the handle's address; None if there was nothing to release (idempotent)."""
        if handle in self._mine:
            done = self._release_known(handle, self._mine.pop(handle))
            if done:
                return done
        for _ in range(MAX_CAS_RETRIES):
            h = self.ds.get(keys.handle(handle))
            if h is None:
                return None
            a = Assignment(handle, h.value["ip"], h.value["block"], h.value["node"],
                           h.value.get("borrowed", False))
            bkey = keys.block(a.block)
            b = get_entry(self.ds, bkey)
            block = block_of(b) if b is not None else None
            # the handle and the workload that used it go in one transaction
            ops = [Op.delete(keys.handle(handle)), Op.delete(keys.workload(a.node, handle))]
            cmp = [Op.unchanged(keys.handle(handle), h.mod_revision)]
            if b is not None and block is not None:   # a corrupt block is left as it is
                off = block.offset(a.ip)
                if block.allocations.get(off) == handle:
                    del block.allocations[off]
                    if not block.allocations:
                        block.empty_since = time.time()
                    ops.append(Op.put(bkey, block.to_dict()))
                    cmp.append(Op.unchanged(bkey, b.mod_revision))
            if self.ds.txn(cmp, ops):
                self._blocks.pop(a.block, None)
                return a
        raise IpamError(f"handle {handle}: too much contention releasing {MAX_CAS_RETRIES} times")

    def _release_known(self, handle: str, cidr: str) -> Assignment | None:
        """Release an address this Ipam assigned in one of its own blocks, in one transaction:
        CAS on the block as last seen (which still holds the allocation), delete the handle
        and its workload. None (the caller takes the general path) if the block moved on."""
        e = self._blocks.get(cidr)
        if e is None:
            return None
        block = Block.from_dict(e.value)
        off = next((o for o, h in block.allocations.items() if h == handle), None)
        if off is None:
            return None
        del block.allocations[off]
        if not block.allocations:
            block.empty_since = time.time()
        rev = self.ds.commit([Op.unchanged(e.key, e.mod_revision)],
                             [Op.put(e.key, block.to_dict()), Op.delete(keys.handle(handle)),
                              Op.delete(keys.workload(self.node, handle))])
        if rev is None:
            self._blocks.pop(cidr, None)
            return None
        self._remember(Entry(e.key, block.to_dict(), rev), None)
        return Assignment(handle, block.address(off), cidr, self.node)

    def release_ip(self, ip: str) -> Assignment | None:
        """Release whatever handle holds ip (the `ipam release` command)."""
        for e in self.ds.list(keys.BLOCKS):
            block = block_of(e)
            if block is None:
                continue
            try:
                handle = block.allocations.get(block.offset(ip))
            except IpamError:
                continue
            if handle is None:
                return None
            released = self.release(handle)
            if released is None:  # allocation without a handle record: drop it directly
                del block.allocations[block.offset(ip)]
                self.ds.txn([Op.unchanged(e.key, e.mod_revision)], [Op.put(e.key, block.to_dict())])
                return Assignment(handle, ip, block.cidr, block.affinity or "")
            return released
        return None

    # --- housekeeping --------------------------------------------------------------------
    def release_empty_blocks(self, grace: float, now: float | None = None) -> list[str]:
        """Give up this node's blocks that have been empty for `grace` seconds, so other nodes
        can claim them; CAS on the block, so an assignment racing with this wins."""
        now = time.time() if now is None else now
        released = []
        for cidr in self.affine_blocks():
            if (e := get_entry(self.ds, keys.block(cidr))) is None:
                self.ds.delete(keys.affinity(self.node, cidr))
                continue
            if (block := block_of(e)) is None:
                continue   # corrupt: logged, left for an operator (never taken as empty)
            if block.allocations or block.empty_since is None or now - block.empty_since < grace:
                continue
            if self.ds.txn([Op.unchanged(e.key, e.mod_revision)],
                           [Op.delete(e.key), Op.delete(keys.affinity(self.node, cidr))]):
                self._blocks.pop(cidr, None)
                released.append(cidr)
        return released


_CORRUPT = object()


def get_entry(ds: Datastore, key: str):
    """ds.get, with a value that is not JSON as an entry block_of() refuses (logged by ds)."""
    try:
        return ds.get(key)
    except CorruptValue as e:
        return Entry(key, _CORRUPT, e.mod_revision)


def block_of(e: Entry) -> Block | None:
    """The block an entry holds; None (logged once) when it holds something else: IPAM
    skips that block and goes on with the others."""
    try:
        if e.value is _CORRUPT:
            return None
        block = Block.from_dict(e.value)
        block.network  # noqa: B018 - the cidr must parse
        return block
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        report_corrupt(e.key, e.mod_revision, f"not a block: {type(err).__name__}: {err}")
        return None


@dataclass(frozen=True)
class NodeRelease:
    """What release_node gave back."""
    handles: list[str]
    blocks_deleted: list[str]
    blocks_unaffined: list[str]  # still hold addresses other nodes borrowed


def release_node(ds: Datastore, node: str) -> NodeRelease:
    """Give back everything a node that left the cluster held, as Calico's kube-controllers
    node controller does when a Node is deleted: the addresses of its workloads (handle,
    workload record and allocation, one transaction each), then its blocks. An empty block
    goes with its affinity; one still holding addresses other nodes borrowed keeps them and
    only loses its affinity (any node may then borrow from it). Idempotent."""
    ipam = Ipam(ds, node)
    handles = [e.key[len(keys.HANDLES):] for e in ds.list(keys.HANDLES) if e.value.get("node") == node]
    for h in handles:
        ipam.release(h)
    ds.delete_prefix(f"{keys.WORKLOADS}{node}/")  # workload records whose handle was already gone
    deleted, unaffined = [], []
    for _ in range(MAX_CAS_RETRIES):
        mine = [e for e in ds.list(keys.BLOCKS) if e.value.get("affinity") == node]
        if not mine:
            break
        for e in mine:
            block = Block.from_dict(e.value)
            affinity = Op.delete(keys.affinity(node, block.cidr))
            if not block.allocations:
                if ds.txn([Op.unchanged(e.key, e.mod_revision)], [Op.delete(e.key), affinity]):
                    deleted.append(block.cidr)
                continue
            block.affinity = None
            if ds.txn([Op.unchanged(e.key, e.mod_revision)], [Op.put(e.key, block.to_dict()), affinity]):
                unaffined.append(block.cidr)
    ds.delete_prefix(keys.affinities(node))
    return NodeRelease(handles, sorted(deleted), sorted(unaffined))
