"""A real etcd with client TLS (--client-cert-auth), alone in a scratch network namespace:
the CLI, the agent and kube-sync connect with the right files (flags or Calico's environment
variables), and every wrong setting is a clear error that names the file or the endpoint and
never shows a key.

The clients run inside the namespace (`ip netns exec`), so the test process's own namespace
never gets an etcd of its own.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from calico_lite.lab import plumbing as pl
from calico_lite.lab.pki import EtcdFiles, LabCA
from tests.nslib import remove_netns_with_prefix, unique_prefix, wait_for

REPO = Path(__file__).resolve().parents[2]
HTTPS = "https://127.0.0.1:2379"


class TlsEtcd:
    """etcd in namespace `ns` with the files of `files`; `other` is a CA etcd does not trust,
    with a client certificate of its own."""

    def __init__(self, root: Path, ns: str):
        self.ns, self.root = ns, root
        self.files = EtcdFiles(root / "pki")
        self.files.create(("127.0.0.1",))
        self.other = LabCA(root / "other")
        self.other.create("another-ca")
        self.other_client = self.other.issue("calico-lite", "calico-lite")

    def start(self) -> None:
        f = self.files
        pl.add_netns(self.ns)
        pl.ip(self.ns, "link", "set", "lo", "up")
        pl.spawn(self.ns, [
            "etcd", "--name", "t", "--data-dir", str(self.root / "data"),
            "--listen-client-urls", HTTPS, "--advertise-client-urls", HTTPS,
            "--client-cert-auth", "--trusted-ca-file", str(f.ca),
            "--cert-file", str(f.server.cert), "--key-file", str(f.server.key),
            "--listen-peer-urls", "http://127.0.0.1:2380",
            "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
            "--initial-cluster", "t=http://127.0.0.1:2380",
            "--heartbeat-interval", "10", "--election-timeout", "100", "--log-level", "warn"],
            self.root / "etcd.log")
        wait_for(lambda: self.cli("pool", "list", *self.flags()).returncode == 0,
                 "etcd serving TLS", timeout=30, interval=0.2)

    def flags(self, ca: Path | None = None, cert: Path | None = None, key: Path | None = None,
              endpoint: str = HTTPS) -> list[str]:
        client = self.files.client("calico-lite")
        return ["--etcd-endpoints", endpoint, "--etcd-ca-file", str(ca or self.files.ca),
                "--etcd-cert-file", str(cert or client.cert), "--etcd-key-file", str(key or client.key)]

    def cli(self, *args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        """calico-lite inside the namespace, without the caller's etcd environment."""
        base = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "CALICO_LITE_"))}
        return subprocess.run(["ip", "netns", "exec", self.ns, str(REPO / ".venv" / "bin" / "calico-lite"),
                               *args], capture_output=True, text=True, timeout=timeout,
                              env={**base, "PYTHONPATH": str(REPO), **(env or {})})

    def secrets(self) -> list[str]:
        """Every private key's PEM body and each of its base64 lines."""
        found = []
        for key in [*self.files.dir.glob("*.key"), *self.other.dir.glob("*.key")]:
            text = key.read_text()
            found.append(text.strip())
            found += [line for line in text.splitlines() if line and not line.startswith("-----")]
        assert len(found) > 10
        return found


@pytest.fixture(scope="module")
def etcd():
    prefix = unique_prefix("tls")
    root = Path(tempfile.mkdtemp(prefix=f"calico-lite-{prefix}-"))
    try:
        e = TlsEtcd(root, f"{prefix}-etcd")
        e.start()
        yield e
    finally:
        remove_netns_with_prefix(prefix)
        subprocess.run(["rm", "-rf", str(root)])


def failed(e: TlsEtcd, p: subprocess.CompletedProcess) -> str:
    """The one error line of a failed command, checked to hold no key."""
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    lines = [line for line in p.stderr.splitlines() if line.startswith("calico-lite: error:")]
    assert len(lines) == 1, p.stderr
    for secret in e.secrets():
        assert secret not in p.stderr + p.stdout
    return lines[0]


def test_the_right_files_by_flag_connect(etcd):
    p = etcd.cli("pool", "add", "tlspool", "--cidr", "10.244.0.0/16", *etcd.flags())
    assert p.returncode == 0, p.stderr
    p = etcd.cli("pool", "list", "--json", *etcd.flags())
    assert p.returncode == 0 and "10.244.0.0/16" in p.stdout, p.stderr


