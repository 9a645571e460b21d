"""A thin JSON-over-etcd layer: values are JSON documents, writes that race use CAS.

Everything that talks to etcd goes through `Datastore`, so connection errors surface as one
exception type (`DatastoreUnavailable`) that the CNI edge turns into code 11 ("try again").
Client TLS (`EtcdTls`, etcd_tls.py) is checked when a Datastore is made: a wrong setting is a
`EtcdTlsError` naming the file or endpoint at start, not a timeout at the first call.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable
from urllib.parse import urlparse

import grpc
import pyetcd
import pyetcd.events

from calico_lite.etcd_tls import EtcdTls, EtcdTlsError, explain_rpc_error


DEFAULT_TIMEOUT = 5.0
log = logging.getLogger("calico-lite.datastore")
# gRPC's own reconnect back-off grows to 120 s: after a 30 s etcd outage, agents and kube-sync
# found etcd again only 15-20 s after it was back (the faults campaign measured it). Capped at
# 2 s, they are back within about 2 s of etcd, at the cost of a connection attempt every 2 s
# per client while etcd is away.
RECONNECT_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 500),
                     ("grpc.min_reconnect_backoff_ms", 500),
                     ("grpc.max_reconnect_backoff_ms", 2000)]


class DatastoreUnavailable(Exception):
    """etcd cannot be reached or did not answer in time."""


class CorruptValue(ValueError):
    """A key whose value is not JSON (a broken writer, a hand edit). get() raises it; list()
    skips the key; snapshot() and watch() hand it over as the value, for the cache to skip
    while it keeps the key's last good value. Never a reason to crash or to wipe state."""

    def __init__(self, key: str, mod_revision: int, error: str):
        super().__init__(f"{key}: value is not JSON ({error})")
        self.key = key
        self.mod_revision = mod_revision


_reported: set[tuple[str, int]] = set()


def report_corrupt(key: str, mod_revision: int, why: str) -> None:
    """Log a bad value once per key and revision (readers meet it again and again)."""
    if (key, mod_revision) in _reported:
        return
    if len(_reported) > 10000:
        _reported.clear()
    _reported.add((key, mod_revision))
    log.error(json.dumps({"event": "datastore-value-skipped", "key": key,
                          "revision": mod_revision, "why": why[:300]}))


def decode(key: str, raw: bytes | str, mod_revision: int) -> Any:
    """The JSON value of a key, or a CorruptValue (returned, not raised)."""
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        return CorruptValue(key, mod_revision, str(e))


@dataclass(frozen=True)
class Entry:
    key: str
    value: Any
    mod_revision: int


@dataclass(frozen=True)
class Change:
    """One watched change; value None means the key was deleted."""
    key: str
    value: Any
    mod_revision: int


class Op:
    """Transaction building blocks, independent of the client library."""

    @staticmethod
    def put(key: str, value: Any) -> tuple:
        return ("put", key, value)

    @staticmethod
    def delete(key: str) -> tuple:
        return ("delete", key)

    @staticmethod
    def unchanged(key: str, mod_revision: int) -> tuple:
        """Compare: key still at mod_revision (0 means: key must not exist)."""
        return ("mod", key, mod_revision)

    @staticmethod
    def absent(key: str) -> tuple:
        return ("create", key, 0)


def _parse_endpoint(endpoint: str, tls: bool) -> tuple[str, int]:
    """host and port of an endpoint; its scheme must agree with the TLS settings (an https
    URL without them, or TLS files with an http URL, is a mistake to report, not to guess)."""
    url = urlparse(endpoint if "://" in endpoint else f"{'https' if tls else 'http'}://{endpoint}")
    if not url.hostname:
        raise ValueError(f"etcd endpoint {endpoint!r} has no host")
    if url.scheme == "https" and not tls:
        raise EtcdTlsError(f"etcd endpoint {endpoint} is https but no TLS files are given "
                           "(--etcd-ca-file, --etcd-cert-file, --etcd-key-file or "
                           "$ETCD_CA_CERT_FILE, $ETCD_CERT_FILE, $ETCD_KEY_FILE)")
    if url.scheme != "https" and tls:
        raise EtcdTlsError(f"etcd endpoint {endpoint} is plain {url.scheme} but TLS files are "
                           "given: use an https:// endpoint")
    return url.hostname, url.port or 2379


def _grpc_details(e: Exception) -> str:
    """The gRPC status details the client library drops when it maps a code to its own
    exception (it raises inside `except`, so the RpcError is the context): they say why a
    connection failed, e.g. a TLS handshake."""
    cause = e.__context__
    if not isinstance(e, grpc.RpcError) and isinstance(cause, grpc.RpcError):
        details = getattr(cause, "details", lambda: None)()
        return f" ({details})" if details else ""
    return ""


