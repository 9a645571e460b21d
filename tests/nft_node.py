"""A test namespace with one worker thread inside it that owns a RulesetApplier (libnftables
binds to the namespace it is created in, so every call must run on that thread)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from plugin.netns import enter
from policy.applier import RulesetApplier


class NftNode:
    def __init__(self, netns: str):
        self.netns = netns
        self.worker = ThreadPoolExecutor(1, initializer=enter, initargs=(f"/var/run/netns/{netns}",))
        self.applier: RulesetApplier = self.call(RulesetApplier)

    def call(self, fn, *args):
        return self.worker.submit(fn, *args).result()