def test_the_right_files_by_calicos_environment_variables_connect(etcd):
    client = etcd.files.client("calico-lite")
    env = {"ETCD_ENDPOINTS": HTTPS, "ETCD_CA_CERT_FILE": str(etcd.files.ca),
           "ETCD_CERT_FILE": str(client.cert), "ETCD_KEY_FILE": str(client.key)}
    p = etcd.cli("pool", "list", env=env)
    assert p.returncode == 0, p.stderr
    # a flag overrides its variable: a missing file given by flag wins over a good one
    p = etcd.cli("pool", "list", "--etcd-ca-file", "/nonexistent/ca.crt", env=env)
    assert "etcd CA file /nonexistent/ca.crt: cannot read it" in failed(etcd, p)


def test_plain_http_against_tls_etcd_says_so(etcd):
    msg = failed(etcd, etcd.cli("pool", "list", "--etcd-endpoints", "http://127.0.0.1:2379"))
    assert "etcd at http://127.0.0.1:2379" in msg and "does etcd serve https?" in msg


def test_https_without_tls_files_names_the_endpoint(etcd):
    msg = failed(etcd, etcd.cli("pool", "list", "--etcd-endpoints", HTTPS))
    assert f"etcd endpoint {HTTPS} is https but no TLS files are given" in msg


def test_tls_files_with_an_http_endpoint_is_refused(etcd):
    msg = failed(etcd, etcd.cli("pool", "list", *etcd.flags(endpoint="http://127.0.0.1:2379")))
    assert "is plain http but TLS files are given" in msg


def test_a_wrong_ca_names_the_ca_file(etcd):
    msg = failed(etcd, etcd.cli("pool", "list", *etcd.flags(ca=etcd.other.cert_path)))
    assert "TLS handshake failed" in msg and str(etcd.other.cert_path) in msg


def test_a_client_certificate_etcd_does_not_trust_is_named(etcd):
    c = etcd.other_client
    msg = failed(etcd, etcd.cli("pool", "list", *etcd.flags(cert=c.cert, key=c.key)))
    assert f"etcd refused the client certificate: {c.cert}" in msg


def test_a_missing_file_is_named(etcd):
    missing = etcd.root / "pki" / "nope.key"
    msg = failed(etcd, etcd.cli("pool", "list", *etcd.flags(key=missing)))
    assert f"etcd key file {missing}: cannot read it (No such file or directory)" in msg


def test_a_key_of_another_certificate_is_named(etcd):
    wrong = etcd.files.client("root").key
    msg = failed(etcd, etcd.cli("pool", "list", *etcd.flags(key=wrong)))
    assert f"etcd key file {wrong} does not match the certificate in " in msg


def test_a_certificate_without_its_key_is_a_usage_mistake(etcd):
    client = etcd.files.client("calico-lite")
    p = etcd.cli("pool", "list", "--etcd-endpoints", HTTPS, "--etcd-cert-file", str(client.cert))
    assert "etcd client cert file given without a key file (--etcd-key-file" in failed(etcd, p)


def test_a_file_that_is_no_pem_is_named_without_its_contents(etcd):
    """A key given where the CA belongs: named, and not a byte of it shown."""
    key = etcd.files.client("calico-lite").key
    msg = failed(etcd, etcd.cli("pool", "list", *etcd.flags(ca=key)))
    assert f"etcd CA file {key}: not a PEM certificate" in msg


@pytest.mark.parametrize("daemon", [
    ["node", "run", "--name", "n1", "--address", "127.0.0.1", "--subnet", "127.0.0.0/8",
     "--health-listen", "off"],
    ["kube-sync", "--api-server", "https://127.0.0.1:1"]], ids=lambda d: d[0])
def test_the_daemons_stop_at_start_on_a_wrong_file(etcd, daemon):
    """The agent and kube-sync take the same options and check the files before anything
    else (no retry loop on a setting that cannot work)."""
    wrong = etcd.files.client("root").key
    msg = failed(etcd, etcd.cli(*daemon, *etcd.flags(key=wrong), timeout=30))
    assert f"etcd key file {wrong} does not match" in msg
