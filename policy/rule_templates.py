"""Rules written without libnftables: the kernel's own bytecode of an identical rule, replayed.

A new pod's chains hold rules that other pods' chains already hold word for word (the same
policy rule, the same set names, the same ports); only the comment differs, and that is plain
userdata. So instead of compiling nft's rule language again (libnftables, whose transaction
first reads the whole table's chains and sets), the applier keeps, per rule text without its
comment, the expressions the kernel holds for it (dumped once over netlink), and writes a new
rule as those expressions plus its comment. A rule with an anonymous set (`meta l4proto . th
dport { tcp . 80 }`) carries that set along: its attributes and elements are dumped once too,
and each replayed rule gets a fresh copy created in the same batch, as libnftables does.

A rule text never seen in the kernel has no template: that update goes through libnftables,
and afterwards the chains it wrote are learned. Tests compare the resulting kernel tables
with what libnftables writes (tests/integration/test_policy_netlink_batch.py).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from .nfnl import NLM_F_CREATE, Batch, BatchError, NfnlSocket, _attr, _str
from .ruleset import Chain, Rule

NFT_MSG_NEWCHAIN, NFT_MSG_NEWRULE, NFT_MSG_GETRULE = 3, 6, 7
NFT_MSG_NEWSET, NFT_MSG_GETSET, NFT_MSG_NEWSETELEM, NFT_MSG_GETSETELEM = 9, 10, 12, 13
NLM_F_APPEND = 0x800
NLA_TYPE_MASK = 0x3FFF
NFTA_RULE_CHAIN, NFTA_RULE_EXPRESSIONS, NFTA_RULE_USERDATA = 2, 4, 7
NFTA_SET_NAME, NFTA_SET_ID, NFTA_SET_HANDLE = 2, 10, 16
MAX_TEMPLATES = 20000
# what NEWSET takes of what GETSET answers: flags, key type/len, data type/len, policy, desc,
# timeout, gc interval, userdata, object type, expressions (not table, name, handle, id, nor
# what newer kernels add to dumps only, such as the backend's type and the element count)
SET_INPUT = frozenset({3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 15, 17, 18})


def parse(data: bytes) -> list[tuple[int, bytes]]:
    """Netlink attributes as (type without flags, payload)."""
    out, offset = [], 0
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        out.append((kind & NLA_TYPE_MASK, data[offset + 4:offset + length]))
        offset += length + (-length % 4)
    return out


def without(data: bytes, drop: tuple[int, ...], keep: frozenset[int] | None = None) -> bytes:
    """The attributes in `data` (raw, flags kept) except those of the types in `drop` (and,
    given `keep`, only those in it)."""
    out, offset = b"", 0
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        end = offset + length + (-length % 4)
        if kind & NLA_TYPE_MASK not in drop and (keep is None or kind & NLA_TYPE_MASK in keep):
            out += data[offset:end]
        offset = end
    return out


def _text(payload: bytes) -> str:
    return payload.rstrip(b"\0").decode()


@dataclass(frozen=True)
class AnonSet:
    attrs: bytes      # as dumped (raw attributes), only what NEWSET takes (SET_INPUT)
    elements: bytes   # the NFTA_LIST_ELEM attributes, as dumped


@dataclass(frozen=True)
class Template:
    expressions: tuple[tuple[bytes, bytes, str], ...]  # (name, data, anonymous set it looks up or "")
    sets: tuple[tuple[str, AnonSet], ...]


def rule_key(rule: Rule) -> str:
    return Rule(rule.matches, rule.verdict).render()


def comment_userdata(comment: str) -> bytes | None:
    """The userdata libnftables stores for `comment "..."` as Rule.render writes it (None:
    a comment whose escaping this does not reproduce)."""
    text = comment[:120].replace('"', "'")
    raw = text.encode() + b"\0"
    if "\\" in text or len(raw) > 128:
        return None
    return bytes([0, len(raw)]) + raw   # NFTNL_UDATA_RULE_COMMENT


class RuleTemplates:
    """Rule text (without comment) -> Template, learned from the kernel's table."""

    def __init__(self) -> None:
        self._known: dict[str, Template] = {}

    def get(self, rule: Rule) -> Template | None:
        return self._known.get(rule_key(rule))

    def learn(self, sock: NfnlSocket, family: str, table: str, chains: list[Chain]) -> None:
        """Dump the rules of these chains (as the kernel holds them now, in the order of
        `chains`' rules) and keep a template for every rule text not yet known."""
        wanted = {c.name: c for c in chains if not c.hook and any(rule_key(r) not in self._known for r in c.rules)}
        if not wanted:
            return
        if len(self._known) > MAX_TEMPLATES:
            self._known.clear()
        request = _str(1, table) + (_str(2, next(iter(wanted))) if len(wanted) == 1 else b"")
        by_chain: dict[str, list[dict[int, bytes]]] = {}
        for msg in sock.query(NFT_MSG_GETRULE, request, family):
            attrs = dict(parse(msg))
            by_chain.setdefault(_text(attrs.get(NFTA_RULE_CHAIN, b"")), []).append(attrs)
        for name, chain in wanted.items():
            kernel = by_chain.get(name, [])
            if len(kernel) != len(chain.rules):
                continue   # not the chain we wrote: learn nothing from it
            for rule, attrs in zip(chain.rules, kernel):
                key = rule_key(rule)
                ours = attrs.get(NFTA_RULE_USERDATA, b"") == (comment_userdata(rule.comment) if rule.comment else b"")
                if key not in self._known and ours:  # (its comment says it is the rule we wrote)
                    template = _template(sock, family, table, attrs.get(NFTA_RULE_EXPRESSIONS, b""))
                    if template is not None:
                        self._known[key] = template

    def write_chain(self, batch: Batch, chain: Chain, new: bool) -> bool:
        """Add to the batch the messages that create (or flush) the chain and write its rules;
        False, with the batch untouched, when some rule has no template."""
        templates = [self.get(r) for r in chain.rules]
        comments = [comment_userdata(r.comment) if r.comment else b"" for r in chain.rules]
        if chain.comment or chain.hook or None in templates or None in comments:
            return False
        t = batch.table
        where = f"{batch.family} {t} {chain.name}"
        if new:
            batch.add(NFT_MSG_NEWCHAIN, NLM_F_CREATE, _str(1, t) + _str(3, chain.name), f"add chain {where}")
        else:
            batch.add(8, 0, _str(1, t) + _str(2, chain.name), f"flush chain {where}")  # NFT_MSG_DELRULE
        for rule, template, udata in zip(chain.rules, templates, comments):
            assert template is not None and udata is not None
            _write_rule(batch, chain.name, rule, template, udata)
        return True


