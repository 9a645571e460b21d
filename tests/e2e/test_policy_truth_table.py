"""NetworkPolicy truth tables in the lab, in the style of the Kubernetes network-policy e2e suite.

One lab for the module: namespaces x, y, z (labels ns=<name>, plus the implicit
kubernetes.io/metadata.name), pods a, b, c in each (label pod=<name>), spread over the four
nodes of two racks so that same-node, same-rack and cross-rack pairs all occur. Every pod
serves TCP and UDP on 80 and 81 and declares the named ports serve-80-tcp, serve-81-udp, ...

Each case applies a policy set (and/or label changes) with kubectl against the lab's real
kube-apiserver (kube-sync carries them into the datastore), waits with
`lab wait --policy`, probes every pod to every other on every port/protocol and compares the
whole 9x9 matrix with what a small, pure expectation model says (`Reachability`, like the
upstream suite's helper: start all-connected, then set expectations). The model never calls our
compiler: a bug there must show up as a difference. Before each case all policies are deleted,
labels reset, and the baseline verified to be all-connected.
"""
from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import pytest

from tests.conftest import CLI, lab_cli
from tests.e2e.labutil import lab_name, running_lab

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for the lab")
slow = pytest.mark.slow

NAMESPACES = ("x", "y", "z")
POD_NAMES = ("a", "b", "c")
NODES = ("r1n1", "r1n2", "r2n1", "r2n2")  # rack1: r1n*, rack2: r2n*
PODS = tuple(f"{ns}/{p}" for ns in NAMESPACES for p in POD_NAMES)
PLACEMENT = {pod: NODES[i % len(NODES)] for i, pod in enumerate(PODS)}

Port = tuple[int, str]  # (number, "tcp"|"udp")
TCP80, TCP81, UDP80, UDP81 = (80, "tcp"), (81, "tcp"), (80, "udp"), (81, "udp")
ALL_PORTS: tuple[Port, ...] = (TCP80, TCP81, UDP80, UDP81)

# Who a expectation applies to: "x/a", "x/*" (a namespace), "*/a" (a pod name in every
# namespace), "*", a list of those, or a predicate on the pod reference.
Who = Union[str, Iterable[str], Callable[[str], bool]]


# ---------------------------------------------------------------------------- the model (pure)

def _matches(who: Who, pod: str) -> bool:
    if callable(who):
        return bool(who(pod))
    if isinstance(who, str):
        if who == "*":
            return True
        ns, _, name = who.partition("/")
        pns, _, pname = pod.partition("/")
        return ns in ("*", pns) and (name or "*") in ("*", pname)
    return any(_matches(w, pod) for w in who)


