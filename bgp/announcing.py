"""What the node tells its peers (pure): our prefixes per peer with their communities and
export filters (bgp.export), what a route reflector re-announces (bgp.reflect), and the
commands withdrawing all of it before a clean stop.

A mixin of `bgp.session.BgpState`, kept apart so the session state machine (sessions, learned
paths, sync state) reads on its own. It uses BgpState's `cfg`, `sessions`, `desired`,
`export`, `told`, `reflected`, `learned_paths` and `_out`.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from .export import Attributes, ExportPolicy, announcements, export_commands
from .filters import decide
from .model import Changes
from .reflect import ReflectPeer, reflection_commands, reflection_plan, withdraw_command

__all__ = ["Announcing"]


class Announcing:
    """Our announcements and reflections, as ExaBGP commands appended to `self._out`."""

    def announce(self, prefixes: Iterable[str], export: ExportPolicy | None = None
                 ) -> tuple[Changes, set[str], set[str]]:
        """Make our announced prefixes equal `prefixes`, each peer getting what `export`
        (None: the current policy) lets through, with its communities; also returns
        (added, removed)."""
        desired = {str(ipaddress.IPv4Network(p)) for p in prefixes}
        added, removed = desired - self.desired, self.desired - desired
        self.desired = desired
        if export is not None:
            self.export = export
        self._export()
        if export is not None:
            self._reflect()   # export filters apply to what we reflect too
        changed = bool(added or removed) and any(
            s.state == "Established" for s in self.sessions.values())
        return self._done(changed), added, removed

    def withdraw_all(self) -> list[str]:
        """Commands withdrawing everything we announce (before a clean stop)."""
        self._out += export_commands(self.told, {}, self._addresses())
        self.told = {}
        for peer, routes in self.reflected.items():
            for prefix, r in sorted(routes.items()):
                self._send(withdraw_command(peer, prefix, r))
        self.reflected = {}
        return self._done(False).commands

    def teardown(self) -> list[str]:
        """A Cease (administrative shutdown) to every Established peer: with graceful
        restart ExaBGP would otherwise just close, and the peers wait for us to come back."""
        return [f"neighbor {addr} teardown 2" for addr, s in self.sessions.items()
                if s.state == "Established"]

    def _plan(self) -> dict[str, dict[str, Attributes]]:
        return announcements(self.desired, self._addresses(), self.export)[0]

    def _export(self) -> None:
        """Tell ExaBGP what changed in what each peer should get (bgp.export)."""
        plan = self._plan()
        self._out += export_commands(self.told, plan, self._addresses())
        self.told = plan

    def _reflect(self) -> None:
        """Route reflector (cluster_id set): make what we re-announce to each Established
        iBGP peer equal bgp.reflect's plan."""
        if not self.cfg.cluster_id:
            return
        established = [a for a, s in self.sessions.items() if s.state == "Established"]
        plan = reflection_plan(
            self.learned_paths,
            [ReflectPeer(p.address, p.peer_as, p.route_reflector_client) for p in self.cfg.peers],
            local_as=self.cfg.local_as, router_id=self.cfg.router_id,
            cluster_id=self.cfg.cluster_id, own=self.desired, targets=established)
        plan = {t: {p: r for p, r in routes.items()
                    if decide(p, self.export.peer(t).filters, "export").accepted}
                for t, routes in plan.items()}
        commands, self.reflected = reflection_commands(self.reflected, plan)
        self._out += commands
