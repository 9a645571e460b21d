"""`calico-lite policy apply|get|delete|explain`: Kubernetes NetworkPolicy in the datastore,
the way `kubectl` shows it.

With --lab, apply and delete write through the lab's API server (kube-sync carries the
policies into etcd, as in a cluster); with --etcd-endpoints they write etcd directly, for
clusters that run without kube-sync. get and explain read what the agents read: the datastore.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from calico_lite import keys
from calico_lite.cli.common import Group, arg, datastore, datastore_target, print_result, split_ref
from calico_lite.cli.table import columns

COMMANDS = Group()
POLICY = COMMANDS.group("policy", "Kubernetes NetworkPolicy", datastore=True)


@POLICY.command("apply", arg("-f", "--filename", required=True, help="FILE or - for stdin"),
                help="apply the manifests `kubectl apply -f` takes")
def cmd_policy_apply(args) -> int:
    from calico_lite.datastore import Op
    from policy.manifests import parse_manifests, policy_to_dict
    source = "<stdin>" if args.filename == "-" else args.filename
    text = sys.stdin.read() if args.filename == "-" else Path(args.filename).read_text()
    policies = parse_manifests(text, source)  # all or nothing: a bad document applies none
    kind, where = datastore_target(args)
    if kind == "lab":
        from calico_lite.lab.lab import Lab
        Lab(where).api().policy_apply([policy_to_dict(p) for p in policies])  # type: ignore[arg-type]
    else:
        datastore(args).txn([], [Op.put(keys.k8s_policy(p.namespace, p.name), policy_to_dict(p))
                                 for p in policies])
    for p in policies:
        print(f"networkpolicy.networking.k8s.io/{p.name} configured (namespace {p.namespace})")
    return 0


def _pod_selector(doc: dict) -> str:
    sel = doc["spec"].get("podSelector") or {}
    return json.dumps(sel.get("matchLabels", sel)) if sel else "<all>"


@POLICY.command("get", arg("-n", "--namespace"), arg("-o", "--output", choices=["yaml", "json"]))
def cmd_policy_get(args) -> int:
    prefix = keys.K8S_POLICIES + (f"{args.namespace}/" if args.namespace else "")
    docs = [e.value for e in datastore(args).list(prefix)]
    if args.output == "json":
        print(json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}, indent=2))
    elif args.output == "yaml":
        import yaml
        print(yaml.safe_dump_all(docs, sort_keys=False), end="")
    else:
        rows = [(d["metadata"]["namespace"], d["metadata"]["name"], _pod_selector(d)) for d in docs]
        print("\n".join(columns(("NAMESPACE", "NAME", "POD-SELECTOR"), rows, (16, 28))))
    return 0


@POLICY.command("delete", arg("policy", help="NAMESPACE/NAME"))
def cmd_policy_delete(args) -> int:
    ns, name = split_ref(args.policy)
    kind, where = datastore_target(args)
    if kind == "lab":
        from calico_lite.lab.lab import Lab
        Lab(where).api().policy_delete(ns, name)  # type: ignore[arg-type]
    elif not datastore(args).delete(keys.k8s_policy(ns, name)):
        raise LookupError(f"networkpolicy {ns}/{name} not found")
    print(f"networkpolicy.networking.k8s.io/{name} deleted (namespace {ns})")
    return 0


@POLICY.command("explain", arg("pod", help="NAMESPACE/POD"), arg("--json", action="store_true"),
                help="which policies select a pod and what they allow")
def cmd_policy_explain(args) -> int:
    from calico_lite.policy_inputs import inputs_from
    from policy.explain import explain, format_explanation
    ns, name = split_ref(args.pod)
    ds = datastore(args)
    policies, pods, namespaces = inputs_from(lambda prefix: {e.key: e.value for e in ds.list(prefix)}, None)
    pod = next((p for p in pods if p.namespace == ns and p.name == name), None)
    if pod is None:
        raise LookupError(f"pod {ns}/{name} not found (no workload with that name)")
    e = explain(pod, policies, pods, namespaces)
    print_result(e, args.json, format_explanation(e))
    return 0
