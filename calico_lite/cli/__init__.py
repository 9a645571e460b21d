"""The `calico-lite` command line.

`common` holds what every command group shares (declaring subcommands, the global datastore
options, reaching the datastore), `table` the one table formatter; then one module per command
group, each declaring its own subcommands: `node`, `bgp`, `ipam` (pool and ipam), `policy`,
`lab`, `kube` (kube-sync and install-cni). `app` builds the parser from them and runs a command.
Command modules import only `common` and `table`, never each other.
"""
from calico_lite.cli.app import build_parser, main
from calico_lite.cli.lab import format_lab_status, format_probe  # for calico_lite.demo

__all__ = ["build_parser", "main", "format_lab_status", "format_probe"]
