"""etcd client TLS settings, as Calico takes them: a CA file that signed etcd's serving
certificate, and this client's certificate and key (etcd run with --client-cert-auth wants
them; with etcd's auth on, the certificate's CN is the etcd user).

Only paths are kept. The files are read once, when a Datastore is made, and checked then
(readable, PEM, the key belongs to the certificate), so a wrong setting stops a component at
start with a message that names the file, never with a timeout later. No message ever holds a
file's contents: the errors are written here, not passed on from the parsers.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# The environment variables Calico's components read, and the CLI flags that override them.
ENV = {"ca_file": "ETCD_CA_CERT_FILE", "cert_file": "ETCD_CERT_FILE", "key_file": "ETCD_KEY_FILE"}
FLAGS = {"ca_file": "--etcd-ca-file", "cert_file": "--etcd-cert-file",
         "key_file": "--etcd-key-file"}


class EtcdTlsError(ValueError):
    """A TLS setting that cannot work: named file or endpoint, no secret."""


@dataclass(frozen=True)
class EtcdTls:
    """Paths only (safe to log or pass on a command line: `argv`)."""
    ca_file: str | None = None     # None: the system's trusted CAs
    cert_file: str | None = None   # with key_file: the client's identity
    key_file: str | None = None

    def __post_init__(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            given, missing = (("cert", "key") if self.cert_file else ("key", "cert"))
            raise EtcdTlsError(f"etcd client {given} file given without a {missing} file "
                               f"({FLAGS[missing + '_file']} / ${ENV[missing + '_file']})")
        if not (self.ca_file or self.cert_file):
            raise EtcdTlsError("etcd TLS settings name no file")

    @classmethod
    def from_settings(cls, values: Mapping[str, str | None],
                      environ: Mapping[str, str]) -> EtcdTls | None:
        """From values by field name (the CLI's flags), else the environment; None when
        neither names any file (plain http)."""
        chosen = {f: values.get(f) or environ.get(var) or None for f, var in ENV.items()}
        return cls(**chosen) if any(chosen.values()) else None

    def argv(self) -> list[str]:
        """The calico-lite flags that give these files to a component's command line."""
        given = [(flag, getattr(self, f)) for f, flag in FLAGS.items() if getattr(self, f)]
        return [a for pair in given for a in pair]

    def credentials(self):
        """gRPC channel credentials from the files, after checking them."""
        import grpc
        ca = cert = key = None
        if self.ca_file:
            ca = _read(self.ca_file, "CA")
            _certificate(ca, self.ca_file, "CA")
        if self.cert_file and self.key_file:
            cert, key = _read(self.cert_file, "cert"), _read(self.key_file, "key")
            _check_pair(cert, self.cert_file, key, self.key_file)
        return grpc.ssl_channel_credentials(ca, key, cert)


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise EtcdTlsError(f"etcd {what} file {path}: cannot read it ({e.strerror})") from None


def _certificate(data: bytes, path: str, what: str):
    from cryptography import x509
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise EtcdTlsError(f"etcd {what} file {path}: not a PEM certificate") from None


def _check_pair(cert_pem: bytes, cert_path: str, key_pem: bytes, key_path: str) -> None:
    """The key must be the certificate's: otherwise the handshake fails with a message that
    names neither file."""
    from cryptography.hazmat.primitives import serialization
    cert = _certificate(cert_pem, cert_path, "cert")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise EtcdTlsError(f"etcd key file {key_path}: not an unencrypted PEM private key"
                           ) from None
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    if (key.public_key().public_bytes(serialization.Encoding.DER, pub)
            != cert.public_key().public_bytes(serialization.Encoding.DER, pub)):
        raise EtcdTlsError(f"etcd key file {key_path} does not match the certificate in "
                           f"{cert_path}")


def explain_rpc_error(text: str, tls: EtcdTls | None) -> str:
    """A hint to add to a failed call's message when it looks like a TLS mismatch."""
    lowered = text.lower()
    if tls and ("certificate_verify_failed" in lowered or "handshake" in lowered):
        return (f" (TLS handshake failed: is etcd's serving certificate signed by the CA in "
                f"{tls.ca_file or 'the system trust store'}, and for this address?)")
    if tls and any(t in lowered for t in ("bad certificate", "bad_certificate",
                                          "certificate required", "tsi_data_corrupted")):
        # etcd with --client-cert-auth drops a client whose certificate its CA did not sign
        return (f" (etcd refused the client certificate: "
                f"{tls.cert_file or 'none given (--etcd-cert-file / $ETCD_CERT_FILE)'})")
    if not tls and ("socket closed" in lowered or "connection reset" in lowered):
        return (" (does etcd serve https? then give the TLS files: --etcd-ca-file, "
                "--etcd-cert-file, --etcd-key-file)")
    return ""
