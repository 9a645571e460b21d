"""The compiled table against the real kernel, without pods or traffic: SCTP and atomicity.

Complements test_policy_enforcement.py (which probes traffic, loads numeric SCTP ports and
checks that a ruleset nft rejects while parsing - a missing set - leaves the table as it was).
Here: SCTP named ports on both sides, SCTP ipBlock rules and an SCTP pod arriving through the
incremental path all load and list back; a ruleset the KERNEL refuses in the middle of the
transaction (a jump loop, found only when the batch is validated, after `delete table` was
already queued) leaves the previous table byte-for-byte, handles included; a failed first sync
leaves no table; an incremental update the kernel refuses falls back to a full sync.

Everything happens in one namespace of our own (nftables does not need the interfaces that
rules name), entered by a single worker thread that owns the applier.
"""
from __future__ import annotations

import os

import pytest

from policy.applier import RulesetApplier
from policy.compiler import compile_ruleset, pod_chain
from policy.manifests import parse_manifests
from policy.model import INGRESS, ContainerPort, Namespace, Pod
from policy.nft import NftError
from policy.ruleset import Chain, Rule, Ruleset
from tests.nslib import remove_netns_with_prefix, sh, unique_prefix
from tests.nft_node import NftNode

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces and nftables")

NODE_IP = "10.241.0.1"
NAMESPACES = [Namespace("a", {"team": "alpha"}), Namespace("b", {"team": "beta"})]


def pods() -> list[Pod]:
    return [
        Pod("a", "diameter", "10.240.1.1", {"app": "diameter"},
            [ContainerPort("diam", "SCTP", 3868), ContainerPort("http", "TCP", 8080)], "caliTTdiam", "n1"),
        Pod("a", "client", "10.240.1.2", {"app": "client"}, [], "caliTTclient", "n1"),
        Pod("b", "sigtran", "10.240.2.1", {"app": "sigtran"}, [ContainerPort("m3ua", "SCTP", 2905)], None, "n2"),
        Pod("b", "web", "10.240.2.2", {"app": "web"}, [ContainerPort("m3ua", "TCP", 2905)], None, "n2"),
    ]


def np(ns: str, name: str, spec: str) -> str:
    body = "\n".join("  " + line for line in spec.strip("\n").splitlines())
    return (f"---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
            f"metadata: {{name: {name}, namespace: {ns}}}\nspec:\n{body}\n")


SCTP_POLICIES = np("a", "diameter-in", """
podSelector: {matchLabels: {app: diameter}}
ingress:
- from: [{namespaceSelector: {matchLabels: {team: beta}}}]
  ports: [{protocol: SCTP, port: diam}, {protocol: SCTP, port: 9900, endPort: 9910}]
- from: [{ipBlock: {cidr: 192.0.2.0/24, except: [192.0.2.128/25]}}]
  ports: [{protocol: SCTP, port: 3869}]""") + np("a", "client-out", """
podSelector: {matchLabels: {app: client}}
policyTypes: [Egress]
egress:
- to: [{namespaceSelector: {}}]
  ports: [{protocol: SCTP, port: m3ua}]
- to: [{ipBlock: {cidr: 198.51.100.0/24}}]
  ports: [{protocol: SCTP}]""")
DENY_A = np("a", "deny", "podSelector: {}\npolicyTypes: [Ingress]")


class Node(NftNode):
    def listing(self, *flags: str) -> str:
        return sh("nft", *flags, "list", "table", "inet", "calico-lite", netns=self.netns).stdout

    def ruleset(self) -> str:
        return sh("nft", "-a", "list", "ruleset", netns=self.netns).stdout


@pytest.fixture(scope="module")
def node():
    prefix = unique_prefix("tt")
    try:
        sh("ip", "netns", "add", f"{prefix}nft")
        n = Node(f"{prefix}nft")
        try:
            yield n
        finally:
            n.worker.shutdown(wait=True)
    finally:
        remove_netns_with_prefix(prefix)


@pytest.fixture
def clean(node):
    node.call(node.applier.remove)
    node.applier = node.call(RulesetApplier)  # forget what was applied: the next call is a sync
    return node


def compile_(manifests: str, pod_list: list[Pod] | None = None) -> Ruleset:
    return compile_ruleset(parse_manifests(manifests, "test"), pod_list or pods(), NAMESPACES, [NODE_IP])


# ------------------------------------------------------------------ SCTP

