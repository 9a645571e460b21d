"""The lab's certificate authority: every key and certificate a lab's cluster needs, made at
`lab up` with the `cryptography` library (EC P-256 keys: fast to make, accepted everywhere).

Kubernetes authenticates clients by certificate (CN = user, O = groups), so each component
gets its own identity, as kubeadm would issue it: the admin (system:masters) for kubectl,
the controller manager, the scheduler, and one `system:node:NAME` per lab node so the Node
authorizer confines each node component to its own pods. The service-account key pair signs
the tokens that kube-sync (and, later, DaemonSet pods) authenticate with.

etcd has a CA of its own (`EtcdFiles`, as kubeadm's etcd/ca): a certificate that etcd
accepts is then no credential for the API server, nor the other way round. etcd takes the
client certificate's CN as its user (ETCD_USERS), which its own RBAC confines to a prefix.
"""
from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=365)


@dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _name(cn: str, orgs: tuple[str, ...] = ()) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                      *(x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs)])


class LabCA:
    """A CA in a folder: `ca.crt`/`ca.key`, and every certificate it issued beside them."""

    def __init__(self, folder: Path):
        self.dir = folder
        self.cert_path = folder / "ca.crt"

    def create(self, cn: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + VALIDITY * 10)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                             crl_sign=True, content_commitment=False,
                                             key_encipherment=False, data_encipherment=False,
                                             key_agreement=False, encipher_only=False,
                                             decipher_only=False), critical=True)
                .sign(key, hashes.SHA256()))
        _write_key(key, self.dir / "ca.key")
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def _load(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        key = serialization.load_pem_private_key((self.dir / "ca.key").read_bytes(), None)
        return cert, key  # type: ignore[return-value]

    def issue(self, name: str, cn: str, orgs: tuple[str, ...] = (), server: bool = False,
              ips: tuple[str, ...] = (), dns: tuple[str, ...] = ()) -> CertFiles:
        """A leaf certificate `NAME.crt`/`NAME.key`: a client one, or a server one with SANs."""
        ca_cert, ca_key = self._load()
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        usage = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH] if server \
            else [ExtendedKeyUsageOID.CLIENT_AUTH]
        b = (x509.CertificateBuilder().subject_name(_name(cn, orgs))
             .issuer_name(ca_cert.subject).public_key(key.public_key())
             .serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + VALIDITY)
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage(usage), critical=False))
        if ips or dns:
            b = b.add_extension(x509.SubjectAlternativeName(
                [*(x509.IPAddress(ipaddress.ip_address(i)) for i in ips),
                 *(x509.DNSName(d) for d in dns)]), critical=False)
        files = CertFiles(self.dir / f"{name}.crt", self.dir / f"{name}.key")
        _write_key(key, files.key)
        files.cert.write_bytes(b.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
        return files


# etcd's users, by client certificate CN: calico-lite's components (agents, kube-sync, the
# CLI), the API server, and the lab's own admin (root: sets etcd's auth up, seeds records).
ETCD_USERS = ("calico-lite", "kube-apiserver", "root")


@dataclass(frozen=True)
class EtcdFiles:
    """Where a lab keeps etcd's CA, its serving certificate and one client certificate per
    user: the one place that says so, for the lab's processes and for whoever puts the same
    files into a Kubernetes Secret (`ca`, `client("calico-lite")`)."""
    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def server(self) -> CertFiles:
        return CertFiles(self.dir / "server.crt", self.dir / "server.key")

    def client(self, user: str) -> CertFiles:
        if user not in ETCD_USERS:
            raise ValueError(f"no etcd client certificate for {user!r} "
                             f"(users: {', '.join(ETCD_USERS)})")
        return CertFiles(self.dir / f"{user}.crt", self.dir / f"{user}.key")

    def tls(self, user: str = "calico-lite"):
        """The datastore's TLS settings (calico_lite.etcd_tls.EtcdTls) as `user`."""
        from calico_lite.etcd_tls import EtcdTls
        c = self.client(user)
        return EtcdTls(str(self.ca), str(c.cert), str(c.key))

    def create(self, server_ips: tuple[str, ...]) -> None:
        """The CA, the server certificate for these addresses, every user's certificate."""
        ca = LabCA(self.dir)
        ca.create("calico-lite-lab-etcd-ca")
        ca.issue("server", "etcd", server=True, ips=server_ips)
        for user in ETCD_USERS:
            ca.issue(user, user)


def make_key_pair(private: Path, public: Path) -> None:
    """The service-account signing key pair (kube-apiserver signs tokens, verifies with .pub)."""
    key = ec.generate_private_key(ec.SECP256R1())
    _write_key(key, private)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
