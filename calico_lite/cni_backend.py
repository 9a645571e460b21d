"""The plugin verbs' Backend, made of IPAM and the workload registry in etcd.

This is where datastore failures become CNI errors: etcd unreachable -> code 11 (try again
later), pools exhausted -> code 100, so the runtime gets an answer a person can act on.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Iterator

from calico_lite import keys
from calico_lite.blocks import IpamError, Pool
from calico_lite.datastore import Datastore, DatastoreUnavailable, Op
from calico_lite.ipam import Assignment, Ipam, PoolExhausted
from plugin.cni import Workload
from plugin.errors import CniError, IO_FAILURE, NO_ADDRESS, TRY_AGAIN_LATER


@contextmanager
def datastore_errors(what: str) -> Iterator[None]:
    try:
        yield
    except DatastoreUnavailable as e:
        raise CniError(TRY_AGAIN_LATER, f"{what}: datastore unavailable: {e}",
                       "check that etcd is up and reachable from this node") from None
    except PoolExhausted as e:
        raise CniError(NO_ADDRESS, f"{what}: {e}", "add a pool with `calico-lite pool add`") from None
    except IpamError as e:
        raise CniError(IO_FAILURE, f"{what}: {e}") from None


class DatastoreBackend:
    def __init__(self, ds: Datastore, node: str, mtu: Callable[[], int] = lambda: 1500,
                 pools: Callable[[], list[Pool]] | None = None):
        self.ds = ds
        self.node = node
        self.ipam = Ipam(ds, node, pools=pools)
        self._mtu = mtu
        # one assignment at a time per node, like Calico's host-wide IPAM lock: concurrent
        # ADDs on a node all target its own block, and would only burn CAS retries on it
        self._ipam_lock = threading.Lock()

    def assign(self, handle: str, attrs: dict, workload: Callable[[str], Workload] | None = None) -> str:
        """The address is held in etcd when this returns; workload(ip), when given, is the
        workload record written in the same transaction (no second write per ADD)."""
        def extra(a: Assignment) -> list[tuple]:
            if workload is None:
                return []
            return [Op.put(keys.workload(self.node, handle), workload(a.ip).to_dict())]
        with datastore_errors(f"assigning an address to {handle}"), self._ipam_lock:
            return self.ipam.assign(handle, attrs, extra).ip

    def release(self, handle: str) -> str | None:
        with datastore_errors(f"releasing the address of {handle}"), self._ipam_lock:
            a = self.ipam.release(handle)
            return a.ip if a else None

    def holds(self, handle: str) -> str | None:
        with datastore_errors(f"looking up {handle}"):
            a = self.ipam.get(handle)
            return a.ip if a else None

    def handles(self) -> list[str]:
        with datastore_errors("listing this node's handles"):
            return [e.key[len(keys.HANDLES):] for e in self.ds.list(keys.HANDLES)
                    if e.value.get("node") == self.node]

    def not_ready_reason(self) -> str | None:
        if not self.ds.healthy():
            return f"datastore {self.ds.describe} is not reachable"
        return None

    def pod_mtu(self) -> int:
        return self._mtu()
