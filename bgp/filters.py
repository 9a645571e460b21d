"""BGP filters (Calico's BGPFilter): ordered accept/reject rules on prefixes, per peer (pure).

A filter holds two rule lists, `importV4` (what we take from a peer) and `exportV4` (what we
announce to it). A peer names its filters in order; their rules are read as one list, and
the first rule that matches decides (Accept or Reject). A prefix no rule matches is accepted,
as in Calico. A rule matches on the prefix against its CIDR:

- Equal / NotEqual: the prefix is (is not) exactly the CIDR;
- In / NotIn: the prefix lies (does not lie) inside the CIDR, the CIDR itself included,
  with a prefix length in `prefixLength` min..max (default: the CIDR's length..32).

Import filters run after the import safety policy (bgp.imports): they can only narrow what
it accepts. Export filters decide what bgp.export announces to each peer.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["OPERATORS", "ACTIONS", "FilterRule", "BgpFilter", "Verdict", "decide"]

OPERATORS = ("Equal", "NotEqual", "In", "NotIn")
ACTIONS = ("Accept", "Reject")
DIRECTIONS = {"import": "importV4", "export": "exportV4"}


@dataclass(frozen=True)
class FilterRule:
    """One rule, in Calico's BGPFilterRuleV4 spelling (cidr, matchOperator, prefixLength,
    action)."""

    cidr: str
    match_operator: str
    action: str
    prefix_length: tuple[int, int] | None = None   # (min, max); In and NotIn only

    def __post_init__(self) -> None:
        try:
            net = ipaddress.IPv4Network(self.cidr)
        except ValueError as e:
            raise ValueError(f"cidr {self.cidr!r}: {e}") from None
        if self.match_operator not in OPERATORS:
            raise ValueError(f"match operator {self.match_operator!r}: expected one of "
                             f"{', '.join(OPERATORS)}")
        if self.action not in ACTIONS:
            raise ValueError(f"action {self.action!r}: expected Accept or Reject")
        if self.prefix_length is not None:
            lo, hi = self.prefix_length
            if self.match_operator not in ("In", "NotIn"):
                raise ValueError("a prefix length range goes with In or NotIn only")
            if not net.prefixlen <= lo <= hi <= 32:
                raise ValueError(f"prefix length {lo}-{hi}: must be within "
                                 f"{net.prefixlen}..32 (the CIDR's length up to 32), min <= max")

    def matches(self, net: ipaddress.IPv4Network) -> bool:
        rule = ipaddress.IPv4Network(self.cidr)
        if self.match_operator in ("Equal", "NotEqual"):
            return (net == rule) == (self.match_operator == "Equal")
        lo, hi = self.prefix_length or (rule.prefixlen, 32)
        inside = net.subnet_of(rule) and lo <= net.prefixlen <= hi
        return inside == (self.match_operator == "In")

    def describe(self) -> str:
        length = f" /{self.prefix_length[0]}-{self.prefix_length[1]}" if self.prefix_length else ""
        return f"{self.action} {self.match_operator} {self.cidr}{length}"

    @classmethod
    def from_dict(cls, d: Mapping) -> "FilterRule":
        pl = d.get("prefixLength")
        if pl:
            net = ipaddress.IPv4Network(d["cidr"])
            pl = (int(pl.get("min", net.prefixlen)), int(pl.get("max", 32)))
        return cls(cidr=d["cidr"], match_operator=d.get("matchOperator", "In"),
                   action=d["action"], prefix_length=pl or None)

    def to_dict(self) -> dict:
        d = {"action": self.action, "matchOperator": self.match_operator, "cidr": self.cidr}
        if self.prefix_length:
            d["prefixLength"] = {"min": self.prefix_length[0], "max": self.prefix_length[1]}
        return d


@dataclass(frozen=True)
class BgpFilter:
    name: str
    import_v4: tuple[FilterRule, ...] = ()
    export_v4: tuple[FilterRule, ...] = ()

    def rules(self, direction: str) -> tuple[FilterRule, ...]:
        return self.import_v4 if direction == "import" else self.export_v4

    @classmethod
    def from_dict(cls, d: Mapping) -> "BgpFilter":
        name = d["name"]
        try:
            return cls(name=name,
                       import_v4=tuple(FilterRule.from_dict(r) for r in d.get("importV4") or ()),
                       export_v4=tuple(FilterRule.from_dict(r) for r in d.get("exportV4") or ()))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"BGP filter {name}: {e}") from None

    def to_dict(self) -> dict:
        return {"name": self.name, "importV4": [r.to_dict() for r in self.import_v4],
                "exportV4": [r.to_dict() for r in self.export_v4]}


@dataclass(frozen=True)
class Verdict:
    """What a peer's filters say about one prefix: accepted, and which rule decided
    (filter "" when no rule matched: the default, accept)."""

    accepted: bool
    filter: str = ""
    rule: int = 0            # 1-based, within that filter's list for the direction
    text: str = ""

    @property
    def reason(self) -> str:
        if not self.filter:
            return "no filter rule matched (accepted)"
        return f"filter {self.filter} rule {self.rule} ({self.text})"


ACCEPT = Verdict(True)


def decide(prefix: str, filters: Sequence[BgpFilter], direction: str) -> Verdict:
    """The first matching rule of `filters` (in order) for direction "import" or "export"."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction {direction!r}: expected import or export")
    if not filters:
        return ACCEPT
    net = ipaddress.IPv4Network(prefix)
    for f in filters:
        for i, rule in enumerate(f.rules(direction), 1):
            if rule.matches(net):
                return Verdict(rule.action == "Accept", f.name, i, rule.describe())
    return ACCEPT
