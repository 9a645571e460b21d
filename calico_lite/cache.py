"""The agent's one shared view of the datastore: a snapshot kept current by a watch.

The controllers (routing, policy) read it and wait on it; none of them talks to etcd for
reads. A broken watch triggers a full resync, so a restarted etcd heals by itself.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from bgp.process import Backoff
from calico_lite import keys
from calico_lite.datastore import Change, Datastore, DatastoreUnavailable, report_corrupt

log = logging.getLogger("calico-lite.cache")
# the kinds of keys whose changes are tracked apart (see Cache.generation_of)
CATEGORIES = (keys.POOLS, keys.BLOCKS, keys.AFFINITIES, keys.HANDLES, keys.NODES, keys.WORKLOADS,
              keys.K8S_NAMESPACES, keys.K8S_PODS, keys.K8S_POLICIES, keys.K8S_NODES,
              keys.K8S_SERVICES, keys.K8S_ENDPOINTSLICES, keys.NODE_CONFIG, keys.BARRIER)
OTHER = "(other)"  # any other key: wakes only controllers that wait on every change


class Cache:
    # reports the agents (and kube-sync) write about themselves: outputs, not inputs, so not cached (a
    # controller publishing its status must not wake itself up)
    IGNORED = (keys.STATUS, keys.POLICY_STATUS, keys.KUBE_SYNC_STATUS)

    def __init__(self, ds: Datastore, prefix: str = keys.ROOT):
        self.ds = ds
        self.prefix = prefix
        self._data: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._generation = 0
        self._generation_of: dict[str, int] = {}  # key category -> generation of its last change
        self.revision = 0  # the store revision the cached data reflects (at least)
        self._resync = threading.Event()
        self._stop = threading.Event()
        self._watch_id: int | None = None
        self.synced = threading.Event()
        self.beat: Callable[[], None] = lambda: None   # liveness: the sync loop went round

    def start(self) -> None:
        self._resync.set()
        threading.Thread(target=self._sync_loop, name="cache-sync", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self._resync.set()
        if self._watch_id is not None:
            self.ds.cancel_watch(self._watch_id)

    # --- reading ---------------------------------------------------------------------------
    @property
    def generation(self) -> int:
        return self._generation

    def items(self, prefix: str) -> dict[str, Any]:
        with self._lock:
            return {k: v for k, v in self._data.items() if k.startswith(prefix)}

    def get(self, key: str) -> Any:
        with self._lock:
            return self._data.get(key)

    def generation_of(self, prefixes: tuple[str, ...]) -> int:
        """The generation of the last change under any of prefixes (controllers that care
        about some keys only, e.g. policy, must not wake for IPAM traffic)."""
        return max((g for cat, g in self._generation_of.items()
                    if cat.startswith(prefixes) or any(p.startswith(cat) for p in prefixes)),
                   default=0)

    def wait_change(self, seen_generation: int, timeout: float,
                    prefixes: tuple[str, ...] | None = None,
                    until: Callable[[], bool] | None = None) -> int:
        """Block until the generation (of prefixes, if given) moves past seen_generation, or
        `until()` is true (checked again at each nudge()), or timeout; return the generation."""
        current = (lambda: self.generation_of(prefixes)) if prefixes else (lambda: self._generation)
        with self._cond:
            self._cond.wait_for(lambda: current() != seen_generation or (until is not None and until()),
                                timeout=timeout)
            return current()

    def nudge(self) -> None:
        """Make every wait_change() check its `until` now: an input from outside the cache
        (BGP) changed. Unlike wake(), no generation moves, so other loops go back to sleep."""
        with self._cond:
            self._cond.notify_all()

    def wake(self) -> None:
        """Wake every wait_change() now (the agent is stopping: loops must see it at once)."""
        with self._cond:
            self._bump()

    # --- keeping it current --------------------------------------------------------------
    def _bump(self, changed_keys: list[str] | None = None) -> None:
        """changed_keys None: everything may have changed (a resync)."""
        self._generation += 1
        cats = ((*CATEGORIES, OTHER) if changed_keys is None
                else {next((c for c in CATEGORIES if k.startswith(c)), OTHER) for k in changed_keys})
        for cat in cats:
            self._generation_of[cat] = self._generation
        self._cond.notify_all()

    def apply_changes(self, changes: list[Change] | None) -> None:
        """The watch callback: take a batch of changes (None: the watch broke, resync)."""
        if changes is None:
            self._resync.set()
            return
        relevant = [c for c in changes if not c.key.startswith(self.IGNORED)]
        if not relevant:
            return
        with self._cond:
            for c in relevant:
                if c.value is None:
                    self._data.pop(c.key, None)
                elif _usable(c):
                    self._data[c.key] = c.value
                self.revision = max(self.revision, c.mod_revision)
            self._bump([c.key for c in relevant])

    def _sync_loop(self) -> None:
        retry = Backoff(1.0)   # a lost etcd is asked again every second
        while not self._stop.is_set():
            self._resync.wait(timeout=30)
            self.beat()
            if self._stop.is_set():
                return
            try:
                if self._watch_id is not None:
                    self.ds.cancel_watch(self._watch_id)
                entries, rev = self.ds.snapshot(self.prefix)
                with self._cond:
                    old, self._data = self._data, {}
                    for e in entries:
                        if e.key.startswith(self.IGNORED):
                            continue
                        if _usable(e):
                            self._data[e.key] = e.value
                        elif e.key in old:   # keep the last good value of a corrupted key
                            self._data[e.key] = old[e.key]
                    self.revision = max(self.revision, rev)
                    self._bump()
                self._resync.clear()
                self._watch_id = self.ds.watch(self.prefix, self.apply_changes, start_revision=rev + 1)
                self.synced.set()
            except DatastoreUnavailable as e:
                log.warning("datastore resync failed, retrying: %s", e)
                self.ds.on_retry("watch-resync")
                retry.wait()


def _usable(e) -> bool:
    """Every record of ours is a JSON object: anything else (not JSON at all, a string, a
    list) is logged once and skipped, and the key keeps its last good value."""
    if isinstance(e.value, dict):
        return True
    report_corrupt(e.key, e.mod_revision, str(e.value) if isinstance(e.value, ValueError)
                   else f"a JSON {type(e.value).__name__}, not an object")
    return False
