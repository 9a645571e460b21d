"""A lab node's agent, the DaemonSet's `agent` container, stopped and started on purpose
(graceful restart, withdrawal and failure tests and benches).

The node component restarts an exited container as a kubelet would; `stop` first puts a hold
on it (hostpods: the file `hold/agent` in the node's folder) so it stays stopped until `start`
lifts the hold. `restart` needs no hold: SIGTERM, and the node component starts the container
again at once (its first restart has no back-off); the new agent adopts the running ExaBGP.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from bgp.process import kill_pids, pid_alive
from calico_lite.lab.state import StateStore

AGENT = "agent"          # the container's name in deploy/calico-lite.yaml
SIGNALS = {"detach": 15, "withdraw": 12, "kill": 9}


class AgentError(RuntimeError):
    pass


def agent_pid(store: StateStore, node: str) -> int | None:
    pid = store.load().pids.get(f"{AGENT}:{node}")
    return pid if pid and pid_alive(pid) else None


def exabgp_pid(run_dir: Path) -> int | None:
    try:
        pid = int((run_dir / "bgp" / "exabgp.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if pid_alive(pid) else None


def _wait_gone(pid: int, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            raise AgentError(f"{what} (pid {pid}) did not exit in {timeout:.0f}s")
        time.sleep(0.02)


def wait_new_agent(store: StateStore, node: str, old: int | None, timeout: float = 30.0) -> int:
    """The PID of the agent the node component started after `old`."""
    deadline = time.monotonic() + timeout
    while True:
        pid = agent_pid(store, node)
        if pid and pid != old:
            return pid
        if time.monotonic() > deadline:
            raise AgentError(f"no new agent on {node} after {timeout:.0f}s (is its node "
                             f"component running? see {store.dir}/nodes/{node}/kubelet.log)")
        time.sleep(0.02)


def stop(store: StateStore, node: str, node_root: Path, run_dir: Path, how: str = "detach",
         timeout: float = 15.0) -> None:
    """Hold the agent, then stop it. detach: SIGTERM, ExaBGP and routes stay (an upgrade);
    withdraw: SIGUSR2, the agent withdraws its routes and stops ExaBGP (a clean shutdown);
    kill: SIGKILL agent and ExaBGP (a crashed node)."""
    if how not in SIGNALS:
        raise AgentError(f"--how {how!r}: choose one of {', '.join(SIGNALS)}")
    hold = node_root / "hold" / AGENT
    hold.parent.mkdir(parents=True, exist_ok=True)
    hold.touch()
    pid, exabgp = agent_pid(store, node), exabgp_pid(run_dir)
    for p in (pid, exabgp if how == "kill" else None):
        if p:
            os.kill(p, SIGNALS[how])
    if pid:
        _wait_gone(pid, f"agent of {node}", timeout)
    if how == "withdraw" and exabgp:
        kill_pids([exabgp], grace=5.0)   # normally gone already with the agent


def start(store: StateStore, node: str, node_root: Path, spawn=None) -> int:
    """Lift the hold; the node component starts the agent again (or spawn(), in a lab
    without one). Returns its PID."""
    old = agent_pid(store, node)
    hold = node_root / "hold" / AGENT
    if old and not hold.exists():
        raise AgentError(f"agent of {node} is running (pid {old})")
    hold.unlink(missing_ok=True)
    if old:
        return old
    return spawn() if spawn else wait_new_agent(store, node, None)


def restart(store: StateStore, node: str, timeout: float = 15.0, spawn=None) -> int:
    """SIGTERM the agent; the node component starts it again (or spawn(), in a lab without
    one) and the new agent adopts the running ExaBGP, so neither peers nor pods notice
    (graceful restart)."""
    old = agent_pid(store, node)
    if not old:
        raise AgentError(f"agent of {node} is not running")
    os.kill(old, SIGNALS["detach"])
    _wait_gone(old, f"agent of {node}", timeout)
    return spawn() if spawn else wait_new_agent(store, node, old)
