"""The host-network pods of one lab node (the calico-lite DaemonSet's, kube-sync's): made from
their manifests (podspec, volumes), run and supervised (containers), reported in the API.

One supervisor thread per node component calls `tick()` every TICK seconds: restarts exited
containers (unless held), runs due probes, renews projected tokens, and patches a pod's
status only when what it reports changed. Every container's PID is in the lab's state as
`<container>:<node>` (e.g. `agent:r1n1`) from the moment it starts, so `lab down` finds it.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from kubernetes import client

from bgp.process import kill_pids, pid_alive
from calico_lite.lab import podspec
from calico_lite.lab.containers import BACKOFF_MAX, BACKOFF_START, Container, run_init
from calico_lite.lab.node_api import now
from calico_lite.lab.state import StateStore
from calico_lite.lab.volumes import ApiObjects, make_volumes, token_refresh_due

log = logging.getLogger("calico-lite.lab.hostpods")
TICK = 0.2
STEADY_AFTER = 60.0   # a container that ran this long starts its next back-off from the start


@dataclass(frozen=True)
class NodeSide:
    """What the node component lends its host pods."""
    name: str
    address: str
    root: Path
    store: StateStore
    core: client.CoreV1Api
    service_env: dict[str, str]

    def hold_file(self, container: str) -> Path:
        return self.root / "hold" / container

    def context(self, pod: dict) -> podspec.PodContext:
        objs = ApiObjects(self.core)
        return podspec.PodContext(self.root, self.root / "pods" / pod["metadata"]["uid"],
                                  self.address, self.address, self.service_env,
                                  objs.config_map, objs.secret)


@dataclass
class HostPod:
    pod: dict
    node: NodeSide
    containers: list[Container] = field(default_factory=list)
    init_status: list[dict] = field(default_factory=list)
    volumes_at: float = 0.0
    reported: str = ""

    @property
    def uid(self) -> str:
        return self.pod["metadata"]["uid"]

    @property
    def label(self) -> str:
        m = self.pod["metadata"]
        return f"{m['namespace']}/{m['name']}"

    def _container(self, spec: dict, ctx: podspec.PodContext) -> Container:
        proc = podspec.container_process(self.pod, spec, ctx)
        return Container(spec, proc, self.node.root / "logs" / f"{spec['name']}.log")

    def start(self) -> None:
        """Volumes, init containers in order, then the containers; raises (with nothing left
        running) if any step fails, so the caller can report it and retry."""
        ctx = self.node.context(self.pod)
        make_volumes(self.node.core, self.pod, ctx)
        self.volumes_at = time.time()
        for spec in self.pod["spec"].get("initContainers") or []:
            c = self._container(spec, ctx)
            try:
                run_init(c, lambda pid, n=c.name: self.node.store.add_pid(f"{n}:{self.node.name}", pid))
            finally:
                self.node.store.pop_pids(f"{c.name}:{self.node.name}")
            self.init_status.append({**c.status(), "ready": True, "state": {"terminated": c.last_exit}})
        self.containers = [self._container(s, ctx) for s in self.pod["spec"]["containers"]]
        for c in self.containers:
            self._start(c)
        log.info(json.dumps({"event": "host-pod-started", "pod": self.label,
                             "containers": {c.name: c.pid for c in self.containers}}))

    def adopt(self, record: dict) -> None:
        """Take over the containers a previous node component started for this pod (their
        processes outlive it, as containers outlive a restarted kubelet)."""
        ctx = self.node.context(self.pod)
        self.volumes_at = record.get("volumes_at", time.time())
        self.init_status = record.get("init_status", [])
        self.containers = [self._container(s, ctx) for s in self.pod["spec"]["containers"]]
        for c in self.containers:
            c.restarts = record.get("restarts", {}).get(c.name, 0)
            pid = record.get("pids", {}).get(c.name, 0)
            if pid and pid_alive(pid):
                c.adopt(pid)
        log.info(json.dumps({"event": "host-pod-adopted", "pod": self.label,
                             "containers": {c.name: c.pid for c in self.containers}}))

    def _start(self, c: Container) -> None:
        pid = c.start()
        self.node.store.add_pid(f"{c.name}:{self.node.name}", pid)
        self.save()

    def record_path(self) -> Path:
        return self.node.root / "hostpods" / f"{self.uid}.json"

    def save(self) -> None:
        m = self.pod["metadata"]
        rec = {"uid": self.uid, "namespace": m["namespace"], "name": m["name"],
               "pids": {c.name: c.pid for c in self.containers},
               "restarts": {c.name: c.restarts for c in self.containers},
               "init_status": self.init_status, "volumes_at": self.volumes_at}
        path = self.record_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".tmp").write_text(json.dumps(rec))
        path.with_suffix(".tmp").replace(path)

    def stop(self) -> None:
        grace = float(self.pod["spec"].get("terminationGracePeriodSeconds", 30))
        for c in self.containers:
            c.stop(grace)
            if c.popen is not None:
                c.popen.wait()
            self.node.store.pop_pids(f"{c.name}:{self.node.name}")
        self.record_path().unlink(missing_ok=True)
        log.info(json.dumps({"event": "host-pod-stopped", "pod": self.label}))

    # --- supervision ---------------------------------------------------------------------
    def tick(self, now: float) -> None:
        for c in self.containers:
            self._supervise(c, now)
        if token_refresh_due(self.pod, self.volumes_at):
            make_volumes(self.node.core, self.pod, self.node.context(self.pod))
            self.volumes_at = time.time()
        self.report()

    def _supervise(self, c: Container, now: float) -> None:
        if c.running():
            for probe, kind in ((c.readiness, "readiness"), (c.liveness, "liveness")):
                if probe and now >= probe.due:
                    probe.run(now, self.node.address)
                    if kind == "liveness" and probe.failures >= probe.spec.get("failureThreshold", 3):
                        log.warning(json.dumps({"event": "liveness-failed", "pod": self.label,
                                                "container": c.name, "error": probe.last_error}))
                        c.stop(float(self.pod["spec"].get("terminationGracePeriodSeconds", 30)))
            return
        if c.pid or c.popen is not None:     # it just exited
            if now - c.started_mono > STEADY_AFTER:
                c.backoff = 0.0
            c.record_exit()
            c.next_start = now + c.backoff
            c.backoff = min(BACKOFF_MAX, max(BACKOFF_START, c.backoff * 2))
            c.waiting = "CrashLoopBackOff"
        if self.node.hold_file(c.name).exists():
            c.waiting = "HeldByLab"
            return
        if now >= c.next_start:
            c.restarts += 1
            self._start(c)

    def report(self) -> None:
        """Patch the pod's status when what it says has changed."""
        statuses = [c.status() for c in self.containers]
        ready = all(s["ready"] for s in statuses)
        digest = json.dumps([ready, [(s["ready"], s["restartCount"], s.get("containerID"))
                                     for s in statuses]])
        if digest == self.reported:
            return
        t = now()
        conds = [{"type": k, "status": "True", "lastTransitionTime": t}
                 for k in ("PodReadyToStartContainers", "Initialized", "PodScheduled")]
        conds += [{"type": k, "status": "True" if ready else "False", "lastTransitionTime": t}
                  for k in ("ContainersReady", "Ready")]
        ip = self.node.address
        body = {"status": {"phase": "Running", "hostIP": ip, "hostIPs": [{"ip": ip}], "podIP": ip,
                           "podIPs": [{"ip": ip}], "startTime": self.pod.get("status", {}).get("startTime") or t,
                           "conditions": conds, "containerStatuses": statuses,
                           "initContainerStatuses": self.init_status}}
        m = self.pod["metadata"]
        self.node.core.patch_namespaced_pod_status(m["name"], m["namespace"], body)
        self.reported = digest