class Datastore:
    def __init__(self, endpoints: Iterable[str], timeout: float = DEFAULT_TIMEOUT,
                 tls: EtcdTls | None = None):
        self.endpoints = list(endpoints)
        if not self.endpoints:
            raise ValueError("no etcd endpoint given")
        self.describe = f"etcd at {','.join(self.endpoints)}"
        self.tls = tls
        creds = tls.credentials() if tls else None
        # time_retry=0: a failed endpoint is retried on the next call rather than shunned for
        # the library's default five minutes (an agent that starts before etcd must recover)
        eps = [pyetcd.Endpoint(*_parse_endpoint(e, tls is not None), secure=tls is not None,
                               creds=creds, time_retry=0, opts=RECONNECT_OPTIONS)
               for e in self.endpoints]
        self._client = pyetcd.MultiEndpointEtcd3Client(endpoints=eps, timeout=timeout,
                                                       failover=True)
        # observers (the agent's metrics): a failed call by operation; a retry by reason
        self.on_error: Callable[[str], None] = lambda operation: None
        self.on_retry: Callable[[str], None] = lambda reason: None

    def close(self) -> None:
        self._client.close()

    def _call(self, fn: Callable, *args, **kw):
        try:
            return fn(*args, **kw)
        except (pyetcd.Etcd3Exception, grpc.RpcError, ValueError) as e:
            self.on_error(getattr(fn, "__name__", "call"))
            text = f"{type(e).__name__}: {e}{_grpc_details(e)}"
            raise DatastoreUnavailable(f"{self.describe}: {text}"
                                       f"{explain_rpc_error(text, self.tls)}") from None

    def healthy(self) -> bool:
        try:
            self._call(self._client.status)
            return True
        except DatastoreUnavailable:
            return False

    def get(self, key: str) -> Entry | None:
        value, meta = self._call(self._client.get, key)
        if value is None:
            return None
        decoded = decode(key, value, meta.mod_revision)
        if isinstance(decoded, CorruptValue):
            report_corrupt(key, meta.mod_revision, str(decoded))
            raise decoded
        return Entry(key, decoded, meta.mod_revision)

    def list(self, prefix: str) -> list[Entry]:
        def get_prefix() -> list:
            return list(self._client.get_prefix(prefix))
        rows = self._call(get_prefix)
        out = []
        for v, m in rows:
            entry = Entry(m.key.decode(), decode(m.key.decode(), v, m.mod_revision), m.mod_revision)
            if isinstance(entry.value, CorruptValue):
                report_corrupt(entry.key, entry.mod_revision, str(entry.value))
                continue
            out.append(entry)
        return out

    def put(self, key: str, value: Any) -> int:
        """Write key; returns the store revision of the write."""
        resp = self._call(self._client.put, key, json.dumps(value, sort_keys=True))
        return resp.header.revision

    def create(self, key: str, value: Any) -> bool:
        """Put only if absent; True if this call created it."""
        return self.txn([Op.absent(key)], [Op.put(key, value)])

    def delete(self, key: str) -> bool:
        return bool(self._call(self._client.delete, key))

    def delete_prefix(self, prefix: str) -> None:
        self._call(self._client.delete_prefix, prefix)

    def txn(self, compare: list[tuple], success: list[tuple]) -> bool:
        return self.commit(compare, success) is not None

    def commit(self, compare: list[tuple], success: list[tuple]) -> int | None:
        """A transaction that says at which store revision it wrote (the new mod_revision of
        every key it put, so a caller can CAS on it next without reading the key back);
        None if a compare failed; 0 if it wrote but the revision is unknown (no put)."""
        t = self._client.transactions
        cmp = []
        for kind, key, rev in compare:
            cmp.append((t.mod(key) if kind == "mod" else t.create(key)) == rev)
        ops = []
        for op in success:
            if op[0] == "put":
                ops.append(t.put(op[1], json.dumps(op[2], sort_keys=True)))
            else:
                ops.append(t.delete(op[1]))
        ok, responses = self._call(self._client.transaction, compare=cmp, success=ops, failure=[])
        if not ok:
            self.on_retry("txn-conflict")   # a lost compare-and-swap: the caller retries or moves on
            return None
        for r in responses:
            if r.WhichOneof("response") == "response_put":
                return r.response_put.header.revision
        return 0

    def snapshot(self, prefix: str) -> tuple[list[Entry], int]:
        """Entries under prefix and the store revision they were read at (a value that is not
        JSON is a CorruptValue)."""
        resp = self._call(self._client.get_prefix_response, prefix)
        entries = [Entry(kv.key.decode(), decode(kv.key.decode(), kv.value, kv.mod_revision),
                         kv.mod_revision) for kv in resp.kvs]
        return entries, resp.header.revision

    def watch(self, prefix: str, on_events: Callable[[list[Change] | None], None],
              start_revision: int) -> int:
        """Call on_events(changes) for each batch after start_revision; None means the watch
        broke (the caller resyncs). Returns a watch id."""
        def callback(resp) -> None:
            if isinstance(resp, Exception):
                on_events(None)
                return
            changes = []
            for ev in resp.events:
                key = ev.key.decode()
                if isinstance(ev, pyetcd.events.DeleteEvent):
                    changes.append(Change(key, None, ev.mod_revision))
                else:
                    changes.append(Change(key, decode(key, ev.value, ev.mod_revision),
                                          ev.mod_revision))
            on_events(changes)
        return self._call(self._client.add_watch_prefix_callback, prefix, callback,
                          start_revision=start_revision)

    def cancel_watch(self, watch_id: int) -> None:
        try:
            self._client.cancel_watch(watch_id)
        except Exception:  # the channel may already be gone at shutdown
            pass
