"""The `calico-lite` command: node agent, CNI install, IPAM, pools, the lab.

Errors reach the user as one line naming what is wrong; exit status 1 (2 for usage).
"""
from __future__ import annotations

import argparse
import os
import sys

from calico_lite.cli import bgp, ipam, kube, lab, node, policy
from calico_lite.cli.common import DATASTORE_OPTIONS

# In the order `calico-lite --help` lists them.
GROUPS = (node.COMMANDS, bgp.COMMANDS, kube.COMMANDS, ipam.COMMANDS, policy.COMMANDS, lab.COMMANDS)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="calico-lite", description=__doc__)
    for a in DATASTORE_OPTIONS:
        a.add_to(p)
    sub = p.add_subparsers(dest="cmd", required=True)
    for group in GROUPS:
        group.add_to(sub)
    return p


def parse(argv: list[str]) -> argparse.Namespace:
    """argv -> the chosen command's arguments; exits 2 on a usage error, like argparse."""
    command: list[str] = []
    if "--" in argv:  # everything after -- is the command of `lab exec`, options included
        i = argv.index("--")
        argv, command = argv[:i], argv[i + 1:]
    parser = build_parser()
    args = parser.parse_args(argv)
    if command:
        if not hasattr(args, "argv"):
            parser.error("'--' is only for `lab exec NS/POD -- COMMAND` and `lab kubectl -- ARGS`")
        args.argv = command
    for a in DATASTORE_OPTIONS:  # given before a subcommand that has no use for it
        if hasattr(args, a.dest) and a.flags[0] not in args.global_flags:
            parser.error(f"argument {a.flags[0]}: `{args.command_path}` does not take it")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # one clear line, not a traceback
        if os.environ.get("CALICO_LITE_DEBUG"):
            raise
        print(f"calico-lite: error: {e}", file=sys.stderr)
        return 1
