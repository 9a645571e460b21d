"""What every command group shares: subcommands declared next to their handlers, the global
datastore options, reaching the datastore, printing a result as text or JSON.

A command module owns one `Group` tree; `app.build_parser` asks each tree to add itself, so
adding a subcommand is adding a decorated function to its module, and no module imports
another command module.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

Handler = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Arg:
    """One `add_argument` call, kept until the parser is built."""
    flags: tuple[str, ...]
    options: dict

    def add_to(self, p: argparse.ArgumentParser) -> None:
        p.add_argument(*self.flags, **self.options)

    @property
    def dest(self) -> str:
        return self.options.get("dest") or self.flags[0].lstrip("-").replace("-", "_")


def arg(*flags: str, **options) -> Arg:
    return Arg(flags, options)


# Accepted before the subcommand (`calico-lite --lab x policy get`, as kubectl and calicoctl
# users type) and after it. SUPPRESS: an option not given leaves no attribute, so a value given
# before the subcommand is not overwritten by the subcommand parser's default.
# The etcd options, also taken by `node run` and `kube-sync` (which never reach a lab).
ETCD_OPTIONS = (
    arg("--etcd-endpoints", default=argparse.SUPPRESS,
        help="comma-separated etcd URLs (default $ETCD_ENDPOINTS)"),
    arg("--etcd-ca-file", default=argparse.SUPPRESS, metavar="FILE",
        help="CA of etcd's serving certificate (default $ETCD_CA_CERT_FILE)"),
    arg("--etcd-cert-file", default=argparse.SUPPRESS, metavar="FILE",
        help="client certificate for etcd (default $ETCD_CERT_FILE)"),
    arg("--etcd-key-file", default=argparse.SUPPRESS, metavar="FILE",
        help="client key for etcd (default $ETCD_KEY_FILE)"),
)
DATASTORE_OPTIONS = (
    arg("--lab", default=argparse.SUPPRESS,
        help="reach the etcd of the lab NAME (default $CALICO_LITE_LAB)"),
    *ETCD_OPTIONS,
)
GLOBAL_FLAGS = tuple(a.flags[0] for a in DATASTORE_OPTIONS)
DEFAULT_ETCD = "http://127.0.0.1:2379"


@dataclass
class Command:
    """One subcommand: its handler and arguments; the parser it gets remembers its path (for
    messages) and which global options it takes."""
    name: str
    fn: Handler
    help: str | None
    args: tuple[Arg, ...]

    def add_to(self, sub, path: tuple[str, ...], inherited: tuple[Arg, ...]) -> None:
        p = sub.add_parser(self.name, **({"help": self.help} if self.help else {}))
        args = inherited + self.args
        for a in args:
            a.add_to(p)
        flags = {f for a in args for f in a.flags}
        p.set_defaults(fn=self.fn, command_path=" ".join(path + (self.name,)),
                       global_flags=frozenset(flags & set(GLOBAL_FLAGS)))


@dataclass
class Group:
    """A command group (`pool`, `lab ns`), or with no name the top level a module adds to.

    `args` go to every command below (the lab's --name); `datastore` gives every command
    below the global datastore options."""
    name: str | None = None
    help: str | None = None
    dest: str = "sub"
    args: tuple[Arg, ...] = ()
    datastore: bool = False
    entries: list[Group | Command] = field(default_factory=list)

    def group(self, name: str, help: str, dest: str = "sub", args: tuple[Arg, ...] = (),
              datastore: bool | None = None) -> Group:
        child = Group(name, help, dest, args, self.datastore if datastore is None else datastore)
        self.entries.append(child)
        return child

    def command(self, name: str, *args: Arg, help: str | None = None,
                datastore: bool | None = None) -> Callable[[Handler], Handler]:
        """Decorator: `@group.command("list", arg("--json", action="store_true"))`."""
        uses_ds = self.datastore if datastore is None else datastore

        def register(fn: Handler) -> Handler:
            self.entries.append(Command(name, fn, help, args + (DATASTORE_OPTIONS if uses_ds else ())))
            return fn
        return register

    def add_to(self, sub, path: tuple[str, ...] = (), inherited: tuple[Arg, ...] = ()) -> None:
        if self.name is not None:
            p = sub.add_parser(self.name, help=self.help)
            sub, path = p.add_subparsers(dest=self.dest, required=True), path + (self.name,)
        for e in self.entries:
            e.add_to(sub, path, inherited + self.args)


# --- datastore -------------------------------------------------------------------------
def datastore_target(args: argparse.Namespace, environ: Mapping[str, str] = os.environ
                     ) -> tuple[str, str | list[str]]:
    """("lab", NAME) for a lab's etcd (--lab / $CALICO_LITE_LAB), else ("etcd", endpoints)
    from --etcd-endpoints / $ETCD_ENDPOINTS."""
    lab = getattr(args, "lab", None) or environ.get("CALICO_LITE_LAB")
    if lab:
        return "lab", lab
    return "etcd", etcd_endpoints(args, environ)


def etcd_endpoints(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> list[str]:
    """--etcd-endpoints, else $ETCD_ENDPOINTS, else the local default. Given but empty (the
    DaemonSet with the ConfigMap's etcd_endpoints not set) is an error, not the default."""
    given = getattr(args, "etcd_endpoints", None)
    given = environ.get("ETCD_ENDPOINTS", DEFAULT_ETCD) if given is None else given
    eps = [e.strip() for e in given.split(",") if e.strip()]
    if not eps:
        raise ValueError("--etcd-endpoints is empty: give the etcd URLs (in a cluster: "
                         "etcd_endpoints in the calico-lite ConfigMap, deploy/README.md)")
    return eps


def etcd_tls(args: argparse.Namespace, environ: Mapping[str, str] = os.environ):
    """The etcd client TLS files (EtcdTls) from --etcd-ca-file, --etcd-cert-file,
    --etcd-key-file, each else its Calico environment variable; None when none is set."""
    from calico_lite.etcd_tls import EtcdTls
    return EtcdTls.from_settings({"ca_file": getattr(args, "etcd_ca_file", None),
                                  "cert_file": getattr(args, "etcd_cert_file", None),
                                  "key_file": getattr(args, "etcd_key_file", None)}, environ)


def datastore(args: argparse.Namespace):
    """The datastore this command talks to (a lab's: with the lab's own TLS files)."""
    kind, where = datastore_target(args)
    if kind == "lab":
        from calico_lite.lab.lab import Lab
        return Lab(where).datastore()  # type: ignore[arg-type]
    from calico_lite.datastore import Datastore
    return Datastore(where, tls=etcd_tls(args))


# --- output and small parsers ----------------------------------------------------------
def print_result(obj, as_json: bool, text: str) -> None:
    print(json.dumps(obj, indent=2) if as_json else text)


def split_ref(ref: str) -> tuple[str, str]:
    """NAMESPACE/NAME, as kubectl writes a namespaced object."""
    ns, _, name = ref.partition("/")
    if not ns or not name:
        raise ValueError(f"{ref!r}: expected NAMESPACE/POD")
    return ns, name


def log_to_stderr() -> None:
    """For the long-running commands (agent, kube-sync): timestamped lines on stderr."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")


def comma_list(values: list[str] | None) -> list[str] | None:
    """A repeatable option that also takes comma lists (`--community a,b --community c`):
    None when not given, [] when given as '' (clears)."""
    if values is None:
        return None
    return [v.strip() for value in values for v in value.split(",") if v.strip()]
