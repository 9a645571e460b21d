"""The compiled nftables table as plain values, its nft text, and the incremental diff (pure).

Elements and rules are kept in nft's own syntax so that diffing two Rulesets is set arithmetic
and the text the applier sends is exactly what an operator sees in `nft list table`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

FAMILY = "inet"
TABLE = "calico-lite"


def quote(text: str) -> str:
    """An nft string literal (interface names, comments)."""
    return '"' + text.replace("\\", "\\\\").replace('"', "'") + '"'


@dataclass(frozen=True)
class NftSet:
    """A named set; `elements` are nft element literals such as `10.0.0.1` or `"cali1" . 10.0.0.1`."""

    name: str
    type: str
    interval: bool = False
    elements: frozenset[str] = frozenset()
    comment: str = ""

    def definition(self) -> tuple[str, str, bool]:
        """What cannot change without recreating the set."""
        return (self.name, self.type, self.interval)


@dataclass(frozen=True)
class VerdictMap:
    """ifname -> jump chain: the per-packet dispatch into a pod's chain."""

    name: str
    key_type: str
    elements: tuple[tuple[str, str], ...] = ()  # (interface, chain), sorted

    def as_dict(self) -> dict[str, str]:
        return dict(self.elements)


@dataclass(frozen=True)
class Rule:
    matches: tuple[str, ...]
    verdict: str
    comment: str = ""

    def render(self) -> str:
        parts = [*self.matches] + ([self.verdict] if self.verdict else [])  # a vmap is its own verdict
        if self.comment:
            parts.append(f"comment {quote(self.comment[:120])}")  # nft caps comments at 128 bytes
        return " ".join(parts)


@dataclass(frozen=True)
class Chain:
    """A chain; base chains carry a hook (forward, input, postrouting) and a type (filter, or
    nat for NAT outgoing) and are rendered after everything else."""

    name: str
    rules: tuple[Rule, ...] = ()
    hook: str | None = None
    priority: str = "filter"
    policy: str = "accept"
    comment: str = ""
    type: str = "filter"


@dataclass
class Ruleset:
    """The whole `inet calico-lite` table for one node."""

    sets: dict[str, NftSet] = field(default_factory=dict)
    maps: dict[str, VerdictMap] = field(default_factory=dict)
    chains: dict[str, Chain] = field(default_factory=dict)
    family: str = FAMILY
    table: str = TABLE

    def stats(self) -> dict[str, int]:
        return {"chains": len(self.chains),
                "rules": sum(len(c.rules) for c in self.chains.values()),
                "sets": len(self.sets),
                "set_elements": sum(len(s.elements) for s in self.sets.values()),
                "map_elements": sum(len(m.elements) for m in self.maps.values())}

    @property
    def ref(self) -> str:
        return f"{self.family} {self.table}"


# ---------------------------------------------------------------- full text

def _elements_block(items: list[str], indent: str) -> list[str]:
    if not items:
        return []
    body = (",\n" + indent + "  ").join(items)
    return [f"{indent}elements = {{ {body} }}"]


def _render_set(s: NftSet) -> list[str]:
    lines = [f"  set {s.name} {{", f"    type {s.type}"]
    if s.interval:
        lines.append("    flags interval")
    if s.comment:
        lines.append(f"    comment {quote(s.comment)}")
    lines += _elements_block(sorted(s.elements), "    ")
    return lines + ["  }"]


def _map_element(key: str, chain: str) -> str:
    return f"{quote(key)} : jump {chain}"


def _render_map(m: VerdictMap) -> list[str]:
    lines = [f"  map {m.name} {{", f"    type {m.key_type} : verdict"]
    lines += _elements_block([_map_element(k, c) for k, c in m.elements], "    ")
    return lines + ["  }"]


def _render_chain(c: Chain) -> list[str]:
    lines = [f"  chain {c.name} {{"]
    if c.hook:
        lines.append(f"    type {c.type} hook {c.hook} priority {c.priority}; policy {c.policy};")
    if c.comment:
        lines.append(f"    comment {quote(c.comment)}")
    lines += [f"    {r.render()}" for r in c.rules]
    return lines + ["  }"]


def render_nft(rs: Ruleset) -> str:
    """nft -f text that replaces the whole table in one transaction (add, delete, define).

    Order matters to nft: sets, then regular chains, then the maps that jump to them, then the
    base chains that use the maps.
    """
    lines = [f"table {rs.ref}", f"delete table {rs.ref}", f"table {rs.ref} {{"]
    for s in rs.sets.values():
        lines += _render_set(s)
    for c in rs.chains.values():
        if not c.hook:
            lines += _render_chain(c)
    for m in rs.maps.values():
        lines += _render_map(m)
    for c in rs.chains.values():
        if c.hook:
            lines += _render_chain(c)
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_delete(rs_ref: str = f"{FAMILY} {TABLE}") -> str:
    """Remove our table (and only ours); a no-op if it is absent."""
    return f"table {rs_ref}\ndelete table {rs_ref}\n"


# ---------------------------------------------------------------- incremental

