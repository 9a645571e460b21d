"""`calico-lite install-cni`: what the DaemonSet's init container and the lab run."""
from __future__ import annotations

import json
import os
import subprocess

from tests.conftest import CLI, SHIM


def install(tmp_path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "install-cni", "--bin-dir", str(tmp_path / "bin"),
                           "--conf-dir", str(tmp_path / "net.d"), *extra],
                          capture_output=True, text=True, env={**os.environ, **(env or {})})


def test_installs_the_static_shim_and_a_valid_conflist(tmp_path, shim):
    p = install(tmp_path, "--agent-socket", "/run/x/cni.sock", "--mtu", "1400")
    assert p.returncode == 0, p.stderr
    binary = tmp_path / "bin" / "calico-lite"
    assert binary.read_bytes() == SHIM.read_bytes() and os.access(binary, os.X_OK)
    ldd = subprocess.run(["ldd", str(binary)], capture_output=True, text=True)
    assert "not a dynamic executable" in ldd.stdout + ldd.stderr
    conf = json.loads((tmp_path / "net.d" / "10-calico-lite.conflist").read_text())
    assert conf["cniVersion"] == "1.0.0" and conf["name"] == "k8s-pod-network"
    plugin = conf["plugins"][0]
    assert plugin["type"] == "calico-lite" and plugin["agent_socket"] == "/run/x/cni.sock"
    assert plugin["mtu"] == 1400


def test_reinstall_replaces_atomically_and_leaves_no_temp_files(tmp_path, shim):
    assert install(tmp_path).returncode == 0
    conf = tmp_path / "net.d" / "10-calico-lite.conflist"
    before = conf.stat().st_ino
    assert install(tmp_path, "--agent-socket", "/run/y.sock").returncode == 0
    assert conf.stat().st_ino != before  # a new file renamed into place, never rewritten in place
    assert json.loads(conf.read_text())["plugins"][0]["agent_socket"] == "/run/y.sock"
    leftovers = [p.name for d in ("bin", "net.d") for p in (tmp_path / d).iterdir()
                 if p.name.startswith(".")]
    assert leftovers == []


def test_missing_shim_is_a_clear_error_and_installs_nothing(tmp_path):
    p = install(tmp_path, env={"CALICO_LITE_SHIM": str(tmp_path / "nope")})
    assert p.returncode == 1 and "CNI shim not found" in p.stderr and "make build" in p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "net.d" / "10-calico-lite.conflist").exists()
