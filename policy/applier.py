"""Write a compiled Ruleset into the kernel of the calling thread's network namespace.

`sync` replaces the whole `inet calico-lite` table in one transaction: if nft rejects any part,
nothing changes and the previous rules stay in force. `update` sends only what differs from the
last applied Ruleset (set and map elements, named sets and per-pod chains coming, going or
refilled, all in one transaction), falling back to `sync` when the change is structural (base
chains, maps, a set retyped) or the incremental transaction is refused (e.g. someone edited the
table).
An update that moves set and map elements, deletes chains and sets, and writes chains only with
rules the kernel already holds elsewhere (a pod added, relabelled or deleted, a namespace
relabelled) goes to the kernel as one nfnetlink batch of our own (policy.batch_plan,
policy.nfnl, policy.rule_templates) instead of through libnftables, whose every transaction
first reads the whole table's chains and sets; it is just as atomic (one BEGIN..END batch).
What creates sets or writes a rule text the kernel does not hold yet stays with libnftables
(and is learned from afterwards), and the full sync always does.
No other table is ever touched.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

from .batch_plan import plan_batch
from .nfnl import Batch, BatchError, NfnlSocket
from .nft import Nft, NftError
from .rule_templates import RuleTemplates
from .ruleset import Ruleset, render_delete, render_nft, render_update

log = logging.getLogger("calico_lite.policy")


@dataclass
class ApplyResult:
    """What one sync/update did; `mode` is sync, update or noop; `path` is how an update went
    (netlink: our own batch, libnftables: nft text); `refused` is why the kernel refused the
    incremental update that this sync replaced ("" when none was)."""

    mode: str
    seconds: float
    summary: str = ""
    bytes: int = 0
    path: str = "libnftables"
    refused: str = ""


def _changed_parts(old: Ruleset, new: Ruleset) -> tuple[Ruleset, Ruleset]:
    """old and new cut down to the sets and regular chains that are not the very same object
    on both sides (plus maps and base chains, which the diff always checks).

    policy.incremental hands over untouched parts unchanged, so diffing a pod event costs what
    the event touched, not the size of the table; for unrelated Rulesets this keeps everything.
    """
    def cut(rs: Ruleset, sets: set[str], chains: set[str]) -> Ruleset:
        return Ruleset({n: s for n, s in rs.sets.items() if n in sets}, rs.maps,
                       {n: c for n, c in rs.chains.items() if n in chains or c.hook}, rs.family, rs.table)
    sets = {n for n in old.sets.keys() | new.sets.keys() if old.sets.get(n) is not new.sets.get(n)}
    chains = {n for n in old.chains.keys() | new.chains.keys() if old.chains.get(n) is not new.chains.get(n)}
    return cut(old, sets, chains), cut(new, sets, chains)


class RulesetApplier:
    """Owns our table in one netns; create it (and its Nft) inside that netns."""

    def __init__(self, nft: Nft | None = None, netlink: bool = True):
        self._nft = nft or Nft()
        self._nfnl = NfnlSocket() if netlink else None   # None: every update through libnftables
        self._templates = RuleTemplates()
        self._lister: Nft | None = None
        self._applied: Ruleset | None = None

    @property
    def applied(self) -> Ruleset | None:
        """The Ruleset last confirmed in the kernel (None before the first sync)."""
        return self._applied

    def sync(self, ruleset: Ruleset) -> ApplyResult:
        """Atomically replace the whole table; raise NftError and keep the old table on failure."""
        text = render_nft(ruleset)
        start = time.perf_counter()
        try:
            self._nft.cmd(text)
        except NftError as e:
            log.error("policy sync rejected, previous rules stay in force: %s", e.message.strip()[:2000])
            raise
        self._applied = ruleset
        took = time.perf_counter() - start
        self._learn(ruleset, list(ruleset.chains.values()))
        stats = ruleset.stats()
        log.info("policy sync: %s in %.1f ms", " ".join(f"{k}={v}" for k, v in stats.items()), took * 1e3)
        return ApplyResult("sync", took, str(stats), len(text))

    def update(self, ruleset: Ruleset) -> ApplyResult:
        """Apply only the difference from the last applied Ruleset; sync when that is not possible."""
        if self._applied is None:
            return self.sync(ruleset)
        old, new = _changed_parts(self._applied, ruleset)
        batch, summary = plan_batch(old, new, self._templates) if self._nfnl else (None, "")
        if batch is not None:
            return self._send(batch, summary, ruleset)
        text, summary = render_update(old, new)
        if text is None:
            log.info("policy update is structural (%s): full sync", summary)
            return self.sync(ruleset)
        if not text:
            self._applied = ruleset
            return ApplyResult("noop", 0.0, summary)
        start = time.perf_counter()
        try:
            self._nft.cmd(text)
        except NftError as e:
            return self._refused(ruleset, summary, e.message.strip())
        took = time.perf_counter() - start
        self._applied = ruleset
        log.info("policy update: %s in %.1f ms", summary, took * 1e3)
        self._learn(ruleset, [c for n, c in new.chains.items() if old.chains.get(n) != c])
        return ApplyResult("update", took, summary, len(text))

    def _learn(self, ruleset: Ruleset, chains: list) -> None:
        """Keep templates of the rules libnftables just wrote (policy.rule_templates), so the
        next chain with the same rules goes as a netlink batch; best effort."""
        if self._nfnl is None or not chains:
            return
        try:
            self._templates.learn(self._nfnl, ruleset.family, ruleset.table, chains)
        except (OSError, BatchError, ValueError) as e:
            log.warning("policy rule templates not learned: %s", e)

    def _send(self, batch: Batch, summary: str, ruleset: Ruleset) -> ApplyResult:
        """The netlink path of update(); the kernel applies all of the batch or none of it."""
        if not batch.messages:
            self._applied = ruleset
            return ApplyResult("noop", 0.0, summary, path="netlink")
        start = time.perf_counter()
        assert self._nfnl is not None
        try:
            self._nfnl.send(batch)
        except BatchError as e:
            return self._refused(ruleset, summary, e.reason)
        took = time.perf_counter() - start
        self._applied = ruleset
        log.info("policy update (netlink): %s in %.1f ms", summary, took * 1e3)
        return ApplyResult("update", took, summary, path="netlink")

    def _refused(self, ruleset: Ruleset, summary: str, reason: str) -> ApplyResult:
        """The kernel refused an incremental update (nothing of it applied): load the whole
        table instead, and say why in the result (the node status shows it)."""
        log.warning("policy incremental update refused (%s), full sync instead: %s", summary, reason[:500])
        result = self.sync(ruleset)
        result.refused = reason[:1000]
        return result

    def drift(self) -> str:
        """"" when the kernel still holds the table we last applied, as far as a cheap
        fingerprint tells (its objects and elements counted); else what differs. Someone
        else's `nft flush ruleset` or `nft delete table` shows here, and the resync restores
        the table. Only our table is listed."""
        if self._applied is None:
            return ""
        if self._lister is None:
            self._lister = Nft(json_output=True)   # created in the thread (netns) that applies
        try:
            listing = self._lister.cmd(f"list table {self._applied.ref}")
        except NftError as e:
            return f"table {self._applied.ref} is gone ({e.message.strip()[:200]})"
        found = kernel_stats(listing)
        want = self._applied.stats()
        diff = {k: (found.get(k, 0), v) for k, v in want.items() if found.get(k, 0) != v}
        return ", ".join(f"{k} {got} instead of {v}" for k, (got, v) in diff.items())

    def remove(self) -> None:
        """Delete our table (and only ours); fine if it is already gone."""
        self._nft.cmd(render_delete())
        self._applied = None

    def close(self) -> None:
        self._nft.close()
        if self._nfnl is not None:
            self._nfnl.close()
        if self._lister is not None:
            self._lister.close()


def kernel_stats(listing: str) -> dict[str, int]:
    """Ruleset.stats() of a table as `nft -j list table` shows it (pure)."""
    out = {"chains": 0, "rules": 0, "sets": 0, "set_elements": 0, "map_elements": 0}
    for item in json.loads(listing or "{}").get("nftables", []):
        for kind, body in item.items():
            if kind in ("chain", "rule"):
                out[kind + "s"] += 1
            elif kind == "set":
                out["sets"] += 1
                out["set_elements"] += len(body.get("elem", []))
            elif kind == "map":
                out["map_elements"] += len(body.get("elem", []))
    return out