def _set_declaration(t: str, s: NftSet) -> str:
    """One `add set` command creating the set with its elements (for sets a change brings in)."""
    parts = [f"type {s.type};"]
    if s.interval:
        parts.append("flags interval;")
    if s.comment:
        parts.append(f"comment {quote(s.comment)};")
    if s.elements:
        parts.append(f"elements = {{ {', '.join(sorted(s.elements))} }};")
    return f"add set {t} {s.name} {{ {' '.join(parts)} }}"


def _is_structural(old: Ruleset, new: Ruleset) -> str | None:
    """Why the change needs a full sync, or None when the incremental path can express it.

    Sets and regular chains may come and go; what exists on both sides must keep its definition
    (nft cannot retype a set or change a set's or chain's comment in place), and maps and base
    chains are fixed by the compiler, so a change there means a new table shape.
    """
    if (old.family, old.table) != (new.family, new.table):
        return "table renamed"
    for name in old.sets.keys() & new.sets.keys():
        a, b = old.sets[name], new.sets[name]
        if a.definition() != b.definition() or a.comment != b.comment:
            return f"set {name} retyped"
    if {n: m.key_type for n, m in old.maps.items()} != {n: m.key_type for n, m in new.maps.items()}:
        return "maps added, removed or retyped"
    old_base = {n: c for n, c in old.chains.items() if c.hook}
    new_base = {n: c for n, c in new.chains.items() if c.hook}
    if old_base != new_base:
        return "base chains changed"
    for name in old.chains.keys() & new.chains.keys():
        if bool(old.chains[name].hook) != bool(new.chains[name].hook):
            return f"chain {name} became or stopped being a base chain"
        if old.chains[name].comment != new.chains[name].comment:
            return f"chain {name} comment changed"
    return None


def render_update(old: Ruleset, new: Ruleset) -> tuple[str | None, str]:
    """(nft text of ONE transaction turning `old` into `new`, or None if a full sync is needed;
    a short summary). An empty text means nothing changed.

    Order inside the transaction, so that nothing is referenced before it exists or deleted while
    still referenced: drop dispatch entries and set elements that go away; create new sets (with
    their elements); create new chains and flush-and-refill changed ones (their rules may name the
    new sets); add elements to kept sets and dispatch entries (which jump to the new chains); flush
    and delete chains nothing jumps to any more; last, delete sets no rule names any more (every
    rule that named one sat in a chain flushed above, since a rule's text carries the set's name).
    It is one function so that this order reads top to bottom as the transaction runs.
    """
    reason = _is_structural(old, new)
    if reason:
        return None, reason
    t = new.ref
    out: list[str] = []
    counts = {"map-": 0, "map+": 0, "elem-": 0, "elem+": 0, "set+": 0, "set-": 0,
              "chain+": 0, "chain~": 0, "chain-": 0}
    map_adds: list[str] = []
    for name, m in new.maps.items():
        before, after = old.maps[name].as_dict(), m.as_dict()
        gone = [k for k, c in before.items() if after.get(k) != c]
        came = [k for k, c in after.items() if before.get(k) != c]
        if gone:
            out.append(f"delete element {t} {name} {{ {', '.join(quote(k) for k in gone)} }}")
        if came:
            map_adds.append(f"add element {t} {name} {{ {', '.join(_map_element(k, after[k]) for k in came)} }}")
        counts["map-"] += len(gone)
        counts["map+"] += len(came)
    elem_adds: list[str] = []
    for name, s in new.sets.items():
        if name not in old.sets:
            continue
        gone = sorted(old.sets[name].elements - s.elements)
        came = sorted(s.elements - old.sets[name].elements)
        if gone:
            out.append(f"delete element {t} {name} {{ {', '.join(gone)} }}")
        if came:
            elem_adds.append(f"add element {t} {name} {{ {', '.join(came)} }}")
        counts["elem-"] += len(gone)
        counts["elem+"] += len(came)
    for name, s in new.sets.items():
        if name not in old.sets:
            out.append(_set_declaration(t, s))
            counts["set+"] += 1
    for name, c in new.chains.items():
        if c.hook:
            continue
        prev = old.chains.get(name)
        if prev == c:
            continue
        if prev is None:
            out.append(f"add chain {t} {name}" + (f" {{ comment {quote(c.comment)}; }}" if c.comment else ""))
            counts["chain+"] += 1
        else:
            out.append(f"flush chain {t} {name}")
            counts["chain~"] += 1
        out += [f"add rule {t} {name} {r.render()}" for r in c.rules]
    out += elem_adds + map_adds
    for name, c in old.chains.items():
        if not c.hook and name not in new.chains:
            out += [f"flush chain {t} {name}", f"delete chain {t} {name}"]
            counts["chain-"] += 1
    for name in old.sets:
        if name not in new.sets:
            out.append(f"delete set {t} {name}")
            counts["set-"] += 1
    summary = " ".join(f"{k}{v}" for k, v in counts.items() if v) or "no change"
    return ("\n".join(out) + "\n") if out else "", summary