@dataclass
class Reachability:
    """Expected connectivity on one port: every ordered pair of distinct pods, all connected at
    first; each `expect` overrides what came before for the pairs it names."""

    pods: tuple[str, ...] = PODS
    cells: dict[tuple[str, str], bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.cells:
            self.cells = {(a, b): True for a in self.pods for b in self.pods if a != b}

    def expect(self, src: Who, dst: Who, connected: bool) -> "Reachability":
        for a, b in self.cells:
            if _matches(src, a) and _matches(dst, b):
                self.cells[(a, b)] = connected
        return self

    def expect_all_ingress(self, dst: Who, connected: bool) -> "Reachability":
        return self.expect("*", dst, connected)

    def expect_all_egress(self, src: Who, connected: bool) -> "Reachability":
        return self.expect(src, "*", connected)

    def copy(self) -> "Reachability":
        return Reachability(self.pods, dict(self.cells))

    def __and__(self, other: "Reachability") -> "Reachability":
        """Both sides must allow: an egress view AND an ingress view of the same port."""
        return Reachability(self.pods, {k: v and other.cells[k] for k, v in self.cells.items()})


def per_port(default: Reachability, **overrides: Reachability) -> dict[Port, Reachability]:
    """The same expectation on every probed port, except overrides keyed tcp80, udp81, ..."""
    out = {p: default.copy() for p in ALL_PORTS}
    for key, r in overrides.items():
        out[(int(key[3:]), key[:3])] = r
    return out


def render_matrix(pods: tuple[str, ...], cell: Callable[[str, str], str]) -> str:
    lines = ["        " + " ".join(f"{p:>4}" for p in pods)]
    for a in pods:
        lines.append(f"{a:>6}  " + " ".join(f"{'' if a == b else cell(a, b):>4}" for b in pods))
    return "\n".join(lines)


def compare(port: Port, expected: Reachability, observed: dict[tuple[str, str], bool]) -> str | None:
    """None when the observed matrix is the expected one; otherwise a readable report."""
    if set(observed) != set(expected.cells):
        return (f"{port[1].upper()}/{port[0]}: probed pairs differ from the model: missing "
                f"{sorted(set(expected.cells) - set(observed))}, extra {sorted(set(observed) - set(expected.cells))}")
    wrong = sorted(k for k, v in expected.cells.items() if observed[k] != v)
    if not wrong:
        return None
    mark = {(True, True): ".", (False, False): "X", (False, True): "+", (True, False): "-"}
    pods = expected.pods
    return "\n".join([
        f"{port[1].upper()}/{port[0]}: {len(wrong)} of {len(expected.cells)} pairs differ "
        "(rows: from, columns: to)",
        "expected ('.' connected, 'X' blocked):",
        render_matrix(pods, lambda a, b: "." if expected.cells[(a, b)] else "X"),
        "observed:",
        render_matrix(pods, lambda a, b: "." if observed[(a, b)] else "X"),
        "comparison ('+' connected but should be blocked, '-' blocked but should connect):",
        render_matrix(pods, lambda a, b: mark[(expected.cells[(a, b)], observed[(a, b)])]),
        *(f"  {a} -> {b}: expected {'connected' if expected.cells[(a, b)] else 'blocked'}, "
          f"observed {'connected' if observed[(a, b)] else 'blocked'}" for a, b in wrong)])


# ---------------------------------------------------------------------------- the lab, via the CLI

def np(ns: str, name: str, spec: str) -> str:
    """One NetworkPolicy document; `spec` is the YAML body of .spec."""
    body = "\n".join("  " + line for line in spec.strip("\n").splitlines())
    return (f"---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
            f"metadata: {{name: {name}, namespace: \"{ns}\"}}\nspec:\n{body}\n")


def as_json_list(manifests: str) -> str:
    import yaml
    return json.dumps({"apiVersion": "v1", "kind": "List",
                       "items": [d for d in yaml.safe_load_all(manifests) if d]})


class PolicyLab:
    """The module's lab, driven as a user drives a cluster: namespaces, pods, labels and
    policies through kubectl against the lab's real API server (`lab kubectl -- ...`), the
    waiting and probing through `calico-lite lab`. Remembers what a case changed (labels,
    deleted pods) so the next case can start from the baseline."""

    def __init__(self, name: str, workdir: Path):
        self.name, self.workdir = name, workdir
        self.ips: dict[str, str] = {}
        self.touched_pods: dict[str, set[str]] = {}
        self.touched_ns: dict[str, set[str]] = {}
        self.missing: set[str] = set()
        self._applied = 0
        self.last_manifests = ""

    def lab(self, *args: str) -> str:
        return lab_cli("lab", *args, "--name", self.name).stdout

    def kubectl(self, *args: str, input: str | None = None) -> str:
        p = subprocess.run([*CLI, "lab", "kubectl", "--name", self.name, "--", *args],
                           input=input, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, f"kubectl {' '.join(args)} failed ({p.returncode}): {p.stderr}"
        return p.stdout

    # -- namespaces, pods and labels
    def ns_add(self, ns: str) -> None:
        self.kubectl("create", "namespace", ns)
        self.kubectl("label", "namespace", ns, f"ns={ns}")

    def pod_add(self, ref: str) -> str:
        ns, name = ref.split("/")
        ports = [{"name": f"serve-{n}-{p}", "containerPort": n, "protocol": p.upper()}
                 for n, p in ALL_PORTS]
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": ns, "labels": {"pod": name}},
               "spec": {"nodeName": PLACEMENT[ref], "terminationGracePeriodSeconds": 0,
                        "containers": [{"name": "server", "image": "agnhost:2.47", "ports": ports}]}}
        self.kubectl("apply", "-f", "-", input=json.dumps(pod))
        self.kubectl("wait", "--for=condition=Ready", f"pod/{name}", "-n", ns, "--timeout=60s")
        self.ips[ref] = self.kubectl("get", "pod", name, "-n", ns, "-o", "jsonpath={.status.podIP}")
        ipaddress.IPv4Address(self.ips[ref])
        self.missing.discard(ref)
        return self.ips[ref]

    def pod_del(self, ref: str) -> None:
        ns, name = ref.split("/")
        self.missing.add(ref)
        self.kubectl("delete", "pod", name, "-n", ns, "--wait", "--timeout=60s")
        self.ips.pop(ref, None)

    def pod_label(self, ref: str, *changes: str) -> None:
        ns, name = ref.split("/")
        self.touched_pods.setdefault(ref, set()).update(c.split("=")[0].rstrip("-") for c in changes)
        self.kubectl("label", "pod", name, "-n", ns, "--overwrite", *changes)

    def ns_label(self, ns: str, *changes: str) -> None:
        self.touched_ns.setdefault(ns, set()).update(c.split("=")[0].rstrip("-") for c in changes)
        self.kubectl("label", "namespace", ns, "--overwrite", *changes)

    # -- policies
    def apply(self, manifests: str) -> None:
        """kubectl apply -f of the case's manifests, written as a JSON List: kubectl reads YAML
        as YAML 1.1, where the namespace names `y` and `n` are booleans."""
        self._applied += 1
        path = self.workdir / f"case{self._applied:03d}.json"
        path.write_text(as_json_list(manifests))
        self.last_manifests += manifests
        self.kubectl("apply", "-f", str(path))
        self.wait()

    def delete_policy(self, ref: str) -> None:
        ns, name = ref.split("/")
        self.kubectl("delete", "networkpolicy", name, "-n", ns)

    def wait(self) -> None:
        self.lab("wait", "--policy")

    def stored_policies(self) -> list[str]:
        items = json.loads(self.kubectl("get", "networkpolicies", "-A", "-o", "json"))["items"]
        return [f"{d['metadata']['namespace']}/{d['metadata']['name']}" for d in items]

    def reset(self) -> None:
        """Back to the baseline: no policy, labels as created, every pod present."""
        for ref in self.stored_policies():
            self.delete_policy(ref)
        for ref in sorted(self.missing):
            self.pod_add(ref)
        for ref, keys in sorted(self.touched_pods.items()):
            self.pod_label(ref, f"pod={ref.split('/')[1]}", *(f"{k}-" for k in sorted(keys - {"pod"})))
        for ns, keys in sorted(self.touched_ns.items()):
            self.ns_label(ns, f"ns={ns}", *(f"{k}-" for k in sorted(keys - {"ns"})))
        self.touched_pods.clear()
        self.touched_ns.clear()
        self.last_manifests = ""
        self.wait()

    # -- probes
    def probe(self, port: Port) -> dict[tuple[str, str], bool]:
        rows = json.loads(self.lab("probe", "--port", str(port[0]), "--protocol", port[1], "--json"))
        return {(r["from"], r["to"]): r["connected"] for r in rows}

    def check(self, expected: dict[Port, Reachability], what: str = "") -> None:
        """Probe every port in parallel (blocked probes cost their 1 s timeout) and compare."""
        with ThreadPoolExecutor(len(expected)) as ex:
            observed = dict(zip(expected, ex.map(self.probe, expected)))
        reports = [r for p in expected if (r := compare(p, expected[p], observed[p]))]
        assert not reports, (f"reachability differs from the model{' (' + what + ')' if what else ''}\n"
                             + "\n\n".join(reports) + "\n\npolicies applied in this case:\n"
                             + (self.last_manifests or "<none>"))


@pytest.fixture(scope="module")
def plab(tmp_path_factory):
    with running_lab(lab_name("tt")) as name:
        lab = PolicyLab(name, tmp_path_factory.mktemp("truth-table"))
        for ns in NAMESPACES:
            lab.ns_add(ns)
        for ref in PODS:
            lab.pod_add(ref)
        lab.wait()
        yield lab


@pytest.fixture
def fresh(plab: PolicyLab) -> PolicyLab:
    """Every case starts from no policy, baseline labels, and a verified all-connected matrix."""
    plab.reset()
    assert plab.stored_policies() == []
    plab.check(per_port(Reachability()), "baseline before the case")
    return plab


# ---------------------------------------------------------------------------- model self-checks

def test_model_overrides_in_order_and_skips_self():
    r = Reachability().expect_all_ingress("x/*", False).expect("y/*", "x/a", True)
    assert len(r.cells) == 72 and ("x/a", "x/a") not in r.cells
    assert r.cells[("y/b", "x/a")] and not r.cells[("y/b", "x/b")] and not r.cells[("z/a", "x/a")]
    assert r.cells[("x/a", "y/b")]
    assert not Reachability().expect("*/c", ["x/a", lambda p: p == "z/b"], False).cells[("y/c", "z/b")]
    both = Reachability().expect("x/a", "*", False) & Reachability().expect("*", "y/a", False)
    assert not both.cells[("x/a", "y/b")] and not both.cells[("z/c", "y/a")] and both.cells[("z/c", "y/b")]


def test_model_report_names_the_differences():
    expected = Reachability().expect("x/b", "x/a", False)
    observed = dict(Reachability().cells)
    observed[("y/a", "z/c")] = False
    report = compare(TCP80, expected, observed)
    assert report and "2 of 72 pairs differ" in report
    assert "x/b -> x/a: expected blocked, observed connected" in report
    assert "y/a -> z/c: expected connected, observed blocked" in report
    assert compare(TCP80, expected, dict(expected.cells)) is None


def test_placement_covers_same_node_same_rack_and_cross_rack():
    kinds = set()
    for a in PODS:
        for b in PODS:
            if a != b:
                na, nb = PLACEMENT[a], PLACEMENT[b]
                kinds.add("node" if na == nb else "rack" if na[:2] == nb[:2] else "cross")
    assert kinds == {"node", "rack", "cross"}


# ---------------------------------------------------------------------------- cases

@slow
def test_baseline_every_pod_reaches_every_other(fresh):
    assert sorted(fresh.ips) == sorted(PODS)
    assert all(ipaddress.IPv4Address(ip) in ipaddress.IPv4Network("10.244.0.0/16") for ip in fresh.ips.values())
    fresh.check(per_port(Reachability()))


@slow
def test_default_deny_ingress(fresh):
    fresh.apply(np("x", "deny-ingress", "podSelector: {}\npolicyTypes: [Ingress]"))
    fresh.check(per_port(Reachability().expect_all_ingress("x/*", False)))


@slow
def test_default_deny_egress(fresh):
    fresh.apply(np("x", "deny-egress", "podSelector: {}\npolicyTypes: [Egress]"))
    fresh.check(per_port(Reachability().expect_all_egress("x/*", False)))


@slow
def test_allow_all_ingress_and_egress_beside_default_deny(fresh):
    fresh.apply(np("x", "deny-ingress", "podSelector: {}\npolicyTypes: [Ingress]")
                + np("x", "allow-all-ingress", "podSelector: {}\ningress: [{}]")
                + np("y", "deny-egress", "podSelector: {}\npolicyTypes: [Egress]")
                + np("y", "allow-all-egress", "podSelector: {}\npolicyTypes: [Egress]\negress: [{}]"))
    fresh.check(per_port(Reachability()))


@slow
def test_pod_selector_match_labels(fresh):
    fresh.apply(np("x", "a-from-b", """
podSelector: {matchLabels: {pod: a}}
ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]"""))
    # podSelector alone means the policy's namespace: y/b and z/b stay out
    fresh.check(per_port(Reachability().expect_all_ingress("x/a", False).expect("x/b", "x/a", True)))


@slow
def test_match_expressions_in_and_not_in(fresh):
    fresh.apply(np("x", "ab-from-y", """
podSelector: {matchExpressions: [{key: pod, operator: In, values: [a, b]}]}
ingress:
- from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: In, values: [y]}]}}]""")
                + np("z", "not-a-from-not-ab", """
podSelector: {matchExpressions: [{key: pod, operator: NotIn, values: [a]}]}
ingress:
- from:
  - namespaceSelector: {}
    podSelector: {matchExpressions: [{key: pod, operator: NotIn, values: [a, b]}]}"""))
    r = (Reachability()
         .expect_all_ingress(["x/a", "x/b"], False).expect("y/*", ["x/a", "x/b"], True)
         .expect_all_ingress(["z/b", "z/c"], False).expect("*/c", ["z/b", "z/c"], True))
    fresh.check(per_port(r))


@slow
def test_match_expressions_exists_and_does_not_exist(fresh):
    fresh.pod_label("y/b", "tier=db")
    fresh.apply(np("x", "from-any-tier", """
podSelector: {}
ingress: [{from: [{namespaceSelector: {}, podSelector: {matchExpressions: [{key: tier, operator: Exists}]}}]}]""")
                + np("y", "untiered-from-untiered", """
podSelector: {matchExpressions: [{key: tier, operator: DoesNotExist}]}
ingress: [{from: [{namespaceSelector: {}, podSelector: {matchExpressions: [{key: tier, operator: DoesNotExist}]}}]}]"""))
    r = (Reachability().expect_all_ingress("x/*", False).expect("y/b", "x/*", True)
         .expect("y/b", ["y/a", "y/c"], False))  # y/b itself carries tier: it is not selected
    fresh.check(per_port(r))


@slow
def test_namespace_selector(fresh):
    fresh.apply(np("x", "from-y", """
podSelector: {}
ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]""")
                + np("z", "from-x-by-name", """
podSelector: {matchLabels: {pod: c}}
ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x}}}]}]"""))
    r = (Reachability().expect_all_ingress("x/*", False).expect("y/*", "x/*", True)
         .expect_all_ingress("z/c", False).expect("x/*", "z/c", True))
    fresh.check(per_port(r))


@slow
def test_pod_and_namespace_selector_in_one_peer_is_and(fresh):
    fresh.apply(np("x", "only-y-a", """
podSelector: {}
ingress:
- from:
  - namespaceSelector: {matchLabels: {ns: y}}
    podSelector: {matchLabels: {pod: a}}"""))
    fresh.check(per_port(Reachability().expect_all_ingress("x/*", False).expect("y/a", "x/*", True)))


@slow
def test_pod_and_namespace_selector_in_two_peers_is_or(fresh):
    fresh.apply(np("x", "y-or-local-a", """
podSelector: {}
ingress:
- from:
  - namespaceSelector: {matchLabels: {ns: y}}
  - podSelector: {matchLabels: {pod: a}}"""))
    r = Reachability().expect_all_ingress("x/*", False).expect(["y/*", "x/a"], "x/*", True)
    fresh.check(per_port(r))


@slow
def test_empty_selectors(fresh):
    fresh.apply(np("y", "from-own-namespace", "podSelector: {}\ningress: [{from: [{podSelector: {}}]}]")
                + np("z", "from-every-namespace", "podSelector: {}\ningress: [{from: [{namespaceSelector: {}}]}]")
                + np("x", "from-every-c", """
podSelector: {}
ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {pod: c}}}]}]"""))
    r = (Reachability().expect_all_ingress("y/*", False).expect("y/*", "y/*", True)
         .expect_all_ingress("x/*", False).expect("*/c", "x/*", True))
    fresh.check(per_port(r))


@slow
def test_ip_block_with_except_uses_the_pod_addresses(fresh):
    ips = fresh.ips
    block_of = ipaddress.ip_network(f"{ips['y/a']}/26", strict=False)  # every pod of y/a's node
    excepts = [str(block_of), f"{ips['x/c']}/32"]
    fresh.apply(np("x", "from-pods-but", f"""
podSelector: {{matchLabels: {{pod: a}}}}
ingress: [{{from: [{{ipBlock: {{cidr: 10.244.0.0/16, except: [{', '.join(excepts)}]}}}}]}}]""")
                + np("z", "a-to-x-b-only", f"""
podSelector: {{matchLabels: {{pod: a}}}}
policyTypes: [Egress]
egress: [{{to: [{{ipBlock: {{cidr: {ips['x/b']}/32}}}}]}}]"""))

    def excepted(pod: str) -> bool:
        ip = ipaddress.IPv4Address(ips[pod])
        return ip in block_of or pod == "x/c"
    assert any(excepted(p) for p in PODS if p != "x/c"), "the excepted block holds y/a at least"
    r = (Reachability().expect(excepted, "x/a", False)
         .expect_all_egress("z/a", False).expect("z/a", "x/b", True))
    fresh.check(per_port(r))


@slow
def test_port_by_number_defaults_to_tcp(fresh):
    fresh.apply(np("x", "tcp-80", "podSelector: {}\ningress: [{ports: [{port: 80}]}]"))
    closed = Reachability().expect_all_ingress("x/*", False)
    fresh.check(per_port(closed, tcp80=Reachability()))


@slow
def test_udp_versus_tcp_on_the_same_number(fresh):
    fresh.apply(np("x", "udp-80", "podSelector: {}\ningress: [{ports: [{protocol: UDP, port: 80}]}]"))
    closed = Reachability().expect_all_ingress("x/*", False)
    fresh.check(per_port(closed, udp80=Reachability()))


@slow
def test_named_ports_ingress_and_egress(fresh):
    fresh.apply(np("x", "named-in", """
podSelector: {}
ingress: [{ports: [{port: serve-81-tcp}, {protocol: UDP, port: serve-80-udp}]}]""")
                + np("y", "named-out", """
podSelector: {matchLabels: {pod: a}}
policyTypes: [Egress]
egress: [{ports: [{port: serve-80-tcp}, {protocol: UDP, port: serve-81-udp}]}]"""))
    x_in = Reachability().expect_all_ingress("x/*", False)
    y_a_out = Reachability().expect_all_egress("y/a", False)
    fresh.check({TCP80: x_in & Reachability(), TCP81: Reachability() & y_a_out,
                 UDP80: Reachability() & y_a_out, UDP81: x_in.copy()})


@slow
def test_port_ranges_with_end_port(fresh):
    fresh.apply(np("x", "ranges", """
podSelector: {}
ingress:
- ports:
  - {protocol: TCP, port: 79, endPort: 80}
  - {protocol: UDP, port: 81, endPort: 90}"""))
    closed = Reachability().expect_all_ingress("x/*", False)
    fresh.check(per_port(closed, tcp80=Reachability(), udp81=Reachability()))


@slow
def test_policy_types_inferred_from_egress_rules(fresh):
    # no policyTypes: Ingress always, Egress because there are egress rules -> ingress deny-all
    fresh.apply(np("x", "egress-only-rules", """
podSelector: {matchLabels: {pod: a}}
egress: [{to: [{namespaceSelector: {matchLabels: {ns: y}}}]}]""")
                + np("z", "explicit-egress-type", """
podSelector: {matchLabels: {pod: a}}
policyTypes: [Egress]
egress: [{to: [{namespaceSelector: {matchLabels: {ns: y}}}]}]"""))
    r = (Reachability().expect_all_ingress("x/a", False)
         .expect_all_egress(["x/a", "z/a"], False).expect(["x/a", "z/a"], "y/*", True))
    fresh.check(per_port(r))  # z/a keeps open ingress: its policy says Egress only


@slow
def test_ingress_and_egress_in_one_policy(fresh):
    fresh.apply(np("x", "b-both", """
podSelector: {matchLabels: {pod: b}}
policyTypes: [Ingress, Egress]
ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}]}]
egress:
- to: [{namespaceSelector: {matchLabels: {ns: y}}}]
  ports: [{protocol: TCP, port: 80}, {protocol: UDP, port: 80}]"""))
    ingress = Reachability().expect_all_ingress("x/b", False).expect("z/*", "x/b", True)
    on_80 = ingress & Reachability().expect_all_egress("x/b", False).expect("x/b", "y/*", True)
    on_81 = ingress & Reachability().expect_all_egress("x/b", False)
    fresh.check({TCP80: on_80, UDP80: on_80.copy(), TCP81: on_81, UDP81: on_81.copy()})


@slow
def test_several_policies_add_up(fresh):
    fresh.apply(np("x", "a-from-y-80", """
podSelector: {matchLabels: {pod: a}}
ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}], ports: [{port: 80}]}]""")
                + np("x", "a-from-z-81", """
podSelector: {matchLabels: {pod: a}}
ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}], ports: [{port: 81}]}]""")
                + np("x", "all-from-b", "podSelector: {}\ningress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]"))
    base = Reachability().expect_all_ingress("x/*", False).expect("x/b", "x/*", True)
    fresh.check(per_port(base, tcp80=base.copy().expect("y/*", "x/a", True),
                         tcp81=base.copy().expect("z/*", "x/a", True)))


@slow
def test_pod_selected_by_no_policy_of_a_direction_is_open_in_it(fresh):
    fresh.apply(np("x", "a-ingress-closed", "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Ingress]")
                + np("y", "a-egress-closed", "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Egress]"))
    # x/a still sends, y/a still receives, every other pod is open both ways
    fresh.check(per_port(Reachability().expect_all_ingress("x/a", False).expect_all_egress("y/a", False)))


@slow
def test_return_traffic_of_allowed_connections_passes(fresh):
    # client x/a: ingress closed, egress only to y/b on 80; server y/b: egress closed, ingress
    # open. The TCP SYN-ACK and the UDP echo come back only through conntrack.
    fresh.apply(np("x", "client", """
podSelector: {matchLabels: {pod: a}}
policyTypes: [Ingress, Egress]
egress:
- to: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]
  ports: [{protocol: TCP, port: 80}, {protocol: UDP, port: 80}]""")
                + np("y", "server-no-egress", "podSelector: {matchLabels: {pod: b}}\npolicyTypes: [Egress]"))
    closed = (Reachability().expect_all_ingress("x/a", False).expect_all_egress("x/a", False)
              .expect_all_egress("y/b", False))
    on_80 = closed.copy().expect("x/a", "y/b", True)
    fresh.check({TCP80: on_80, UDP80: on_80.copy(), TCP81: closed, UDP81: closed.copy()})


@slow
def test_pod_label_changes_take_effect(fresh):
    fresh.apply(np("x", "from-clients", """
podSelector: {}
ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {role: client}}}]}]""")
                + np("z", "web-closed", "podSelector: {matchLabels: {app: web}}\npolicyTypes: [Ingress]"))
    r = Reachability().expect_all_ingress("x/*", False)
    fresh.check(per_port(r), "no pod has role=client or app=web yet")
    fresh.pod_label("y/b", "role=client")
    fresh.pod_label("z/c", "role=client")
    fresh.pod_label("z/a", "app=web")
    fresh.wait()
    r = (Reachability().expect_all_ingress("x/*", False).expect(["y/b", "z/c"], "x/*", True)
         .expect_all_ingress("z/a", False))
    fresh.check(per_port(r), "y/b and z/c labelled role=client, z/a app=web")
    fresh.pod_label("z/c", "role-")
    fresh.pod_label("z/a", "app=api")
    fresh.wait()
    fresh.check(per_port(Reachability().expect_all_ingress("x/*", False).expect("y/b", "x/*", True)),
                "role removed from z/c, z/a relabelled app=api")


@slow
def test_namespace_label_changes_take_effect(fresh):
    fresh.apply(np("x", "from-blue-team", """
podSelector: {}
ingress: [{from: [{namespaceSelector: {matchLabels: {team: blue}}}]}]"""))
    fresh.check(per_port(Reachability().expect_all_ingress("x/*", False)), "no namespace is blue yet")
    fresh.ns_label("z", "team=blue")
    fresh.wait()
    fresh.check(per_port(Reachability().expect_all_ingress("x/*", False).expect("z/*", "x/*", True)),
                "z labelled team=blue")
    fresh.ns_label("z", "team-")
    fresh.ns_label("y", "team=blue")
    fresh.wait()
    fresh.check(per_port(Reachability().expect_all_ingress("x/*", False).expect("y/*", "x/*", True)),
                "label moved from z to y")


@slow
def test_pod_deleted_and_re_added_gets_the_policy(fresh):
    fresh.apply(np("x", "from-y", """
podSelector: {}
ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]"""))
    expected = per_port(Reachability().expect_all_ingress("x/*", False).expect("y/*", "x/*", True))
    fresh.check(expected, "before")
    for ref in ("x/a", "y/a"):  # a selected pod and a peer pod
        fresh.pod_del(ref)
    fresh.pod_add("y/a")  # the peer comes back first and may take x/a's old address
    fresh.pod_add("x/a")
    fresh.wait()
    fresh.check(expected, f"x/a and y/a re-added as {fresh.ips['x/a']} and {fresh.ips['y/a']}")


@slow
def test_policy_deletion_restores_connectivity(fresh):
    fresh.apply(np("x", "deny-ingress", "podSelector: {}\npolicyTypes: [Ingress]")
                + np("y", "deny-egress", "podSelector: {}\npolicyTypes: [Egress]"))
    fresh.check(per_port(Reachability().expect_all_ingress("x/*", False).expect_all_egress("y/*", False)))
    fresh.delete_policy("x/deny-ingress")
    fresh.wait()
    fresh.check(per_port(Reachability().expect_all_egress("y/*", False)), "x/deny-ingress deleted")
    fresh.delete_policy("y/deny-egress")
    fresh.wait()
    fresh.check(per_port(Reachability()), "every policy deleted")


@slow
@pytest.mark.parametrize("bad, field", [
    ("podSelector: {}\ningress: [{ports: [{port: 70000}]}]", "spec.ingress[0].ports[0].port"),
    ("podSelector: {}\negress: [{to: [{ipBlock: {cidr: 10.0.0.300/8}}]}]", "spec.egress[0].to[0].ipBlock.cidr"),
    ("podSelector: {matchExpressions: [{key: pod, operator: Near, values: [a]}]}",
     "spec.podSelector.matchExpressions[0].operator"),
])
def test_a_malformed_policy_is_refused_by_the_api_server_and_changes_nothing(fresh, bad, field):
    """kubectl gets the API server's own validation error naming the field; nothing reaches
    the datastore, so every node keeps enforcing what it did (here: a deny on x/a)."""
    fresh.apply(np("x", "deny-a", "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Ingress]"))
    path = fresh.workdir / "malformed.json"
    path.write_text(as_json_list(np("x", "malformed", bad)))
    p = subprocess.run([*CLI, "lab", "kubectl", "--name", fresh.name, "--", "apply", "-f", str(path)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and field in p.stderr and "is invalid" in p.stderr, p.stderr
    fresh.wait()
    assert fresh.stored_policies() == ["x/deny-a"]
    fresh.check(per_port(Reachability().expect_all_ingress("x/a", False)), "after the refused policy")
