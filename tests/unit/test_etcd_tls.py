"""etcd client TLS settings without a server: which combinations are mistakes, how the
endpoints' schemes must agree, and the lab's etcd certificates (CN = etcd user, SANs)."""
from __future__ import annotations

import ipaddress

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from calico_lite.datastore import Datastore
from calico_lite.etcd_tls import EtcdTls, EtcdTlsError, explain_rpc_error
from calico_lite.lab.pki import ETCD_USERS, EtcdFiles


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    f = EtcdFiles(tmp_path_factory.mktemp("etcd-pki"))
    f.create(("10.97.0.10", "127.0.0.1"))
    return f


def test_a_cert_needs_its_key_and_the_other_way_round():
    with pytest.raises(EtcdTlsError, match="cert file given without a key file"):
        EtcdTls("/ca", cert_file="/c")
    with pytest.raises(EtcdTlsError, match="key file given without a cert file"):
        EtcdTls("/ca", key_file="/k")
    with pytest.raises(EtcdTlsError, match="name no file"):
        EtcdTls()


def test_no_setting_means_plain_http():
    assert EtcdTls.from_settings({}, {}) is None
    assert EtcdTls.from_settings({"ca_file": None}, {"ETCD_CA_CERT_FILE": ""}) is None


def test_argv_gives_the_files_back_as_flags():
    assert EtcdTls("/a", "/b", "/c").argv() == ["--etcd-ca-file", "/a", "--etcd-cert-file", "/b",
                                                "--etcd-key-file", "/c"]
    assert EtcdTls("/a").argv() == ["--etcd-ca-file", "/a"]


def test_the_scheme_must_agree_with_the_settings(files):
    with pytest.raises(EtcdTlsError, match="https://e:1 is https but no TLS files"):
        Datastore(["http://d:1", "https://e:1"])
    with pytest.raises(EtcdTlsError, match="http://e:1 is plain http but TLS files"):
        Datastore(["http://e:1"], tls=files.tls())
    Datastore(["e:1"], tls=files.tls()).close()   # no scheme: the settings decide
    Datastore(["e:1"]).close()


def test_the_lab_issues_one_certificate_per_etcd_user(files):
    for user in ETCD_USERS:
        cert = x509.load_pem_x509_certificate(files.client(user).cert.read_bytes())
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == user
    server = x509.load_pem_x509_certificate(files.server.cert.read_bytes())
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("10.97.0.10"), ipaddress.ip_address("127.0.0.1")}
    assert files.client("calico-lite").key.stat().st_mode & 0o077 == 0
    with pytest.raises(ValueError, match="no etcd client certificate for 'admin'"):
        files.client("admin")


def test_a_key_of_another_certificate_is_caught_before_connecting(files):
    tls = EtcdTls(str(files.ca), str(files.client("calico-lite").cert), str(files.client("root").key))
    with pytest.raises(EtcdTlsError) as e:
        Datastore(["https://127.0.0.1:1"], tls=tls)
    assert str(e.value) == (f"etcd key file {files.client('root').key} does not match the "
                            f"certificate in {files.client('calico-lite').cert}")
    assert files.client("root").key.read_text().splitlines()[1] not in str(e.value)


def test_hints_name_the_file_to_check():
    tls = EtcdTls("/ca.crt", "/c.crt", "/c.key")
    assert "/ca.crt" in explain_rpc_error("Tls handshake failed ... CERTIFICATE_VERIFY_FAILED", tls)
    assert "/c.crt" in explain_rpc_error("Unwrap failed (TSI_DATA_CORRUPTED)", tls)
    assert "does etcd serve https?" in explain_rpc_error("UNAVAILABLE: Socket closed", None)
    assert explain_rpc_error("etcd connection timeout", tls) == ""
