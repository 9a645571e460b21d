"""Waiting on a lab until something holds: agents ready, nodes Ready, routes converged,
the API mirrored into the datastore, policy enforced everywhere. A mixin of `Lab` (it uses the
lab's plan, datastore and API), kept apart so lab.py stays about building and removing.
"""
from __future__ import annotations

import time

from calico_lite import keys
from calico_lite.lab import plumbing as pl
from calico_lite.lab.plan import LabPlan
from calico_lite.lab.state import LabError

READY_TIMEOUT = 90.0
PER_NODE = 4.0   # a 2-core machine starts every node's agent, ExaBGP and node component itself


def ready_timeout(plan: LabPlan) -> float:
    """How long `lab up` waits for each stage: longer for a bigger lab (50 nodes: 200 s)."""
    return max(READY_TIMEOUT, PER_NODE * len(plan.nodes))


class LabWaits:
    def _wait_nodes(self, plan: LabPlan) -> None:
        """Every lab node registered and Ready in the API (its node component is up)."""
        deadline = time.monotonic() + ready_timeout(plan)
        while missing := sorted({n.name for n in plan.nodes} - self.api().ready_nodes()):
            dead = [k for k, pid in self.store.load().pids.items()
                    if k.startswith(("kubelet:", "kube:")) and not pl.pid_alive(pid)]
            if dead or time.monotonic() > deadline:
                raise LabError(f"nodes not Ready in the API: {', '.join(missing)}"
                               + (f"; exited: {', '.join(dead)}" if dead else "")
                               + f" (see {self.store.dir}/nodes/NODE/kubelet.log, {self.kube.root})")
            time.sleep(0.2)

    def not_ready(self, names: list[str]) -> list[str]:
        """Those of the named nodes whose agent does not yet serve its CNI socket with all
        its BGP sessions Established."""
        ds = self.datastore()
        pending = []
        for name in names:
            status = (ds.get(keys.status(name)) or None)
            peers = status.value.get("peers", []) if status else []
            if not (self.node_paths(name).socket.exists() and peers
                    and all(p["state"] == "Established" for p in peers)):
                pending.append(name)
        return pending

    def _wait_ready(self, plan: LabPlan) -> None:
        """Every agent serves its CNI socket and has all its BGP sessions Established."""
        timeout = ready_timeout(plan)
        deadline = time.monotonic() + timeout
        pending = [n.name for n in plan.nodes]
        while pending:
            pending = self.not_ready(pending)
            if not pending:
                break
            if time.monotonic() > deadline:
                raise LabError(f"nodes not ready after {timeout:.0f}s: {', '.join(pending)} "
                               f"(see {self.store.dir}/nodes/NODE/logs/agent.log)")
            time.sleep(0.2)

    def converged(self) -> list[str]:
        """Nodes whose routing does not yet know every block in the datastore (empty: done)."""
        ds = self.datastore()
        wanted = {keys.block_cidr(e.key) for e in ds.list(keys.AFFINITIES)}
        lagging = []
        for n in self.plan.nodes:
            e = ds.get(keys.status(n.name))
            s = e.value if e else {}
            known = (set(s.get("blocks", [])) | {r["prefix"] for r in s.get("routes", [])}
                     | {r["prefix"] for r in s.get("skipped", [])})
            if not wanted <= known:
                lagging.append(n.name)
        return lagging

    def wait_converged(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while lagging := self.converged():
            if time.monotonic() > deadline:
                raise LabError(f"routes not converged after {timeout:.0f}s on {', '.join(lagging)}")
            time.sleep(0.1)

    def wait_mirrored(self, timeout: float = 30.0) -> None:
        """Until kube-sync has brought the API's namespaces, pods and policies as of now into
        the datastore: the records it should have written (its own pure transforms of a fresh
        listing) are the ones there."""
        from calico_lite.kube_sync import mirror_difference
        deadline = time.monotonic() + timeout
        while diff := mirror_difference(self.api().listing(), self.datastore()):
            if time.monotonic() > deadline:
                raise LabError(f"kube-sync has not mirrored the API after {timeout:.0f}s: {diff} "
                               f"(see {self.store.dir}/nodes/*/logs/kube-sync.log)")
            time.sleep(0.05)

    def wait_policy(self, timeout: float = 30.0) -> float:
        """Until every agent has enforced everything in the API as of now; returns the seconds
        it took. First kube-sync must have mirrored the API into the datastore; then a barrier
        write makes each agent's policy controller run once more, and its published revision
        tells when it has."""
        start = time.monotonic()
        self.wait_mirrored(timeout)
        self.wait_enforced(timeout)
        return time.monotonic() - start

    def wait_enforced(self, timeout: float = 30.0) -> float:
        """Until every agent has enforced what the datastore holds as of now (a barrier write
        makes each policy controller run once more); for writers of the datastore other than
        kube-sync, such as bench/policy_lab.py. Returns the seconds it took."""
        start = time.monotonic()
        ds = self.datastore()
        barrier = ds.put(keys.BARRIER, {"at": time.time()})
        pending = {n.name for n in self.plan.nodes}
        while pending:
            for name in list(pending):
                e = ds.get(keys.policy_status(name))
                if e and e.value.get("revision", 0) >= barrier:
                    if e.value.get("error"):
                        raise LabError(f"policy on {name} not applied: {e.value['error']}")
                    pending.discard(name)
            if pending and time.monotonic() - start > timeout:
                raise LabError(f"policy not enforced after {timeout:.0f}s on {', '.join(sorted(pending))}")
            if pending:
                time.sleep(0.02)
        return time.monotonic() - start
