"""The agent's one shared view of the datastore: a snapshot kept current by a watch.

The controllers (routing, policy) read it and wait on it; none of them talks to etcd for
reads. A broken watch triggers a full resync, so a restarted etcd heals by itself.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any

from calico_lite import keys
from calico_lite.datastore import Change, Datastore, DatastoreUnavailable

log = logging.getLogger("calico-lite.cache")


class Cache:
    # reports the agents write about themselves: outputs, not inputs, so not cached (a
    # controller publishing its status must not wake itself up)
    IGNORED = (keys.STATUS, keys.POLICY_STATUS)

    def __init__(self, ds: Datastore, prefix: str = keys.ROOT):
        self.ds = ds
        self.prefix = prefix
        self._data: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._generation = 0
        self.revision = 0  # the store revision the cached data reflects (at least)
        self._resync = threading.Event()
        self._stop = threading.Event()
        self._watch_id: int | None = None
        self.synced = threading.Event()

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

    def wait_change(self, seen_generation: int, timeout: float) -> int:
        """Block until the generation moves past seen_generation (or timeout); return it."""
        with self._cond:
            self._cond.wait_for(lambda: self._generation != seen_generation, timeout=timeout)
            return self._generation

    # --- keeping it current --------------------------------------------------------------
    def _bump(self) -> None:
        self._generation += 1
        self._cond.notify_all()

    def _apply(self, changes: list[Change] | None) -> None:
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
                else:
                    self._data[c.key] = c.value
                self.revision = max(self.revision, c.mod_revision)
            self._bump()

    def _sync_loop(self) -> None:
        while not self._stop.is_set():
            self._resync.wait(timeout=30)
            if self._stop.is_set():
                return
            try:
                if self._watch_id is not None:
                    self.ds.cancel_watch(self._watch_id)
                entries, rev = self.ds.snapshot(self.prefix)
                with self._cond:
                    self._data = {e.key: e.value for e in entries
                                  if not e.key.startswith(self.IGNORED)}
                    self.revision = max(self.revision, rev)
                    self._bump()
                self._resync.clear()
                self._watch_id = self.ds.watch(self.prefix, self._apply, start_revision=rev + 1)
                self.synced.set()
            except DatastoreUnavailable as e:
                log.warning("datastore resync failed, retrying: %s", e)
                time.sleep(1)