class HostPods:
    """The node's host pods by uid, and the thread that supervises them."""

    def __init__(self, node: NodeSide):
        self.node = node
        self.pods: dict[str, HostPod] = {}
        self.lock = threading.Lock()

    def __contains__(self, uid: str) -> bool:
        return uid in self.pods

    def run(self, pod: dict) -> None:
        """Start the pod's containers, or adopt them if a previous node component did."""
        hp = HostPod(pod, self.node)
        record = hp.record_path()
        try:
            if record.exists():
                hp.adopt(json.loads(record.read_text()))
            else:
                hp.start()
        except BaseException:
            hp.stop()
            raise
        with self.lock:
            self.pods[hp.uid] = hp
        hp.report()

    def recorded(self) -> dict[str, dict]:
        """uid -> record of every host pod this node runs or ran (for a resync after a
        restart: records whose pod is gone are stopped by uid)."""
        folder = self.node.root / "hostpods"
        return {f.stem: json.loads(f.read_text()) for f in folder.glob("*.json")} if folder.exists() else {}

    def stop_recorded(self, record: dict) -> None:
        """Stop containers of a pod that no longer exists, known only from its record."""
        kill_pids([p for p in record.get("pids", {}).values() if p], grace=5.0)
        for name in record.get("pids", {}):
            self.node.store.pop_pids(f"{name}:{self.node.name}")
        (self.node.root / "hostpods" / f"{record['uid']}.json").unlink(missing_ok=True)

    def stop(self, uid: str) -> bool:
        with self.lock:
            hp = self.pods.pop(uid, None)
        if hp is not None:
            hp.stop()
        return hp is not None

    def supervise(self) -> None:
        while True:
            with self.lock:
                pods = list(self.pods.values())
            for hp in pods:
                try:
                    hp.tick(time.monotonic())
                except Exception as e:   # the API may be away: the next tick tries again
                    log.warning(json.dumps({"event": "host-pod-tick-failed", "pod": hp.label,
                                            "error": str(e)}))
            time.sleep(TICK)
