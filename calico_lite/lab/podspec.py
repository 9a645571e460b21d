"""From a Pod's spec to the processes the lab's node component runs for it (pure).

The lab runs host-network pods (the calico-lite DaemonSet and the kube-sync Deployment) as
processes in the node's network namespace, the way a kubelet would run their containers:
- the image's entrypoint is `command` unless given, `args` follow; `$(VAR)` is expanded from
  the container's environment as Kubernetes does (`$$` escapes);
- the environment is the kubelet's `KUBERNETES_SERVICE_*`, then `envFrom`, then `env`, with
  `fieldRef`, `configMapKeyRef` and `secretKeyRef` resolved;
- the lab's nodes share one filesystem, so each node has its own folder standing for its root:
  a `hostPath` volume is that folder's copy of the path (`host/<path>`), except the paths every
  node truly shares with the machine (the kernel's: /lib/modules, /proc, /sys, and
  /var/run/netns where every lab namespace lives). There are no mount namespaces: a value in
  `args` or `env` that lies under a container's `mountPath` is rewritten to the folder behind
  that mount. This, and the image store (every `calico-lite:*` image runs this checkout's
  code), are where the lab differs from a kubelet with a container runtime.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable

SHARED_HOST_PATHS = ("/lib/modules", "/proc", "/sys", "/var/run/netns", "/run/netns")
# the lab's image store: image repository -> how its entrypoint runs from this checkout
# (deploy/Containerfile: ENTRYPOINT ["calico-lite"])
IMAGE_ENTRYPOINTS = {"calico-lite": [sys.executable, "-m", "calico_lite.cli"]}
SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"


class PodSpecError(ValueError):
    """The pod cannot run as written (the reason becomes the container's waiting reason)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ContainerProcess:
    name: str
    argv: list[str]
    env: dict[str, str]
    mounts: list[tuple[str, str]] = field(default_factory=list)   # (mountPath, node folder)


@dataclass(frozen=True)
class PodContext:
    """What the node knows when it starts a pod's containers."""
    node_root: Path            # the node's folder (its `/` is node_root/host)
    pod_dir: Path              # where this pod's non-hostPath volumes are written
    host_ip: str
    pod_ip: str
    service_env: dict[str, str]      # KUBERNETES_SERVICE_HOST etc., as the kubelet injects
    config_map: Callable[[str, str], dict | None]    # (namespace, name) -> data or None
    secret: Callable[[str, str], dict | None]        # (namespace, name) -> decoded data or None


def host_path(node_root: Path, path: str) -> Path:
    """The node's copy of a host path (pure)."""
    p = PurePosixPath(path)
    for shared in SHARED_HOST_PATHS:
        if p == PurePosixPath(shared) or PurePosixPath(shared) in p.parents:
            return Path(p)
    return node_root / "host" / p.relative_to("/")


def volume_folders(pod: dict, ctx: PodContext) -> dict[str, Path]:
    """Volume name -> the folder behind it (hostPath on the node, the rest in the pod's)."""
    out = {}
    for v in pod["spec"].get("volumes") or []:
        if "hostPath" in v:
            out[v["name"]] = host_path(ctx.node_root, v["hostPath"]["path"])
        else:
            out[v["name"]] = ctx.pod_dir / "volumes" / v["name"]
    return out


def mounts(pod: dict, container: dict, ctx: PodContext) -> list[tuple[str, str]]:
    folders = volume_folders(pod, ctx)
    out = []
    for m in container.get("volumeMounts") or []:
        if m["name"] not in folders:
            raise PodSpecError("CreateContainerConfigError",
                               f"container {container['name']}: volumeMount {m['name']!r} names no volume")
        src = folders[m["name"]] / m.get("subPath", "")
        out.append((m["mountPath"].rstrip("/") or "/", str(src).rstrip("/")))
    return out


def translate(value: str, mount_list: list[tuple[str, str]]) -> str:
    """A path under a mountPath, as the node folder behind it (longest mountPath wins);
    anything else unchanged. `--flag=/path` forms are translated after the `=`."""
    if value.startswith("--") and "=" in value:
        flag, _, rest = value.partition("=")
        return f"{flag}={translate(rest, mount_list)}"
    for mount_path, src in sorted(mount_list, key=lambda m: -len(m[0])):
        if value == mount_path or value.startswith(mount_path + "/"):
            return src + value[len(mount_path):]
    return value


_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined names are replaced, undefined ones left as
    written, `$$` is a literal `$`."""
    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))
    return _VAR.sub(sub, text)


def field_value(pod: dict, path: str, ctx: PodContext) -> str:
    meta, spec = pod["metadata"], pod["spec"]
    simple = {"metadata.name": meta["name"], "metadata.namespace": meta["namespace"],
              "metadata.uid": meta.get("uid", ""), "spec.nodeName": spec.get("nodeName", ""),
              "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
              "status.hostIP": ctx.host_ip, "status.podIP": ctx.pod_ip}
    if path in simple:
        return simple[path]
    m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if m:
        return (meta.get(m.group(1)) or {}).get(m.group(2), "")
    raise PodSpecError("CreateContainerConfigError", f"fieldRef {path!r} is not supported")


def _from_source(kind: str, ref: dict, namespace: str, ctx: PodContext) -> dict | None:
    lookup = ctx.config_map if kind == "configMap" else ctx.secret
    data = lookup(namespace, ref["name"])
    if data is None and not ref.get("optional"):
        raise PodSpecError("CreateContainerConfigError", f"{kind} {ref['name']!r} not found")
    return data


def resolve_env(pod: dict, container: dict, ctx: PodContext) -> dict[str, str]:
    ns = pod["metadata"]["namespace"]
    env = dict(ctx.service_env)
    for src in container.get("envFrom") or []:
        kind = "configMap" if "configMapRef" in src else "secret"
        data = _from_source(kind, src[f"{kind}Ref"], ns, ctx) or {}
        env.update({src.get("prefix", "") + k: v for k, v in data.items()})
    for e in container.get("env") or []:
        if "valueFrom" not in e:
            env[e["name"]] = expand(e.get("value", ""), env)
            continue
        vf = e["valueFrom"]
        if "fieldRef" in vf:
            env[e["name"]] = field_value(pod, vf["fieldRef"]["fieldPath"], ctx)
            continue
        kind = "configMap" if "configMapKeyRef" in vf else "secret" if "secretKeyRef" in vf else ""
        if not kind:
            raise PodSpecError("CreateContainerConfigError", f"env {e['name']}: unsupported valueFrom")
        ref = vf[f"{kind}KeyRef"]
        data = _from_source(kind, ref, ns, ctx)
        if data is not None and ref["key"] not in data and not ref.get("optional"):
            raise PodSpecError("CreateContainerConfigError",
                               f"env {e['name']}: key {ref['key']!r} not in {kind} {ref['name']!r}")
        if data is not None and ref["key"] in data:
            env[e["name"]] = data[ref["key"]]
    return env


def entrypoint(image: str, command: list[str] | None) -> list[str]:
    """The image's entrypoint (or `command`) as this checkout runs it."""
    repo = image.rsplit("/", 1)[-1].split("@")[0].split(":")[0]
    if repo not in IMAGE_ENTRYPOINTS:
        raise PodSpecError("ErrImagePull", f"image {image!r} is not in the lab's image store "
                                           f"(it runs {', '.join(IMAGE_ENTRYPOINTS)}:* from this checkout)")
    if command:
        first = IMAGE_ENTRYPOINTS.get(command[0], [command[0]])
        return [*first, *command[1:]]
    return list(IMAGE_ENTRYPOINTS[repo])


def container_process(pod: dict, container: dict, ctx: PodContext) -> ContainerProcess:
    """The process for one container: argv, environment and mounts, all resolved."""
    mount_list = mounts(pod, container, ctx)
    env = {k: translate(v, mount_list) for k, v in resolve_env(pod, container, ctx).items()}
    argv = [*entrypoint(container.get("image", ""), container.get("command")),
            *(container.get("args") or [])]
    return ContainerProcess(container["name"],
                            [argv[0], *(translate(expand(a, env), mount_list) for a in argv[1:])],
                            env, mount_list)