def _write_rule(batch: Batch, chain: str, rule: Rule, template: Template, udata: bytes) -> None:
    t = batch.table
    ids = {}
    for name, anon in template.sets:
        batch.next_id += 1
        ids[name] = struct.pack(">I", batch.next_id)
        attrs = _str(1, t) + _str(NFTA_SET_NAME, "__set%d") + _attr(NFTA_SET_ID, ids[name])
        attrs += anon.attrs
        batch.add(NFT_MSG_NEWSET, NLM_F_CREATE, attrs, f"add anonymous set for rule in {chain}")
        elems = _str(1, t) + _str(2, "__set%d") + _attr(3, anon.elements, nested=True) + _attr(4, ids[name])
        batch.add(NFT_MSG_NEWSETELEM, NLM_F_CREATE, elems, f"add anonymous set elements for rule in {chain}")
    exprs = b""
    for name, data, anon_name in template.expressions:
        if anon_name:  # NFTA_LOOKUP_SET -> the new set, by id
            data = _str(1, "__set%d") + _attr(4, ids[anon_name]) + without(data, (1, 4))
        exprs += _attr(1, _attr(1, name) + _attr(2, data, nested=True), nested=True)
    attrs = _str(1, t) + _str(2, chain) + _attr(NFTA_RULE_EXPRESSIONS, exprs, nested=True)
    if udata:
        attrs += _attr(NFTA_RULE_USERDATA, udata)
    batch.add(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, attrs, f"add rule {batch.family} {t} {chain} {rule.render()}")


def _template(sock: NfnlSocket, family: str, table: str, expressions: bytes) -> Template | None:
    """The template of one dumped rule, its anonymous sets dumped too; None if it uses
    anything this cannot replay."""
    exprs, sets = [], []
    for _kind, elem in parse(expressions):
        fields = dict(parse(elem))
        name, data = fields.get(1, b""), fields.get(2, b"")
        anon = ""
        if _text(name) in ("dynset", "objref"):
            return None
        if _text(name) == "lookup":
            set_name = _text(dict(parse(data)).get(1, b""))
            if set_name.startswith("__set"):
                try:
                    sets.append((set_name, _anon_set(sock, family, table, set_name)))
                except BatchError:
                    return None
                anon = set_name
        exprs.append((name, data, anon))
    return Template(tuple(exprs), tuple(sets))


def _anon_set(sock: NfnlSocket, family: str, table: str, name: str) -> AnonSet:
    (found,) = sock.query(NFT_MSG_GETSET, _str(1, table) + _str(2, name), family, dump=False)
    attrs = without(found, (), SET_INPUT)
    elements = b""
    for msg in sock.query(NFT_MSG_GETSETELEM, _str(1, table) + _str(2, name), family):
        for kind, payload in parse(msg):
            if kind == 3:  # NFTA_SET_ELEM_LIST_ELEMENTS
                elements += payload
    return AnonSet(attrs, elements)
