"""Pure rendering of ExaBGP 5.x configuration and environment from plain data.

Kept apart from the Speaker so the exact text ExaBGP gets can be unit-tested without
starting anything.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from .bfd import BfdConfig


@dataclass(frozen=True)
class PeerConfig:
    """One BGP neighbour of this node."""

    address: str
    peer_as: int
    hold_time: int = 9
    passive: bool = False        # never connect out; wait for the peer (needs listen=True)
    md5_password: str | None = None
    description: str = ""
    route_reflector_client: bool = False   # we reflect to it (only if we have a cluster_id)
    # import limit (bgp.imports; 0: its default); ours, not ExaBGP's: a change reloads nothing
    max_prefixes: int = field(default=0, compare=False)
    # what we announce to it and take from it (bgp.export, bgp.filters): ours too, no reload
    communities: tuple[str, ...] = field(default=(), compare=False)
    large_communities: tuple[str, ...] = field(default=(), compare=False)
    filters: tuple[str, ...] = field(default=(), compare=False)   # BGPFilter names, in order
    # BFD with this peer (bgp.bfd; None: off); ours too, not ExaBGP's: a change reloads nothing
    bfd: BfdConfig | None = field(default=None, compare=False)


@dataclass(frozen=True)
class SpeakerConfig:
    """This node's BGP identity and neighbours."""

    router_id: str
    local_address: str
    local_as: int
    peers: list[PeerConfig] = field(default_factory=list)
    listen: bool = False         # bind local_address:port for incoming sessions (node mesh)
    port: int = 179
    graceful_restart: int = 0    # restart time advertised (RFC 4724 capability); 0: none
    cluster_id: str = ""         # set: this node is a route reflector (bgp.reflect)

    def __post_init__(self) -> None:
        for what, value in (("router_id", self.router_id), ("local_address", self.local_address)):
            try:
                ipaddress.IPv4Address(value)
            except ValueError as e:
                raise ValueError(f"SpeakerConfig.{what}: {value!r} is not an IPv4 address") from e
        seen: set[str] = set()
        for p in self.peers:
            ipaddress.IPv4Address(p.address)
            if p.address in seen:
                raise ValueError(f"SpeakerConfig: peer {p.address} listed twice")
            if p.address == self.local_address:
                raise ValueError(f"SpeakerConfig: peer {p.address} is our own local_address")
            seen.add(p.address)
            if p.passive and not self.listen:
                raise ValueError(f"SpeakerConfig: passive peer {p.address} needs listen=True")
            if not 0 <= p.hold_time <= 65535 or 0 < p.hold_time < 3:
                raise ValueError(f"SpeakerConfig: peer {p.address} hold_time {p.hold_time} "
                                 "must be 0 or 3..65535")
        if not 0 <= self.graceful_restart <= 4095:
            raise ValueError(f"SpeakerConfig: graceful_restart {self.graceful_restart} must be "
                             "0..4095 seconds")
        if self.cluster_id:
            try:
                ipaddress.IPv4Address(self.cluster_id)
            except ValueError as e:
                raise ValueError(f"SpeakerConfig.cluster_id: {self.cluster_id!r} is not an "
                                 "IPv4 address") from e


def bfd_peers(cfg: SpeakerConfig) -> dict[str, BfdConfig]:
    """peer address -> its BFD settings, for the peers that have BFD."""
    return {p.address: p.bfd for p in cfg.peers if p.bfd is not None}


PROCESS_NAME = "calico-lite-relay"


def render_config(cfg: SpeakerConfig, relay_command: list[str]) -> str:
    """ExaBGP 5.x configuration: one process (the relay) and one neighbour block per peer.

    Every neighbour sends its updates and state changes to the relay as parsed JSON. No
    static routes: announcements come from the Speaker over the API so they can change
    without a reload.
    """
    for arg in relay_command:
        if any(c.isspace() or c in ';{}"\'' for c in arg):
            raise ValueError(f"relay command argument {arg!r} cannot be written in an ExaBGP config")
    out = [
        f"process {PROCESS_NAME} {{",
        f"    run {' '.join(relay_command)};",
        "    encoder json;",
        "}",
        "",
    ]
    for p in cfg.peers:
        out += [f"neighbor {p.address} {{"]
        if p.description:
            out.append(f"    description \"{_safe(p.description)}\";")
        out += [
            f"    router-id {cfg.router_id};",
            f"    local-address {cfg.local_address};",
            f"    local-as {cfg.local_as};",
            f"    peer-as {p.peer_as};",
            f"    hold-time {p.hold_time};",
        ]
        if p.passive:
            out.append("    passive true;")
        if p.md5_password:
            out.append(f"    md5-password \"{_safe(p.md5_password)}\";")
        out += ["    capability {", "        route-refresh;"]
        if cfg.graceful_restart:
            out.append(f"        graceful-restart {cfg.graceful_restart};")
        out += [
            "    }",
            "    family {",
            "        ipv4 unicast;",
            "    }",
            "    api {",
            f"        processes [ {PROCESS_NAME} ];",
            "        neighbor-changes;",
            "        receive {",
            "            parsed;",
            "            update;",
            "            notification;",
            "        }",
            "    }",
            "}",
            "",
        ]
    return "\n".join(out)


def _safe(text: str) -> str:
    if any(c in text for c in '"\n;{}\\'):
        raise ValueError(f"{text!r} cannot be written in an ExaBGP config")
    return text


def exabgp_env(cfg: SpeakerConfig, workdir: Path, log_to_file: bool = True) -> dict[str, str]:
    """Environment variables for `exabgp server FILE` (added to the caller's environment).

    No privilege drop (we are root in a netns and need to bind 179), no CLI pipes, no
    daemonising (the Speaker supervises the child), no listening unless asked to.
    """
    env = {
        "exabgp_daemon_user": "root",
        "exabgp_daemon_drop": "false",
        "exabgp_daemon_daemonize": "false",
        "exabgp_api_cli": "false",
        "exabgp_api_ack": "true",
        "exabgp_api_encoder": "json",
        "exabgp_api_respawn": "true",
        "exabgp_api_show-routes-format": "v2",   # `show adj-rib in json`: one route a line
        "exabgp_log_destination": str(Path(workdir) / "exabgp.log") if log_to_file else "stderr",
        "exabgp_log_level": "INFO",
        "exabgp_log_packets": "false",
        "exabgp_log_routes": "false",
        "exabgp_log_statistics": "false",
        "exabgp_tcp_port": str(cfg.port),
        "exabgp_tcp_bind": cfg.local_address if cfg.listen else "",
        "exabgp_bgp_passive": "false",
        "exabgp_tcp_attempts": "0",
    }
    return env
