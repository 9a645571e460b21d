"""deploy/'s manifests against the code they run, so neither can drift: every container's
args parse with `calico-lite`'s own parser, every $(VAR) is defined, every key a container
reads exists in the ConfigMap, probes hit the port the process serves its health on, the
conflist names the socket the agent listens on, and every image is the version the package
says. (The API server's own validation of the same files: tests/e2e/test_daemonset_lab.py,
`kubectl apply --dry-run=server`.)"""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from calico_lite.cli.app import parse
from calico_lite.lab import manifests

REPO = Path(__file__).resolve().parents[2]
DOCS = manifests.load() + manifests.load(REPO / "deploy" / "cleanup")
TEMPLATES = {d["metadata"]["name"]: d["spec"]["template"] for d in DOCS
             if d["kind"] in ("DaemonSet", "Deployment")}
CONTAINERS = [(name, c) for name, t in TEMPLATES.items()
              for c in t["spec"].get("initContainers", []) + t["spec"]["containers"]]
VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def with_placeholders(args: list[str], env_names: set[str]) -> list[str]:
    """$(VAR) -> a plausible value (what the kubelet substitutes), so argparse can check types."""
    values = {"NODE_NAME": "n1", "NODE_IP": "10.0.0.1", "ETCD_ENDPOINTS": "https://10.0.0.2:2379",
              "AS_NUMBER": "64512"}
    return [VAR.sub(lambda m: values.get(m.group(1), "x"), a) for a in args]


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


@pytest.mark.parametrize("owner,container", CONTAINERS, ids=[f"{o}/{c['name']}" for o, c in CONTAINERS])
def test_args_parse_and_every_variable_is_defined(owner, container):
    env_names = {e["name"] for e in container.get("env", [])}
    used = {v for a in container["args"] for v in VAR.findall(a)}
    assert used <= env_names, f"{owner}/{container['name']}: undefined {used - env_names}"
    args = parse(with_placeholders(container["args"], env_names))  # exits 2 on an unknown flag
    assert args.fn is not None


def test_config_keys_read_by_containers_exist():
    cm = manifests.find(DOCS, "ConfigMap", manifests.CONFIG)["data"]
    for owner, c in CONTAINERS:
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("configMapKeyRef")
            if ref:
                assert ref["name"] == manifests.CONFIG and ref["key"] in cm, (owner, e)


def test_probes_hit_the_health_port_the_process_listens_on():
    for owner, c in CONTAINERS:
        for probe in ("readinessProbe", "livenessProbe"):
            if probe in c:
                listen = flag(c["args"], "--health-listen")
                host, port = listen.rsplit(":", 1)
                get = c[probe]["httpGet"]
                assert (get["host"], str(get["port"])) == (host, port), (owner, probe)
                assert get["path"] == ("/readyz" if probe == "readinessProbe" else "/healthz")


def test_the_conflist_names_the_socket_the_agent_serves_and_both_are_host_paths():
    tpl = TEMPLATES[manifests.NODE_DS]["spec"]
    install, agent = tpl["initContainers"][0], tpl["containers"][0]
    assert flag(install["args"], "--agent-socket") == flag(agent["args"], "--cni-socket")
    host_paths = {v["name"]: v["hostPath"]["path"] for v in tpl["volumes"] if "hostPath" in v}
    for c, path in ((install, flag(install["args"], "--agent-socket")),
                    (agent, flag(agent["args"], "--run-dir"))):
        mount = next(m for m in c["volumeMounts"] if path.startswith(m["mountPath"]))
        # mounted at the same path as on the host: the shim, on the host, finds the socket
        assert host_paths[mount["name"]] == mount["mountPath"]
    # install-cni's folders are the hostPaths a runtime reads
    for arg, host in (("--bin-dir", "/opt/cni/bin"), ("--conf-dir", "/etc/cni/net.d")):
        mount = next(m for m in install["volumeMounts"] if m["mountPath"] == flag(install["args"], arg))
        assert host_paths[mount["name"]] == host


def test_every_mount_names_a_volume_and_images_are_the_package_version():
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    for name, t in TEMPLATES.items():
        volumes = {v["name"] for v in t["spec"].get("volumes", [])}
        for c in t["spec"].get("initContainers", []) + t["spec"]["containers"]:
            assert {m["name"] for m in c.get("volumeMounts", [])} <= volumes, (name, c["name"])
            assert c["image"] == f"calico-lite:{version}", (name, c["image"])


def test_deploy_holds_no_address_and_no_key():
    cm = manifests.find(DOCS, "ConfigMap", manifests.CONFIG)["data"]
    assert cm["etcd_endpoints"] == "" and not any(cm[k] for k in ("etcd_ca", "etcd_cert", "etcd_key"))
    assert not manifests.find(DOCS, "Secret", manifests.ETCD_SECRET).get("data")
