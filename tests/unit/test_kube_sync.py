import pytest

from calico_lite import keys
from calico_lite.kube_sync import namespace_record, pod_record, policy_record, reconcile_plan


def test_namespace_and_pod_records():
    assert namespace_record({"metadata": {"name": "x", "labels": {"a": "1"}}}) == (
        keys.k8s_namespace("x"), {"name": "x", "labels": {"a": "1"}})
    pod = {"metadata": {"namespace": "x", "name": "p", "labels": {"app": "web"}},
           "spec": {"nodeName": "n1", "containers": [
               {"ports": [{"name": "http", "containerPort": 80}]},
               {"ports": [{"containerPort": 53, "protocol": "UDP"}]}]},
           "status": {"podIP": "10.244.0.5"}}
    key, rec = pod_record(pod)
    assert key == keys.k8s_pod("x", "p") and rec["node"] == "n1" and rec["ip"] == "10.244.0.5"
    assert rec["ports"] == [{"name": "http", "protocol": "TCP", "port": 80},
                            {"name": None, "protocol": "UDP", "port": 53}]
    assert pod_record({"metadata": {"namespace": "x", "name": "h"}, "spec": {"hostNetwork": True}}) is None


def test_policy_record_is_validated_and_normalised():
    obj = {"metadata": {"name": "deny", "namespace": "x", "uid": "u", "resourceVersion": "9"},
           "spec": {"podSelector": {}}}
    key, rec = policy_record(obj)
    assert key == keys.k8s_policy("x", "deny")
    assert rec["spec"]["policyTypes"] == ["Ingress"] and "uid" not in rec["metadata"]
    with pytest.raises(Exception, match="port"):
        policy_record({"metadata": {"name": "b", "namespace": "x"},
                       "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": "no_such!"}]}]}})


def test_reconcile_writes_changes_and_deletes_what_the_api_no_longer_has():
    current = {"/a": {"v": 1}, "/b": {"v": 2}, "/gone": {"v": 3}}
    listed = {"/a": {"v": 1}, "/b": {"v": 20}, "/new": {"v": 4}}
    puts, deletes = reconcile_plan(current, listed)
    assert puts == {"/b": {"v": 20}, "/new": {"v": 4}} and deletes == ["/gone"]


def _sa_dir(tmp_path):
    from calico_lite.lab.pki import LabCA
    ca = LabCA(tmp_path / "pki")
    ca.create("test-ca")
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("tok-1")
    (sa / "ca.crt").write_bytes(ca.cert_path.read_bytes())
    (sa / "namespace").write_text("kube-system")
    return sa, ca


def test_in_cluster_credentials_from_a_service_account_dir(tmp_path, monkeypatch):
    from calico_lite.kube_sync import api_client
    sa, _ = _sa_dir(tmp_path)
    cfg = api_client(service_account_dir=str(sa), api_server="https://10.97.0.10:6443").configuration
    assert cfg.host == "https://10.97.0.10:6443" and cfg.ssl_ca_cert == str(sa / "ca.crt")
    assert cfg.get_api_key_with_prefix("authorization") == "bearer tok-1"
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    assert api_client(service_account_dir=str(sa)).configuration.host == "https://10.96.0.1:443"


def test_kubeconfig_credentials(tmp_path):
    from calico_lite.kube_sync import api_client
    from calico_lite.lab.control_plane import render_kubeconfig
    _, ca = _sa_dir(tmp_path)
    files = ca.issue("admin", "kubernetes-admin", ("system:masters",))
    kc = tmp_path / "admin.kubeconfig"
    kc.write_text(render_kubeconfig(ca.cert_path, files.cert, files.key, "kubernetes-admin",
                                    server="https://10.97.0.10:6443"))
    cfg = api_client(kubeconfig=str(kc)).configuration
    assert cfg.host == "https://10.97.0.10:6443" and cfg.cert_file and cfg.key_file


def test_backoff_doubles_to_a_cap_and_resets():
    from bgp.process import Backoff
    b = Backoff(first=1.0, cap=4.0)
    delays = [b.next() for _ in range(5)]
    assert all(0.8 * base <= d <= 1.2 * base for d, base in zip(delays, [1, 2, 4, 4, 4])), delays
    b.reset()
    assert b.next() <= 1.2
