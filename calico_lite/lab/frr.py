"""FRR (zebra + bgpd, + bfdd for peers with BFD) as a top-of-rack or spine router inside a network namespace.

The lab and the BGP tests need a real BGP router to peer with. FRR runs here without
systemd: each daemon is started with `ip netns exec NS`, with every file (config, PID,
zserv socket, vty sockets, logs) under one run directory owned by frr:frr, so several
routers coexist on one machine and `stop()` can kill exactly what it started.
"""
from __future__ import annotations

import grp
import json
import pwd
import shutil
import stat
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bgp.process import kill_pids, pid_alive

FRR_LIB = Path("/usr/lib/frr")
DAEMONS = ("zebra", "bgpd")
BFD_DAEMON = "bfdd"      # started too when the config has a `neighbor X bfd`

AsnSpec = int | str  # a number, or 'external' / 'internal' for FRR's remote-as keywords


class FrrError(RuntimeError):
    """An FRR daemon failed to start or a vtysh command failed."""


def render_frr_config(
    hostname: str,
    asn: int,
    router_id: str,
    neighbors: Sequence[tuple[str, AsnSpec]] = (),
    listen_ranges: Sequence[tuple[str, AsnSpec]] = (),
    redistribute_connected: bool = False,
    *,
    maximum_paths: int = 8,
    multipath_relax: bool = True,
    networks: Sequence[str] = (),
    ip_forwarding: bool = True,
    hold_time: int | None = None,
    keepalive: int | None = None,
    log_file: str | None = None,
    peer_group: str = "NODES",
    extra: str = "",
    bfd: tuple[int, int] | None = None,
    bfd_neighbors: Sequence[str] | None = None,
) -> str:
    """Render an frr.conf for one eBGP/iBGP router. One function because it is a template:
    the lines appear in the order frr.conf has them, so it reads like the file it writes.

    `ip forwarding` is zebra's (it sets the netns sysctl; bgpd logs it as unknown).
    Dynamic neighbours: FRR silently drops `bgp listen range … peer-group G` unless the
    peer group and its remote-as were declared first, so they are written before it. Each
    listen range gets its own peer group (G, G2, G3 …) so ranges may carry different ASNs.
    bfd (interval ms, multiplier): a BFD profile named after the peer group, for every peer
    group and the neighbours in bfd_neighbors (None: all of them); FRR then needs bfdd,
    which FrrRouter starts.
    """
    lines = [f"hostname {hostname}"]
    if log_file:
        lines.append(f"log file {log_file}")
    if ip_forwarding:
        lines.append("ip forwarding")
    lines.append("!")
    if bfd is not None:
        lines += ["bfd", f" profile {peer_group}", f"  transmit-interval {bfd[0]}",
                  f"  receive-interval {bfd[0]}", f"  detect-multiplier {bfd[1]}", " !", "!"]
    lines += [
        f"router bgp {asn}",
        f" bgp router-id {router_id}",
        " no bgp ebgp-requires-policy",
        " no bgp network import-check",
        " bgp bestpath compare-routerid",
    ]
    if multipath_relax:
        lines.append(" bgp bestpath as-path multipath-relax")
    timers = hold_time is not None
    if timers:
        ka = keepalive if keepalive is not None else max(1, hold_time // 3)
        lines.append(f" timers bgp {ka} {hold_time}")
    groups: list[tuple[str, str, AsnSpec]] = []
    for i, (cidr, remote) in enumerate(listen_ranges):
        groups.append((peer_group if i == 0 else f"{peer_group}{i + 1}", cidr, remote))
    for name, _cidr, remote in groups:
        lines.append(f" neighbor {name} peer-group")
        lines.append(f" neighbor {name} remote-as {remote}")
    for name, cidr, _remote in groups:
        lines.append(f" bgp listen range {cidr} peer-group {name}")
    for address, remote in neighbors:
        lines.append(f" neighbor {address} remote-as {remote}")
    if bfd is not None:
        chosen = [a for a, _ in neighbors] if bfd_neighbors is None else list(bfd_neighbors)
        for name in [g[0] for g in groups] + chosen:
            lines += [f" neighbor {name} bfd", f" neighbor {name} bfd profile {peer_group}"]
    lines.append(" !")
    lines.append(" address-family ipv4 unicast")
    for cidr in networks:
        lines.append(f"  network {cidr}")
    if redistribute_connected:
        lines.append("  redistribute connected")
    if maximum_paths > 1:
        lines.append(f"  maximum-paths {maximum_paths}")
        lines.append(f"  maximum-paths ibgp {maximum_paths}")
    for name, _cidr, remote in groups:
        lines.append(f"  neighbor {name} activate")
        if remote == "internal" or remote == asn:
            lines.append(f"  neighbor {name} route-reflector-client")
    for address, _remote in neighbors:
        lines.append(f"  neighbor {address} activate")
    lines += [" exit-address-family", "exit", "!"]
    if extra:
        lines += [extra.rstrip("\n"), "!"]
    lines.append("end")
    return "\n".join(lines) + "\n"


@dataclass
class FrrRouter:
    """zebra + bgpd in `netns`, all state under `rundir`."""

    netns: str
    rundir: Path
    config_text: str
    start_timeout: float = 60.0   # seconds on a busy machine, minutes under emulation (qemu)

    def __post_init__(self) -> None:
        self.rundir = Path(self.rundir)

    @property
    def daemons(self) -> tuple[str, ...]:
        """zebra, bgpd, and bfdd when a neighbour has BFD."""
        bfd = any(line.strip().startswith("neighbor ") and line.strip().endswith(" bfd")
                  for line in self.config_text.splitlines())
        return DAEMONS + ((BFD_DAEMON,) if bfd else ())

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        """Write the config, start zebra then bgpd (daemonised), wait until vtysh answers."""
        self.rundir.mkdir(parents=True, exist_ok=True)
        _check_reachable_by_frr(self.rundir)
        for d in self.daemons:
            (self.rundir / f"{d}.conf").write_text(self.config_text)
        shutil.chown(self.rundir, "frr", "frr")
        for p in self.rundir.iterdir():
            shutil.chown(p, "frr", "frr")
        subprocess.run(["ip", "netns", "exec", self.netns, "ip", "link", "set", "lo", "up"],
                       check=True, capture_output=True)
        for d in self.daemons:
            self._start_daemon(d)
        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                self.vtysh("show bgp summary json")
                return
            except FrrError as e:
                if time.monotonic() > deadline:
                    self.stop()
                    raise FrrError(f"FRR in {self.netns} did not answer vtysh: {e}") from e
                time.sleep(0.1)

    def _start_daemon(self, daemon: str) -> None:
        d = self.rundir
        cmd = ["ip", "netns", "exec", self.netns, str(FRR_LIB / daemon), "-d",
               "-f", str(d / f"{daemon}.conf"), "-i", str(d / f"{daemon}.pid"),
               "-z", str(d / "zserv.api"), "--vty_socket", str(d), "-A", "127.0.0.1"]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            self.stop()
            raise FrrError(f"{daemon} in {self.netns} exited {out.returncode}: {out.stderr.strip()}")
        deadline = time.monotonic() + self.start_timeout
        while self._pid(daemon) is None:
            if time.monotonic() > deadline:
                self.stop()
                raise FrrError(f"{daemon} in {self.netns} wrote no PID file in {d}")
            time.sleep(0.05)

    def _pid(self, daemon: str) -> int | None:
        try:
            pid = int((self.rundir / f"{daemon}.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if pid_alive(pid) else None

    def pids(self) -> dict[str, int]:
        """PIDs of the running daemons (for the lab's state file)."""
        return {d: p for d in self.daemons if (p := self._pid(d)) is not None}

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM each daemon by PID, SIGKILL what is left after `timeout`."""
        kill_pids([p for d in reversed(self.daemons) if (p := self._pid(d)) is not None],
                  grace=timeout)
        for d in self.daemons:
            (self.rundir / f"{d}.pid").unlink(missing_ok=True)

    # -- queries ---------------------------------------------------------------
    def vtysh(self, cmd: str, timeout: float = 60.0) -> str:
        """Run one vtysh command against this router; FrrError with output on failure."""
        out = subprocess.run(
            ["ip", "netns", "exec", self.netns, "vtysh", "--vty_socket", str(self.rundir), "-c", cmd],
            capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            raise FrrError(f"vtysh {cmd!r} in {self.netns} exited {out.returncode}: "
                           f"{(out.stderr or out.stdout).strip()}")
        return out.stdout

    def bgp_summary(self) -> dict:
        """`show bgp summary json` as a dict (the ipv4Unicast part is where the peers are)."""
        return json.loads(self.vtysh("show bgp summary json") or "{}")

    def routes(self) -> dict:
        """`show ip route bgp json`: prefix -> list of route entries."""
        return json.loads(self.vtysh("show ip route bgp json") or "{}")


def _check_reachable_by_frr(path: Path) -> None:
    """The daemons drop to user frr: every parent of the run directory must let it in."""
    user = pwd.getpwnam("frr")
    gids = {user.pw_gid} | {g.gr_gid for g in grp.getgrall() if "frr" in g.gr_mem}
    for parent in [path.resolve(), *path.resolve().parents]:
        st = parent.stat()
        if st.st_uid == user.pw_uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid in gids:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            raise FrrError(f"FRR run directory {path} is not reachable by user frr: "
                           f"{parent} has mode {stat.filemode(st.st_mode)}")


