"""The CNI shim fuzzed with hypothesis against a live agent in a lab: stdin (valid configs with
fields of every JSON type, truncated or random text) and the CNI_* environment (verbs, container
IDs, interface names, namespaces that are missing, plain files, folders, FIFOs, and real ones).
Every answer must be a CNI error JSON with a code the spec defines, or a success a DEL undoes;
never a traceback, a hang, an internal error or an address held afterwards. GC is left out: with
a random valid-attachments list it would rightly release the lab's pods. Short form: 120
examples; `make soak`: 1,500."""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.labutil import agent_pid, pod_ip
from tests.faults.faultlab import (Stream, all_leftovers, cni_nodes, serving_fault_lab, form, info,
                                   ipam_check, workloads)
from tests.nslib import wait_for

pytestmark = pytest.mark.slow
SPEC_CODES = {1, 2, 3, 4, 5, 6, 7, 11, 50, 51}
CALL_TIMEOUT = 60.0   # the shim's own agent timeout is 30 s: beyond it is a hang

texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)
scalars = st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats() | texts
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(texts, inner, max_size=3), max_leaves=8)


@pytest.fixture(scope="module")
def lab():
    with serving_fault_lab("z", "--racks", "2", "--nodes-per-rack", "1") as name:
        yield name


@pytest.fixture(scope="module")
def odd_paths():
    """Namespace paths that are not namespaces: a plain file, a folder, a FIFO."""
    d = Path(tempfile.mkdtemp(prefix="flfuzz-"))
    (d / "file").write_text("not a namespace")
    os.mkfifo(d / "fifo")
    yield {"file": str(d / "file"), "dir": str(d), "fifo": str(d / "fifo")}
    for p in d.iterdir():
        p.unlink()
    d.rmdir()


def configs(base: dict):
    """The node's own plugin config with some fields set to any JSON value (agent_socket kept,
    so the call reaches the agent), or text that is not a config at all."""
    fields = st.sampled_from(["cniVersion", "mtu", "prevResult", "type", "name", "disableCheck",
                              "runtimeConfig", "args", "ipam", "cni.dev/valid-attachments"])
    mutated = st.dictionaries(fields, json_values, max_size=3).map(lambda d: json.dumps({**base, **d}))
    version = st.sampled_from(["0.3.1", "0.4.0", "1.0.0", "1.1.0", "0.2.0", "", "2.0"])
    versioned = version.map(lambda v: json.dumps({**base, "cniVersion": v}))
    prev = json_values.map(lambda p: json.dumps({**base, "prevResult": p}))
    whole = json.dumps(base)
    truncated = st.integers(0, len(whole) - 1).map(lambda n: whole[:n])
    broken = st.one_of(truncated, texts, json_values.map(json.dumps))
    return st.one_of(st.just(whole), mutated, mutated, versioned, prev, broken)


def environments(kinds):
    """A runtime's environment (ADD, DEL, CHECK or STATUS of a fresh sandbox) with up to two
    variables replaced by odd values or unset: most calls get past the first check."""
    odd = {
        "CNI_COMMAND": st.sampled_from(["VERSION", "add", "", "GCX"]) | texts,
        "CNI_CONTAINERID": st.one_of(st.text("0123456789abcdef", min_size=1, max_size=80), texts),
        "CNI_NETNS": st.sampled_from(kinds) | texts,
        "CNI_IFNAME": st.sampled_from(["net1", "", "lo", ".", "a/b", "x" * 16, "eth 0"]) | texts,
        "CNI_ARGS": st.one_of(texts, st.lists(texts, max_size=3).map(";".join)),
        "CNI_PATH": texts}
    verb = st.sampled_from(["ADD", "ADD", "DEL", "CHECK", "STATUS"])
    base = verb.map(lambda v: {"CNI_COMMAND": v, "CNI_CONTAINERID": "good", "CNI_NETNS": "sandbox",
                               "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin",
                               "CNI_ARGS": "K8S_POD_NAMESPACE=fuzz;K8S_POD_NAME=p"})
    changes = st.lists(st.sampled_from(sorted(odd)), max_size=2, unique=True).flatmap(
        lambda names: st.fixed_dictionaries({n: st.none() | odd[n] for n in names}))
    return st.tuples(base, changes).map(lambda bc: {**bc[0], **bc[1]})


def call(node, env: dict, stdin: str) -> tuple[int, str, str]:
    p = subprocess.run([node.binary], input=stdin.encode("utf-8", "surrogatepass"), env=env,
                       capture_output=True, timeout=CALL_TIMEOUT)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def test_fuzzed_cni_calls_answer_spec_errors_and_hold_nothing(lab, odd_paths):
    node = next(n for n in cni_nodes(lab) if n.name == "r1n1")
    agent = agent_pid(lab, "r1n1")
    base = node.plugin
    kinds = ["sandbox", "", "/var/run/netns/fl-missing", *odd_paths.values()]
    seen: dict[str, int] = {}
    stream = Stream(lab, "default/p-r1n1", pod_ip(lab, "default/p-r2n1"), interval=0.02)

    @settings(max_examples=form(120, 1500), deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(env=environments(kinds), stdin=configs(base))
    def one(env: dict, stdin: str) -> None:
        env = {k: v for k, v in env.items() if v is not None}
        sandbox = None
        if env.get("CNI_NETNS") == "sandbox":
            cid, sandbox = node.sandbox()
            env["CNI_NETNS"] = sandbox
        if env.get("CNI_CONTAINERID") == "good":
            env["CNI_CONTAINERID"] = uuid.uuid4().hex
        try:
            code, out, err = call(node, env, stdin)
            assert "Traceback" not in out + err, (env, stdin, out, err)
            answer = json.loads(out) if out.strip() else None
            if code == 0:
                assert answer is None or isinstance(answer, dict), out
                if env.get("CNI_COMMAND") == "ADD":   # what a runtime does when the pod goes
                    seen["added"] = seen.get("added", 0) + 1
                    del_env = {**env, "CNI_COMMAND": "DEL"}
                    dcode, dout, _ = call(node, del_env, stdin)
                    assert dcode == 0, (env, stdin, dout)
                return
            assert isinstance(answer, dict), (env, stdin, out)
            assert answer.get("code") in SPEC_CODES, (env, stdin, answer)
            assert isinstance(answer.get("msg"), str) and answer["msg"], answer
            seen[str(answer["code"])] = seen.get(str(answer["code"]), 0) + 1
        finally:
            if sandbox:
                subprocess.run(["ip", "netns", "delete", os.path.basename(sandbox)], capture_output=True)

    try:
        one()
    finally:
        result = stream.finish()
    info(f"CNI fuzz: {form(120, 1500)} examples through the shim, answers by code "
         f"{dict(sorted(seen.items()))}; "
         f"stream lost {result['lost_count']}/{result['sent']}")
    assert agent_pid(lab, "r1n1") == agent, "the agent crashed or was restarted"
    assert result["lost_count"] == 0, result["lost_runs"]
    report = ipam_check(lab)
    assert report["findings"] == [] and report["in_use"] == 2, report
    assert sorted(w["pod"] for w in workloads(lab)) == ["p-r1n1", "p-r2n1"]
    wait_for(lambda: not all_leftovers(lab), "no orphan veth, route or nft element", timeout=30,
             interval=0.5)