def test_sctp_named_ports_ranges_and_ip_blocks_load_and_list_back(clean):
    rs = compile_(SCTP_POLICIES)
    assert clean.call(clean.applier.sync, rs).mode == "sync"
    assert clean.call(clean.applier.drift) == ""   # the resync's table check: no false alarm
    listing = clean.listing()
    ing = listing.split(f"chain {pod_chain(INGRESS, 'caliTTdiam')} {{")[1].split("}\n")[0]
    # ingress: the named port resolved on the selected pod (SCTP 3868, not its TCP port), a range
    assert "meta l4proto . th dport { sctp . 3868, sctp . 9900-9910 }" in ing
    assert "meta l4proto . th dport { sctp . 3869 }" in ing or "meta l4proto . th dport sctp . 3869" in ing
    assert "8080" not in ing
    # egress named port: resolved on every destination that declares m3ua over SCTP only
    assert "10.240.2.1 . sctp . 2905" in listing
    assert "10.240.2.2 . tcp . 2905" not in listing and "10.240.2.2 . sctp" not in listing
    # ipBlocks, except cut out, and a whole-protocol SCTP rule
    assert "192.0.2.0/25" in listing and "192.0.2.128" not in listing
    assert "198.51.100.0/24" in listing and "meta l4proto sctp" in listing
    # what the kernel holds is exactly what we rendered: a reload of our own listing is a no-op
    before = clean.listing()
    sh("nft", "-f", "-", netns=clean.netns, input=f"flush table inet calico-lite\n{before}")
    assert clean.listing() == before


def test_an_sctp_pod_arriving_is_an_incremental_update(clean):
    clean.call(clean.applier.sync, compile_(SCTP_POLICIES))
    newcomer = Pod("b", "sigtran2", "10.240.2.3", {"app": "sigtran"}, [ContainerPort("m3ua", "SCTP", 2906)],
                   None, "n2")
    r = clean.call(clean.applier.update, compile_(SCTP_POLICIES, pods() + [newcomer]))
    assert r.mode == "update", r
    assert "elem+" in r.summary and "chain" not in r.summary, r.summary
    assert "10.240.2.3 . sctp . 2906" in clean.listing()
    # and the incremental result equals a full sync of the same ruleset
    after_update = clean.listing()
    clean.call(clean.applier.sync, compile_(SCTP_POLICIES, pods() + [newcomer]))
    assert clean.listing() == after_update


# ------------------------------------------------------------------ atomicity

def _with_jump_loop(rs: Ruleset) -> Ruleset:
    """Two pod chains that jump to each other: valid text, refused by the kernel when it
    validates the batch (both are reachable from the forward hook through the dispatch map)."""
    one, two = pod_chain(INGRESS, "caliTTdiam"), pod_chain(INGRESS, "caliTTclient")
    chains = dict(rs.chains)
    chains[one] = Chain(one, (Rule((), f"jump {two}"),) + chains[one].rules)
    chains[two] = Chain(two, (Rule((), f"jump {one}"),) + chains[two].rules)
    return Ruleset(sets=rs.sets, maps=rs.maps, chains=chains)


def test_a_ruleset_the_kernel_refuses_keeps_the_previous_table_byte_for_byte(clean):
    clean.call(clean.applier.sync, compile_(SCTP_POLICIES))
    before, before_all = clean.listing("-a"), clean.ruleset()
    bad = _with_jump_loop(compile_(DENY_A))
    with pytest.raises(NftError) as e:
        clean.call(clean.applier.sync, bad)
    assert "Too many links" in str(e.value), e.value  # EMLINK: the kernel found the loop
    assert clean.listing("-a") == before, "the old table, same handles: it was never replaced"
    assert clean.ruleset() == before_all
    assert clean.call(lambda: clean.applier.applied) is not None
    # the applier still works afterwards and its idea of the kernel state is the old one
    r = clean.call(clean.applier.update, compile_(SCTP_POLICIES))
    assert r.mode == "noop", r
    assert clean.call(clean.applier.update, compile_(DENY_A)).mode == "update"  # sets go, chains refill
    assert "diameter-in" not in clean.listing() and "a/deny" in clean.listing()


def test_a_refused_first_sync_leaves_no_table_and_other_tables_alone(clean):
    sh("nft", "add table inet someone-else-tt", netns=clean.netns)
    try:
        with pytest.raises(NftError):
            clean.call(clean.applier.sync, _with_jump_loop(compile_(DENY_A)))
        listing = sh("nft", "list", "ruleset", netns=clean.netns).stdout
        assert "calico-lite" not in listing and "someone-else-tt" in listing
        assert clean.call(lambda: clean.applier.applied) is None
    finally:
        sh("nft", "delete table inet someone-else-tt", netns=clean.netns, check=False)


def test_a_refused_incremental_update_falls_back_to_a_full_sync(clean):
    rs = compile_(SCTP_POLICIES)
    clean.call(clean.applier.sync, rs)
    # someone removes an element behind our back: the update deleting it gets ENOENT
    pods_set = next(n for n, s in rs.sets.items() if n.endswith("_pods") and "10.240.2.1" in s.elements)
    sh("nft", "delete", "element", "inet", "calico-lite", pods_set, "{ 10.240.2.1 }", netns=clean.netns)
    without_sigtran = [p for p in pods() if p.name != "sigtran"]
    r = clean.call(clean.applier.update, compile_(SCTP_POLICIES, without_sigtran))
    assert r.mode == "sync", r
    assert "10.240.2.1" not in clean.listing()
    expected = clean.listing()
    clean.call(clean.applier.sync, compile_(SCTP_POLICIES, without_sigtran))
    assert clean.listing() == expected
