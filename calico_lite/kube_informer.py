"""One informer: keeps one datastore prefix equal to one kind of Kubernetes object.

The client-go informer contract, on the official Python client: list (paged), write what
differs, then watch from the list's resourceVersion with bookmarks; a dropped watch resumes
from the last resourceVersion seen (bookmarks included), a 410 Gone relists, any other error
backs off. Each watch ends after `resync_seconds`, and the informer then compares what it
holds with the datastore and rewrites only keys whose value differs (someone else's edits
heal; nothing is written when nothing changed).
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from kubernetes.client.exceptions import ApiException
from kubernetes.watch import Watch
from urllib3.exceptions import HTTPError

from bgp.process import Backoff
from calico_lite import keys
from calico_lite.datastore import Datastore, DatastoreUnavailable

log = logging.getLogger("calico-lite.kube-sync")
GONE = 410
PAGE = 500
STATUS_EVERY = 1.0  # seconds between status writes caused by watch events alone


@dataclass(frozen=True)
class Kind:
    name: str                                        # also the status key's last segment
    prefix: str                                      # datastore prefix it owns
    key_of: Callable[[dict], str]                    # metadata -> datastore key
    transform: Callable[[dict], tuple[str, dict] | None]
    on_delete: Callable[[Datastore, str], None] | None = None  # after a key is removed


@dataclass
class KindStatus:
    kind: str
    synced: bool = False
    resource_version: str = ""
    error: str = ""          # the last error (kept after recovery; see error_at)
    error_at: float = 0.0
    objects: int = 0
    lists: int = 0
    gone: int = 0            # 410 Gone answered with a relist
    resyncs: int = 0
    errors: int = 0
    updated: float = field(default_factory=time.time)


def reconcile_plan(current: dict[str, dict], listed: dict[str, dict]) -> tuple[dict[str, dict], list[str]]:
    """After a (re)list or at a resync: what to write and what to delete so the datastore
    equals the API (pure; unchanged keys are not written)."""
    puts = {k: v for k, v in listed.items() if current.get(k) != v}
    deletes = sorted(k for k in current if k not in listed)
    return puts, deletes


class Informer:
    def __init__(self, kind: Kind, list_fn: Callable, ds: Datastore, stop: threading.Event,
                 resync_seconds: float):
        self.kind, self.list_fn, self.ds, self.stop = kind, list_fn, ds, stop
        self.resync_seconds = max(1, int(resync_seconds))
        self.store: dict[str, dict] = {}   # what the datastore holds for this kind, per the API
        self.rv: str | None = None
        self.status = KindStatus(kind.name)
        self._published = 0.0
        self.beat: Callable[[], None] = lambda: None   # liveness: every event, list, resync, error

    # --- the loop ------------------------------------------------------------------------
    def run(self) -> None:
        backoff, need_list = Backoff(0.5, cap=10.0), True
        while not self.stop.is_set():
            try:
                if need_list:
                    self.list_and_reconcile()
                    need_list = False
                self.watch()
                self.resync()
                backoff.reset()
                continue
            except ApiException as e:
                if e.status == GONE:  # our resourceVersion is older than the server keeps
                    self.status.gone += 1
                    need_list, self.rv = True, None
                    self.fail(f"410 Gone ({e.reason}): relisting")
                    continue
                self.fail(f"API {e.status}: {e.reason}")
            except DatastoreUnavailable as e:
                need_list = True  # what reached etcd is unknown: reconcile from a fresh list
                self.fail(str(e))
            except (HTTPError, OSError, ValueError, KeyError) as e:
                self.fail(f"{type(e).__name__}: {e}")
            except Exception as e:  # noqa: BLE001 - an informer thread must never die silently
                log.exception("kube-sync %s: unexpected error", self.kind.name)
                need_list = True
                self.fail(f"unexpected {type(e).__name__}: {e}")
            self.stop.wait(backoff.next())

    def fail(self, error: str) -> None:
        log.warning(json.dumps({"event": "kube-sync-error", "kind": self.kind.name,
                                "error": error[:500]}))
        self.status.synced, self.status.error, self.status.error_at = False, error[:500], time.time()
        self.status.errors += 1
        self.publish(force=True)

    # --- list, watch, resync -------------------------------------------------------------
    def list_and_reconcile(self) -> None:
        items, rv = self._list()
        current = {e.key: e.value for e in self.ds.list(self.kind.prefix)}
        listed: dict[str, dict] = {}
        for obj in items:
            rec = self._record(obj, current)
            if rec:
                listed[rec[0]] = rec[1]
        written, deleted = self._converge(current, listed)
        self.store, self.rv = listed, rv
        st = self.status
        st.synced, st.resource_version, st.objects, st.lists = True, rv, len(listed), st.lists + 1
        log.info(json.dumps({"event": "kube-sync-list", "kind": self.kind.name, "objects": len(listed),
                             "written": written, "deleted": deleted, "resourceVersion": rv}))
        self.publish(force=True)

    def _list(self) -> tuple[list[dict], str]:
        items: list[dict] = []
        cont = None
        while True:
            kw = {"limit": PAGE, "_preload_content": False, "_request_timeout": (5, 60)}
            if cont:
                kw["_continue"] = cont
            body = json.loads(self.list_fn(**kw).data)
            items += body.get("items") or []
            cont = body["metadata"].get("continue")
            if not cont:
                return items, body["metadata"]["resourceVersion"]

    def watch(self) -> None:
        """Apply events until the server ends the watch (after resync_seconds). Events are
        read as plain dicts (return_type "object"): the client's models refuse objects the API
        serves, e.g. an EndpointSlice with no endpoints (`endpoints: null`), and we read
        raw_object anyway."""
        w = Watch(return_type="object")
        for ev in w.stream(self.list_fn, resource_version=self.rv, allow_watch_bookmarks=True,
                           timeout_seconds=self.resync_seconds,
                           _request_timeout=(5, self.resync_seconds + 30)):
            obj = ev["raw_object"]
            if ev["type"] != "BOOKMARK":
                self.apply(ev["type"], obj)
            self.rv = obj["metadata"]["resourceVersion"]
            self.status.synced, self.status.resource_version = True, self.rv
            self.status.objects = len(self.store)
            self.publish()
            if self.stop.is_set():
                w.stop()

    def apply(self, kind_of_event: str, obj: dict) -> None:
        key = self.kind.key_of(obj["metadata"])
        if kind_of_event == "DELETED":
            self.ds.delete(key)
            self.store.pop(key, None)
            if self.kind.on_delete:
                self.kind.on_delete(self.ds, key)
            return
        rec = self._record(obj, self.store)
        if rec and self.store.get(key) != rec[1]:
            self.ds.put(*rec)
            self.store[key] = rec[1]

    def resync(self) -> None:
        current = {e.key: e.value for e in self.ds.list(self.kind.prefix)}
        written, deleted = self._converge(current, self.store)
        self.status.resyncs += 1
        if written or deleted:
            log.info(json.dumps({"event": "kube-sync-resync", "kind": self.kind.name,
                                 "written": written, "deleted": deleted}))
        self.publish(force=True)

    # --- helpers -------------------------------------------------------------------------
    def _converge(self, current: dict[str, dict], wanted: dict[str, dict]) -> tuple[int, int]:
        puts, deletes = reconcile_plan(current, wanted)
        for k, v in puts.items():
            self.ds.put(k, v)
        for k in deletes:
            self.ds.delete(k)
            if self.kind.on_delete:
                self.kind.on_delete(self.ds, k)
        return len(puts), len(deletes)

    def _record(self, obj: dict, previous: dict[str, dict]) -> tuple[str, dict] | None:
        """The object's record; one the API accepted but we cannot read keeps its previous
        value (never a policy silently dropped), and the error is reported."""
        try:
            return self.kind.transform(obj)
        except (ValueError, KeyError, TypeError) as e:
            key = self.kind.key_of(obj["metadata"])
            self.fail(f"{key}: not mirrored: {e}")
            return (key, previous[key]) if key in previous else None

    def publish(self, force: bool = False) -> None:
        self.beat()
        now = time.time()
        if not force and now - self._published < STATUS_EVERY:
            return
        self.status.updated, self._published = now, now
        try:
            self.ds.put(keys.kube_sync_status(self.kind.name), asdict(self.status))
        except DatastoreUnavailable:
            pass  # the next error or list publishes again
