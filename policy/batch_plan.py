"""Which incremental updates can skip libnftables, and the netlink batch that applies them (pure).

An update qualifies when it moves elements of existing sets and maps (of types `policy.nfnl`
encodes), deletes chains or sets, and writes chains only with rules the kernel already holds
somewhere word for word (`policy.rule_templates`): a pod relabelled, a namespace relabelled, a
pod deleted, and a new pod whose policies already select another pod. Anything else (a rule
text never seen, a new set, an interval set changing) keeps the libnftables transaction of
`policy.ruleset.render_update`, which compiles nft's rule language.

The batch runs in the same order as that transaction (see `render_update`): dispatch entries
and elements that go away, chains created or refilled, elements that come, dispatch entries that come, chains nothing
jumps to any more, sets no rule names any more.
"""
from __future__ import annotations

from .nfnl import MAX_BATCH_BYTES, Batch, supported
from .rule_templates import RuleTemplates
from .ruleset import Ruleset, _is_structural


def _set_changes(old: Ruleset, new: Ruleset) -> tuple[list, list, str] | None:
    """(deletes, adds) per kept set as (name, type, elements), or None with nothing to say
    when some change needs libnftables; the third item counts elements."""
    dels, adds, gone_n, came_n = [], [], 0, 0
    for name, s in new.sets.items():
        if name not in old.sets:
            return None
        gone = sorted(old.sets[name].elements - s.elements)
        came = sorted(s.elements - old.sets[name].elements)
        if not gone and not came:
            continue
        if not supported(s.type, s.interval):
            return None
        if gone:
            dels.append((name, s.type, gone))
        if came:
            adds.append((name, s.type, came))
        gone_n, came_n = gone_n + len(gone), came_n + len(came)
    return dels, adds, f"elem-{gone_n} elem+{came_n}"


def plan_batch(old: Ruleset, new: Ruleset, templates: RuleTemplates | None = None) -> tuple[Batch | None, str]:
    """(the netlink batch turning `old` into `new`, a summary), or (None, why not) when the
    update needs libnftables. `old` and `new` are as `policy.applier._changed_parts` cuts them."""
    if _is_structural(old, new):
        return None, "structural"
    written = [(c, name not in old.chains) for name, c in new.chains.items()
               if not c.hook and old.chains.get(name) != c]
    if written and templates is None:
        return None, "chains written"
    sets = _set_changes(old, new)
    if sets is None:
        return None, "a set is created or an interval set changes"
    batch = Batch(new.family, new.table)
    map_adds, counts = [], {"map-": 0, "map+": 0}
    for name, m in new.maps.items():
        if not supported(m.key_type, False):
            return None, f"map {name} key type {m.key_type}"
        before, after = old.maps[name].as_dict(), m.as_dict()
        gone = [k for k, c in before.items() if after.get(k) != c]
        came = {k: c for k, c in after.items() if before.get(k) != c}
        if gone:
            batch.elements(False, name, m.key_type, gone)
        if came:
            map_adds.append((name, m.key_type, came))
        counts["map-"] += len(gone)
        counts["map+"] += len(came)
    dels, adds, elem_summary = sets
    for name, kind, elems in dels:
        batch.elements(False, name, kind, elems)
    for chain, is_new in written:
        assert templates is not None
        if not templates.write_chain(batch, chain, is_new):
            return None, f"chain {chain.name} has a rule never seen in the kernel"
    for name, kind, elems in adds:
        batch.elements(True, name, kind, elems)
    for name, kind, came in map_adds:
        batch.elements(True, name, kind, list(came), came)
    chains_gone = [n for n, c in old.chains.items() if not c.hook and n not in new.chains]
    for name in chains_gone:
        batch.delete_chain(name)
    sets_gone = [n for n in old.sets if n not in new.sets]
    for name in sets_gone:
        batch.delete_set(name)
    if batch.size() > MAX_BATCH_BYTES:
        return None, f"a batch of {batch.size()} bytes"
    made = sum(1 for _, is_new in written if is_new)
    summary = " ".join([f"{k}{v}" for k, v in counts.items() if v] + [elem_summary] +
                       [f"chain+{made}"] * bool(made) + [f"chain~{len(written) - made}"] * bool(len(written) - made) +
                       [f"chain-{len(chains_gone)}"] * bool(chains_gone) + [f"set-{len(sets_gone)}"] * bool(sets_gone))
    return batch, summary
