"""The ExaBGP process: start or adopt it, supervise it, reload or replace it, stop it.

ExaBGP runs in its own session, so it outlives a crashed agent and its BGP sessions stay
up. A new Speaker on the same workdir started with the same environment (address, port,
listening) adopts it instead of restarting it; if only the peers changed, it is reloaded
(SIGUSR1). An ExaBGP that exits unexpectedly is started again (with back-off), and
`on_exit(reason)` tells the Speaker its sessions are gone.

Files in the workdir: exabgp.conf, exabgp.pid, exabgp.env.json (the environment it was
started with, which adoption compares) and exabgp.out (its output).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .config import SpeakerConfig, exabgp_env, render_config
from .process import pid_alive

__all__ = ["ExaBGP", "CONFIG_NAME", "PID_NAME", "ENV_NAME", "is_relay", "kill_wait"]

log = logging.getLogger("bgp.exabgp")

CONFIG_NAME = "exabgp.conf"
PID_NAME = "exabgp.pid"
ENV_NAME = "exabgp.env.json"


class ExaBGP:
    """One ExaBGP process per workdir: ours (spawned) or adopted from an earlier Speaker."""

    def __init__(self, workdir: Path, socket_path: Path, lock: threading.RLock, *,
                 on_exit: Callable[[str], None], exabgp_bin: str | None = None,
                 python: str | None = None, restart_delay: float = 1.0,
                 stop_timeout: float = 5.0) -> None:
        self.workdir = workdir
        self.socket_path = socket_path
        self.config_path = workdir / CONFIG_NAME
        self.lock = lock
        self.on_exit = on_exit            # called from the supervisor thread, lock not held
        self.exabgp_bin = exabgp_bin or _default_exabgp()
        self.python = python or sys.executable
        self.restart_delay = restart_delay
        self.stop_timeout = stop_timeout
        self.restarts = 0                 # restarts after an unexpected exit
        self.spawn_error: Exception | None = None
        self._cfg: SpeakerConfig | None = None
        self._proc: subprocess.Popen | None = None
        self._adopted: int | None = None  # PID of an ExaBGP we did not spawn
        self._replacing = False           # we stop it to apply a new config
        self._reload_pending = False      # SIGUSR1 once its relay has connected
        self._stopping = threading.Event()
        self._spawned = threading.Event()
        self._supervisor: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------
    def prepare(self, cfg: SpeakerConfig) -> bool:
        """Write our config; True if a running ExaBGP of this workdir is adopted (and
        reloaded if only its peers differ), else a stale one is killed."""
        self._cfg = cfg
        text = self._config_text(cfg)
        self._adopted, same = self._adoptable(text)
        if self._adopted is None:
            self._kill_stale()
            self.config_path.write_text(text)
        elif not same:   # the peers changed while no agent ran: reload, keep the sessions
            self.config_path.write_text(text)
            log.info("bgp adopting exabgp pid=%s with a new configuration (reload)", self._adopted)
            _signal(self._adopted, signal.SIGUSR1)
        return self._adopted is not None

    def supervise(self, timeout: float) -> None:
        """Watch the adopted ExaBGP or spawn ours, from the supervisor thread, which starts
        it again whenever it exits unexpectedly. TimeoutError if none runs within timeout."""
        self._stopping.clear()
        self._supervisor = threading.Thread(target=self._supervise, name="bgp-supervise",
                                            daemon=True)
        self._supervisor.start()
        if not self._spawned.wait(timeout):
            raise TimeoutError(f"ExaBGP did not start within {timeout}s: {self.spawn_error}")

    def stop(self) -> None:
        """SIGTERM (SIGKILL after stop_timeout), and stop supervising."""
        self._stopping.set()
        with self.lock:
            proc, adopted = self._proc, self._adopted
        if proc is not None:
            _terminate(proc, self.stop_timeout)
        if adopted is not None:
            kill_wait(adopted, self.stop_timeout)
        if self._supervisor is not None:
            self._supervisor.join(timeout=self.stop_timeout + 2)
            self._supervisor = None
        with self.lock:
            self._proc = None
            self._adopted = None
            self._spawned.clear()
        (self.workdir / PID_NAME).unlink(missing_ok=True)

    def detach(self) -> None:
        """Stop supervising but leave ExaBGP running for the next Speaker to adopt (the
        supervisor thread may sit in proc.wait(): it is left to return by itself)."""
        self._stopping.set()
        self._supervisor = None

    @property
    def running(self) -> bool:
        return self._supervisor is not None

    def reconfigure(self, cfg: SpeakerConfig, restart: bool, connected: bool) -> int | None:
        """Write the new config (lock held). restart: it is replaced, with our kernel
        routes kept. Else reloaded, once its relay connected if it has not yet (before that
        ExaBGP may not have its signal handlers, and SIGUSR1 would kill it). Returns the
        PID to signal (signal_reconfigured) outside the lock."""
        self._cfg = cfg
        self.config_path.write_text(self._config_text(cfg))
        if restart:
            self._replacing = True
            return self.pid
        if not connected:
            self._reload_pending = True
            return None
        return self.pid

    @staticmethod
    def signal_reconfigured(pid: int | None, restart: bool) -> None:
        if pid is not None:
            _signal(pid, signal.SIGTERM if restart else signal.SIGUSR1)

    def relay_connected(self) -> None:
        """Its relay connected (lock held): the reload it waited for, if any."""
        if self._reload_pending:
            self._reload_pending = False
            if self.pid is not None:
                log.info("bgp reloading exabgp pid=%s with the new configuration", self.pid)
                _signal(self.pid, signal.SIGUSR1)

    # -- what it is ----------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        """The PID we supervise (even if it just died)."""
        if self._adopted is not None:
            return self._adopted
        return self._proc.pid if self._proc is not None else None

    @property
    def live_pid(self) -> int | None:
        with self.lock:
            pid = self.pid
        return pid if pid is not None and pid_alive(pid) else None

    @property
    def adopted(self) -> bool:
        with self.lock:
            return self._adopted is not None

    def relay_command(self) -> list[str]:
        return [self.python, "-I", "-S", str(Path(__file__).with_name("relay.py")),
                str(self.socket_path)]

    # -- supervision -----------------------------------------------------------------
    def _supervise(self) -> None:
        if self._adopted is not None:
            self._spawned.set()
            log.info("bgp adopted running exabgp pid=%s", self._adopted)
            while pid_alive(self._adopted) and not self._stopping.wait(0.5):
                pass
            if self._stopping.is_set():
                return
            log.warning("bgp adopted exabgp pid=%s is gone; starting our own", self._adopted)
            with self.lock:
                self._adopted = None
                self._replacing = False
            self.on_exit("adopted exabgp exited")
        self._run_own()

    def _run_own(self) -> None:
        """Spawn ExaBGP, wait for it, and start it again (with back-off) until stopped."""
        delay = self.restart_delay
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                proc = self._spawn()
            except OSError as e:
                self.spawn_error = e
                log.error("bgp cannot start exabgp %s: %s", self.exabgp_bin, e)
                self._stopping.wait(delay)
                delay = min(delay * 2, 30.0)
                continue
            self._spawned.set()
            code = proc.wait()
            if self._stopping.is_set():
                return
            with self.lock:
                replacing, self._replacing = self._replacing, False
                if not replacing:
                    self.restarts += 1
                log.warning("bgp exabgp pid=%s exited code=%s; %s", proc.pid, code,
                            "starting it with the new configuration" if replacing else
                            f"restarting (restart #{self.restarts})")
            self.on_exit(f"exabgp exited with code {code}")
            if replacing:
                continue
            if time.monotonic() - started > 60:
                delay = self.restart_delay
            self._stopping.wait(delay)
            delay = min(delay * 2, 30.0)

    def _spawn(self) -> subprocess.Popen:
        env = dict(os.environ)
        env.update(exabgp_env(self._cfg, self.workdir))
        with open(self.workdir / "exabgp.out", "ab") as out, self.lock:
            if self._stopping.is_set():
                raise OSError("speaker is stopping")
            proc = subprocess.Popen([self.exabgp_bin, "server", str(self.config_path)],
                                    cwd=self.workdir, env=env, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            self._proc = proc
        _write_atomic(self.workdir / PID_NAME, f"{proc.pid}\n")
        _write_atomic(self.workdir / ENV_NAME, self._env_text())
        log.info("bgp exabgp spawned pid=%s", proc.pid)
        return proc

    # -- adoption ------------------------------------------------------------------------
    def _config_text(self, cfg: SpeakerConfig) -> str:
        return render_config(cfg, self.relay_command())

    def _adoptable(self, config_text: str) -> tuple[int | None, bool]:
        """PID of a live ExaBGP started by an earlier Speaker on this workdir with the same
        environment (address, port, listening), and whether its config text is ours too."""
        try:
            pid = int((self.workdir / PID_NAME).read_text().split()[0])
            same = self.config_path.read_text() == config_text
            env_same = (self.workdir / ENV_NAME).read_text() == self._env_text()
        except (OSError, ValueError, IndexError):
            return None, False
        if env_same and pid_alive(pid) and str(self.config_path) in _cmdline(pid):
            return pid, same
        return None, False

    def _env_text(self) -> str:
        return json.dumps(exabgp_env(self._cfg, self.workdir), sort_keys=True)

    def _kill_stale(self) -> None:
        """Kill an ExaBGP left by an earlier Speaker on this workdir (recorded PID whose
        command line names our config), so two never fight over the same peers."""
        try:
            pid = int((self.workdir / PID_NAME).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        if str(self.config_path) in _cmdline(pid):
            log.warning("bgp killing stale exabgp pid=%s", pid)
            kill_wait(pid, self.stop_timeout)


def is_relay(pid: int, socket_path: Path) -> bool:
    cmd = _cmdline(pid)
    return "relay.py" in cmd and str(socket_path) in cmd


def kill_wait(pid: int, timeout: float) -> None:
    """SIGTERM, then SIGKILL if still there after timeout (for processes not our child)."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 2.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if not pid_alive(pid):
            return



def _write_atomic(path: Path, text: str) -> None:
    """Replace path's content at once: readers (adoption, the lab) never see it empty."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _default_exabgp() -> str:
    candidate = Path(sys.executable).parent / "exabgp"
    return str(candidate) if candidate.exists() else "exabgp"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _terminate(proc: subprocess.Popen, timeout: float) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
