"""Parse the lines ExaBGP 5.x writes to its API process into typed events (pure).

ExaBGP sends one JSON object per line (state changes, updates, notifications) and a bare
`done` / `error` acknowledgement after each command it read from us. Only IPv4 unicast
matters to us; other families are ignored rather than rejected.
"""
from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass

from .model import LearnedPath

FAMILY = "ipv4 unicast"


class MessageError(ValueError):
    """A line that looks like JSON from ExaBGP but does not have the expected shape."""


@dataclass(frozen=True)
class Ack:
    """ExaBGP's answer to one command we sent: `done` (ok) or `error`."""

    ok: bool
    text: str


@dataclass(frozen=True)
class PeerStateChange:
    """`neighbor-changes`: state is 'connected', 'up' or 'down'."""

    peer: str
    peer_as: int
    local: str
    state: str
    reason: str = ""


@dataclass(frozen=True)
class Update:
    """Prefixes a peer announced (with their path) and withdrew, in one UPDATE."""

    peer: str
    announced: tuple[tuple[str, LearnedPath], ...] = ()
    withdrawn: tuple[str, ...] = ()


@dataclass(frozen=True)
class EndOfRib:
    peer: str
    family: str


@dataclass(frozen=True)
class Notification:
    """A NOTIFICATION received from a peer."""

    peer: str
    code: int
    subcode: int
    message: str


@dataclass(frozen=True)
class Shutdown:
    """ExaBGP itself is shutting down."""


@dataclass(frozen=True)
class Other:
    """A valid line we do not act on (keepalive, open, fsm, other families, answers)."""

    kind: str
    text: str


@dataclass(frozen=True)
class NeighborList:
    """Answer to `show neighbor json`: (peer address, established?) for every neighbour."""

    peers: tuple[tuple[str, bool], ...]


Event = Ack | PeerStateChange | Update | EndOfRib | Notification | Shutdown | NeighborList | Other


def parse_line(line: str) -> Event:
    """Turn one line from ExaBGP into an event; MessageError if a JSON line is malformed."""
    text = line.strip()
    if text in ("done", "error"):
        return Ack(ok=text == "done", text=text)
    if text.startswith("["):
        return _neighbor_list(text)
    if not text.startswith("{"):
        return Other(kind="text", text=text)
    try:
        msg = json.loads(text)
    except json.JSONDecodeError as e:
        raise MessageError(f"invalid JSON from ExaBGP ({e}): {text[:200]}") from e
    if not isinstance(msg, dict):
        raise MessageError(f"ExaBGP JSON is not an object: {text[:200]}")
    if "type" not in msg and isinstance(msg.get("route"), dict) and isinstance(msg.get("peer"), dict):
        return _rib_entry(msg, text)
    kind = msg.get("type", "")
    if kind == "notification" and msg.get("notification") == "shutdown":
        return Shutdown()
    if kind not in ("state", "update", "notification"):
        return Other(kind=str(kind), text=text)
    neighbor = _obj(msg, "neighbor", text)
    peer = _str(_obj(neighbor, "address", text), "peer", text)
    if kind == "state":
        asn = neighbor.get("asn", {})
        return PeerStateChange(
            peer=peer,
            peer_as=int(asn.get("peer", 0)) if isinstance(asn, dict) else 0,
            local=str(neighbor.get("address", {}).get("local", "")),
            state=_str(neighbor, "state", text),
            reason=str(neighbor.get("reason", "")),
        )
    if kind == "notification":
        n = _obj(neighbor, "notification", text)
        return Notification(peer=peer, code=int(n.get("code", 0)), subcode=int(n.get("subcode", 0)),
                            message=str(n.get("message", "")))
    message = _obj(neighbor, "message", text)
    if "eor" in message:
        eor = message["eor"]
        return EndOfRib(peer=peer, family=f"{eor.get('afi', '')} {eor.get('safi', '')}")
    update = _obj(message, "update", text)
    return _update(peer, update, text)


