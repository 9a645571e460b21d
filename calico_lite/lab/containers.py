"""A host-network pod's containers as processes on a lab node: what a kubelet does for them.

Init containers run one after the other to completion; then every container starts and is
kept running (restartPolicy Always: an exited container is started again, after a back-off
that doubles from 1 s to 30 s when it keeps failing). Readiness and liveness probes (httpGet,
tcpSocket) run from the node's namespace on the manifest's schedule; readiness becomes the
container's and the pod's Ready condition (what a DaemonSet rollout waits for), a failed
liveness probe restarts the container. Deleting the pod sends SIGTERM and, after the grace
period, SIGKILL.

A lab-only hold (`lab node stop`, a file `hold/<container>` in the node's folder) keeps an
exited container from being restarted until `lab node start` removes it: tests stop an agent
on purpose and a kubelet would otherwise start it again.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bgp.process import pid_alive
from calico_lite.lab.node_api import now
from calico_lite.lab.podspec import ContainerProcess

log = logging.getLogger("calico-lite.lab.containers")
REPO = Path(__file__).resolve().parents[2]
IMAGE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "PYTHONPATH": str(REPO)}
BACKOFF_START, BACKOFF_MAX = 1.0, 30.0
INIT_TIMEOUT = 120.0


def probe_once(probe: dict, host_ip: str) -> str:
    """'' if the probe passes, else why not. httpGet passes on 200-399, as the kubelet's."""
    timeout = probe.get("timeoutSeconds", 1)
    if "httpGet" in probe:
        g = probe["httpGet"]
        url = (f"{g.get('scheme', 'HTTP').lower()}://{g.get('host') or host_ip}:{g['port']}"
               f"{g.get('path', '/')}")
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                return "" if 200 <= r.status < 400 else f"HTTP {r.status}"
        except urllib.error.HTTPError as e:
            return f"HTTP probe failed with statuscode: {e.code}"
        except OSError as e:
            return f"Get {url}: {e}"
    if "tcpSocket" in probe:
        t = probe["tcpSocket"]
        try:
            socket.create_connection((t.get("host") or host_ip, t["port"]), timeout=timeout).close()
            return ""
        except OSError as e:
            return f"dial tcp {t['port']}: {e}"
    return "probe kind not supported by the lab"


@dataclass
class ProbeState:
    spec: dict
    due: float
    failures: int = 0
    successes: int = 0
    passing: bool = False
    last_error: str = ""

    def run(self, now: float, host_ip: str) -> None:
        err = probe_once(self.spec, host_ip)
        self.due = now + self.spec.get("periodSeconds", 10)
        self.last_error = err
        if err:
            self.failures, self.successes = self.failures + 1, 0
            if self.failures >= self.spec.get("failureThreshold", 3):
                self.passing = False
        else:
            self.failures, self.successes = 0, self.successes + 1
            if self.successes >= self.spec.get("successThreshold", 1):
                self.passing = True


@dataclass
class Container:
    """One running (or waiting) container and what its status reports."""
    spec: dict
    process: ContainerProcess
    log: Path
    popen: subprocess.Popen | None = None
    pid: int = 0
    restarts: int = 0
    started_at: str = ""
    waiting: str = "ContainerCreating"
    last_exit: dict | None = None
    next_start: float = 0.0
    backoff: float = 0.0
    readiness: ProbeState | None = None
    liveness: ProbeState | None = None
    started_mono: float = 0.0

    @property
    def name(self) -> str:
        return self.spec["name"]

    def running(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return bool(self.pid) and pid_alive(self.pid)

    def exit_code(self) -> int:
        if self.popen is not None and self.popen.returncode is not None:
            return self.popen.returncode
        return -1

    def start(self) -> int:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(self.process.argv, stdout=out, stderr=out,
                                          stdin=subprocess.DEVNULL, start_new_session=True,
                                          env={**IMAGE_ENV, **self.process.env}, cwd="/")
        self.pid, self.started_at, self.waiting = self.popen.pid, now(), ""
        self.watch_probes()
        return self.pid

    def adopt(self, pid: int) -> None:
        """A container a previous node component started (the process outlives it)."""
        self.pid, self.started_at, self.waiting = pid, now(), ""
        self.watch_probes()

    def watch_probes(self) -> None:
        t = self.started_mono = time.monotonic()
        for attr, key in (("readiness", "readinessProbe"), ("liveness", "livenessProbe")):
            spec = self.spec.get(key)
            setattr(self, attr, ProbeState(spec, t + spec.get("initialDelaySeconds", 0)) if spec else None)

    def ready(self) -> bool:
        if not self.running():
            return False
        return self.readiness.passing if self.readiness else True

    def stop(self, grace: float) -> None:
        """SIGTERM, then SIGKILL after grace seconds (the pod's termination grace period)."""
        if not self.running():
            return
        os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.running():
            os.kill(self.pid, signal.SIGKILL)
            while self.running():
                time.sleep(0.02)

    def status(self) -> dict:
        s = {"name": self.name, "image": self.spec.get("image", ""), "imageID": "",
             "ready": self.ready(), "restartCount": self.restarts, "started": self.running()}
        if self.running():
            s["containerID"] = f"lab://{self.pid}"
            s["state"] = {"running": {"startedAt": self.started_at}}
        else:
            s["state"] = {"waiting": {"reason": self.waiting or "CrashLoopBackOff"}}
        if self.last_exit:
            s["lastState"] = {"terminated": self.last_exit}
        return s

    def record_exit(self) -> None:
        code = self.exit_code()
        self.last_exit = {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                          "startedAt": self.started_at, "finishedAt": now()}
        log.info(json.dumps({"event": "container-exited", "container": self.name, "pid": self.pid,
                             "exit_code": code}))
        self.popen, self.pid = None, 0


def run_init(c: Container, on_start, timeout: float = INIT_TIMEOUT) -> None:
    """An init container, to completion; a non-zero exit is the pod's failure (retried by the
    caller, as the kubelet restarts init containers). on_start(pid) records it at once."""
    on_start(c.start())
    deadline = time.monotonic() + timeout
    while c.running():
        if time.monotonic() > deadline:
            c.stop(1.0)
            raise RuntimeError(f"init container {c.name} did not finish in {timeout:.0f}s; see {c.log}")
        time.sleep(0.05)
    c.popen.wait()
    code = c.exit_code()
    c.record_exit()
    if code != 0:
        raise RuntimeError(f"init container {c.name} exited with {code}; see {c.log}")