def _rib_entry(msg: dict, text: str) -> Update:
    """One line of `show adj-rib in json` (show-routes-format v2): a route held from a peer."""
    peer = _str(msg["peer"], "address", text)
    nlri = _obj(msg["route"], "nlri", text)
    family = nlri.get("family", {})
    if f"{family.get('afi')} {family.get('safi')}" != FAMILY:
        return Update(peer=peer)
    next_hop = _str(nlri, "nexthop", text)
    _check_ip(next_hop, text)
    attributes = msg["route"].get("attributes", {})
    as_path = parse_as_path(attributes.get("as-path", []) if isinstance(attributes, dict) else [])
    originator, clusters = _reflection(attributes)
    (prefix,) = _prefixes([_str(nlri, "prefix", text)], text)
    return Update(peer=peer, announced=((prefix, LearnedPath(next_hop, peer, as_path,
                                                             originator, clusters)),))


def _neighbor_list(text: str) -> NeighborList:
    try:
        items = json.loads(text)
        return NeighborList(peers=tuple((str(n["peer"]["address"]), n.get("state") == "up")
                                        for n in items))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise MessageError(f"unexpected neighbour list from ExaBGP ({e}): {text[:200]}") from e


def _update(peer: str, update: dict, text: str) -> Update:
    attributes = update.get("attribute", {})
    as_path = parse_as_path(attributes.get("as-path", []) if isinstance(attributes, dict) else [])
    originator, clusters = _reflection(attributes)
    announced: list[tuple[str, LearnedPath]] = []
    by_next_hop = update.get("announce", {}).get(FAMILY, {})
    if not isinstance(by_next_hop, dict):
        raise MessageError(f"announce/{FAMILY} is not an object: {text[:200]}")
    for next_hop, nlris in by_next_hop.items():
        _check_ip(next_hop, text)
        for prefix in _prefixes(nlris, text):
            announced.append((prefix, LearnedPath(next_hop=next_hop, peer=peer, as_path=as_path,
                                                  originator_id=originator,
                                                  cluster_list=clusters)))
    withdrawn = _prefixes(update.get("withdraw", {}).get(FAMILY, []), text)
    return Update(peer=peer, announced=tuple(announced), withdrawn=tuple(withdrawn))


def _reflection(attributes) -> tuple[str, tuple[str, ...]]:
    """ORIGINATOR_ID and CLUSTER_LIST of a reflected path ('' and () when absent)."""
    if not isinstance(attributes, dict):
        return "", ()
    originator = attributes.get("originator-id", "")
    clusters = attributes.get("cluster-list", [])
    if isinstance(clusters, str):
        clusters = clusters.strip("[] ").split()
    return (str(originator) if originator else "",
            tuple(str(c) for c in clusters) if isinstance(clusters, list | tuple) else ())


def parse_as_path(value) -> tuple[int, ...]:
    """AS path from 5.x (`{"0": {"element": "as-sequence", "value": [..]}}`) or 4.x (list)."""
    if isinstance(value, list):
        return tuple(int(a) for a in value)
    if not isinstance(value, dict):
        raise MessageError(f"as-path of unexpected type: {value!r}")
    path: list[int] = []
    for key in sorted(value, key=lambda k: int(k) if str(k).isdigit() else 0):
        segment = value[key]
        if not isinstance(segment, dict) or not isinstance(segment.get("value"), list):
            raise MessageError(f"as-path segment of unexpected shape: {segment!r}")
        path.extend(int(a) for a in segment["value"])
    return tuple(path)


def _prefixes(nlris, text: str) -> list[str]:
    if not isinstance(nlris, list):
        raise MessageError(f"NLRI list expected: {text[:200]}")
    out = []
    for n in nlris:
        prefix = n.get("nlri") if isinstance(n, dict) else n  # compact encoder gives strings
        if not isinstance(prefix, str):
            raise MessageError(f"NLRI without prefix: {n!r}")
        try:
            out.append(str(ipaddress.IPv4Network(prefix)))
        except ValueError as e:
            raise MessageError(f"bad prefix {prefix!r} from ExaBGP") from e
    return out


def _check_ip(value: str, text: str) -> None:
    try:
        ipaddress.IPv4Address(value)
    except ValueError as e:
        raise MessageError(f"bad next hop {value!r}: {text[:200]}") from e


def _obj(parent: dict, key: str, text: str) -> dict:
    value = parent.get(key)
    if not isinstance(value, dict):
        raise MessageError(f"ExaBGP message without object {key!r}: {text[:200]}")
    return value


def _str(parent: dict, key: str, text: str) -> str:
    value = parent.get(key)
    if not isinstance(value, str):
        raise MessageError(f"ExaBGP message without string {key!r}: {text[:200]}")
    return value
