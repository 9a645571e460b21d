"""The static CNI shim (plugin/shim/calico-lite-shim.c) against a fake node agent.

The shim is the only thing the runtime executes, so its framing, its error JSON and its
behaviour when the agent is absent, slow or broken are tested on the real binary, built with
the exact gcc line the Makefile uses. The fake agent is a plain unix-socket server in a
thread that records what it received and answers '<code>\\n<payload>'.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "plugin" / "shim" / "calico-lite-shim.c"
SYNC = b"SYNC"  # sentinel request that proves every earlier connection was handled
RUN_TIMEOUT = 30  # generous bound so a broken shim fails the test instead of hanging it

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is needed to build the shim")


@dataclass
class FakeAgent:
    """A unix SOCK_STREAM server speaking the agent side of the shim protocol.

    reply: bytes sent after the request's EOF; None means accept, read, and never answer.
    accepting: False leaves connections in the listen backlog (an agent that is wedged).
    """

    path: Path
    reply: bytes | None = b"0\n{}"
    accepting: bool = True
    requests: list[bytes] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> "FakeAgent":
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(self.path))
        self._server.listen(64)
        self._server.settimeout(0.05)
        if self.accepting:
            self._spawn(self._accept_loop)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        self._server.close()
        self.path.unlink(missing_ok=True)

    def _spawn(self, target, *args) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(t)
        t.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._spawn(self._handle, conn)

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(RUN_TIMEOUT)
            data = bytearray()
            while chunk := conn.recv(65536):
                data += chunk
            if bytes(data) == SYNC:
                conn.sendall(b"0\n")
                return
            self.requests.append(bytes(data))
            if self.reply is None:
                self._stop.wait()
                return
            try:
                conn.sendall(self.reply)
            except OSError:
                pass

    def sync(self) -> None:
        """Round-trip a sentinel: connections are accepted in order, so once it is answered
        any connection the shim made before it has been recorded."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(RUN_TIMEOUT)
            s.connect(str(self.path))
            s.sendall(SYNC)
            s.shutdown(socket.SHUT_WR)
            assert s.recv(16) == b"0\n"

    def parsed(self) -> list[dict]:
        return [json.loads(r.decode("utf-8")) for r in self.requests]


@pytest.fixture(scope="session")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shim") / "calico-lite"
    subprocess.run(
        ["gcc", "-static", "-O2", "-Wall", "-Wextra", "-o", str(out), str(SOURCE)],
        check=True, cwd=REPO, capture_output=True, text=True,
    )
    return out


@pytest.fixture
def sock_dir(tmp_path: Path) -> Path:
    """Where fake agents listen; unix socket paths must fit in sun_path (108 bytes)."""
    assert len(str(tmp_path)) < 80, tmp_path
    return tmp_path


def cni_env(command: str | None = "ADD", sock: Path | None = None, **extra: str) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    if command is not None:
        env.update(CNI_COMMAND=command, CNI_CONTAINERID="c0ffee", CNI_NETNS="/var/run/netns/p1",
                   CNI_IFNAME="eth0", CNI_PATH="/opt/cni/bin")
    if sock is not None:
        env["CALICO_LITE_AGENT_SOCKET"] = str(sock)
    env.update(extra)
    return env


def run_shim(shim: Path, env: dict[str, str], stdin: bytes | str = b"") -> subprocess.CompletedProcess:
    data = stdin.encode("utf-8") if isinstance(stdin, str) else stdin
    return subprocess.run([str(shim)], env=env, input=data, capture_output=True, timeout=RUN_TIMEOUT)


def cni_error(proc: subprocess.CompletedProcess) -> dict:
    """The CNI error object the shim printed; asserts it is one valid JSON object."""
    assert proc.returncode == 1, proc
    err = json.loads(proc.stdout.decode("utf-8"))
    assert set(err) >= {"cniVersion", "code", "msg"}, err
    return err


CONF = {"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "calico-lite"}


def test_binary_is_static(shim: Path) -> None:
    out = subprocess.run(["ldd", str(shim)], capture_output=True, text=True)
    assert "not a dynamic executable" in out.stdout + out.stderr


@pytest.mark.parametrize("version", ["0.3.1", "1.0.0", None])
def test_version_answered_without_agent(shim: Path, sock_dir: Path, version: str | None) -> None:
    conf = {"cniVersion": version} if version else {}
    proc = run_shim(shim, cni_env("VERSION", sock_dir / "absent.sock"), json.dumps(conf))
    assert proc.returncode == 0, proc
    assert json.loads(proc.stdout) == {
        "cniVersion": version or "1.1.0",
        "supportedVersions": ["0.3.1", "0.4.0", "1.0.0", "1.1.0"],
    }


def test_agent_absent_is_try_again(shim: Path, sock_dir: Path) -> None:
    sock = sock_dir / 'we"ird\\dir.sock'  # escapes must survive into valid JSON
    proc = run_shim(shim, cni_env("ADD", sock), json.dumps(CONF))
    err = cni_error(proc)
    assert err["code"] == 11
    assert err["cniVersion"] == "1.0.0"
    assert err["msg"] == f"calico-lite agent not reachable at {sock}: No such file or directory"
    assert "agent running" in err["details"]


def test_status_without_agent_is_not_available(shim: Path, sock_dir: Path) -> None:
    err = cni_error(run_shim(shim, cni_env("STATUS", sock_dir / "absent.sock"), json.dumps(CONF)))
    assert err["code"] == 50 and "not reachable" in err["msg"]


def test_agent_socket_without_listener_is_refused(shim: Path, sock_dir: Path) -> None:
    sock = sock_dir / "dead.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(sock))  # bound but never listening: what a crashed agent leaves behind
    try:
        err = cni_error(run_shim(shim, cni_env("DEL", sock), json.dumps(CONF)))
    finally:
        s.close()
    assert err["code"] == 11
    assert err["msg"].endswith(f"{sock}: Connection refused")


def test_request_shape_and_reply_relayed(shim: Path, sock_dir: Path) -> None:
    payload = b'{"cniVersion":"1.0.0","interfaces":[{"name":"eth0"}],"ips":[]}'  # no trailing newline
    tricky = 'q"uote b\\ack\nnew\ttab \x01 caf\u00e9 \u65e5\u672c \U0001f680 \x7f'
    conf = dict(CONF, note=tricky, agent_timeout=5)
    stdin = json.dumps(conf, ensure_ascii=False) + "\n\x00after-nul"
    env = cni_env("ADD", sock_dir / "a.sock", CNI_ARGS=tricky)
    with FakeAgent(sock_dir / "a.sock", reply=b"0\n" + payload) as agent:
        proc = run_shim(shim, env, stdin)
    assert proc.returncode == 0, proc
    assert proc.stdout == payload
    [req] = agent.parsed()
    assert set(req) == {"env", "stdin"}
    assert req["stdin"] == stdin
    assert req["env"] == {k: v for k, v in env.items() if k.startswith("CNI_")}


def test_only_set_variables_are_sent(shim: Path, sock_dir: Path) -> None:
    env = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c1", "CNI_NETNS": "",
           "CALICO_LITE_AGENT_SOCKET": str(sock_dir / "a.sock")}
    with FakeAgent(sock_dir / "a.sock", reply=b"0\n") as agent:
        proc = run_shim(shim, env, "")
    assert (proc.returncode, proc.stdout) == (0, b"")
    [req] = agent.parsed()
    assert req == {"env": {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c1", "CNI_NETNS": ""}, "stdin": ""}


@pytest.mark.parametrize("code", [1, 7, 11, 255])
def test_agent_exit_code_relayed(shim: Path, sock_dir: Path, code: int) -> None:
    payload = json.dumps({"cniVersion": "1.0.0", "code": code, "msg": "from agent"}).encode() + b"\n"
    with FakeAgent(sock_dir / "a.sock", reply=f"{code}\n".encode() + payload):
        proc = run_shim(shim, cni_env("CHECK", sock_dir / "a.sock"), json.dumps(CONF))
    assert proc.returncode == code
    assert proc.stdout == payload


def test_large_reply_relayed_verbatim(shim: Path, sock_dir: Path) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB, every byte value, newlines included
    with FakeAgent(sock_dir / "a.sock", reply=b"0\n" + payload):
        proc = run_shim(shim, cni_env("STATUS", sock_dir / "a.sock"), json.dumps(CONF))
    assert proc.returncode == 0
    assert proc.stdout == payload


def test_agent_socket_from_config_and_env_override(shim: Path, sock_dir: Path) -> None:
    conf = dict(CONF, agent_socket=str(sock_dir / "conf.sock"))
    with FakeAgent(sock_dir / "conf.sock", reply=b"0\nfrom-conf") as by_conf:
        proc = run_shim(shim, cni_env("ADD"), json.dumps(conf))
        assert proc.stdout == b"from-conf"
        with FakeAgent(sock_dir / "env.sock", reply=b"0\nfrom-env") as by_env:
            proc = run_shim(shim, cni_env("ADD", sock_dir / "env.sock"), json.dumps(conf))
            assert proc.stdout == b"from-env"
    assert len(by_conf.requests) == 1 and len(by_env.requests) == 1


def test_top_level_cni_version_wins_over_nested(shim: Path, sock_dir: Path) -> None:
    conf = {"prevResult": {"cniVersion": "0.4.0", "agent_socket": "/nope"}, "cniVersion": "0.3.1"}
    err = cni_error(run_shim(shim, cni_env("ADD", sock_dir / "absent.sock"), json.dumps(conf)))
    assert err["cniVersion"] == "0.3.1"
    assert str(sock_dir / "absent.sock") in err["msg"]


@pytest.mark.parametrize(("accepting", "timeout"), [(True, 1), (False, 1), (True, "1")],
                         ids=["silent-agent", "wedged-accept", "timeout-as-string"])
def test_slow_agent_times_out(shim: Path, sock_dir: Path, accepting: bool, timeout: int | str) -> None:
    sock = sock_dir / "slow.sock"
    conf = dict(CONF, agent_timeout=timeout)
    with FakeAgent(sock, reply=None, accepting=accepting):
        proc = run_shim(shim, cni_env("ADD", sock), json.dumps(conf))  # returns: no hang
    err = cni_error(proc)
    assert err["code"] == 11
    assert str(sock) in err["msg"] and "within 1 s" in err["msg"]


def test_oversized_input_rejected_before_contacting_agent(shim: Path, sock_dir: Path) -> None:
    big = json.dumps(dict(CONF, pad="x" * (1024 * 1024)))
    with FakeAgent(sock_dir / "a.sock") as agent:
        proc = run_shim(shim, cni_env("ADD", sock_dir / "a.sock"), big)
        agent.sync()
        assert agent.requests == []
    err = cni_error(proc)
    assert err["code"] == 6
    assert "exceeds 1 MiB" in err["msg"]
    assert err["cniVersion"] == "1.0.0"


def test_exactly_one_mib_is_accepted(shim: Path, sock_dir: Path) -> None:
    head = json.dumps(CONF)[:-1] + ', "pad": "'
    stdin = head + "x" * (1024 * 1024 - len(head) - 2) + '"}'
    assert len(stdin) == 1024 * 1024
    with FakeAgent(sock_dir / "a.sock", reply=b"0\nok") as agent:
        proc = run_shim(shim, cni_env("ADD", sock_dir / "a.sock"), stdin)
    assert (proc.returncode, proc.stdout) == (0, b"ok")
    assert agent.parsed()[0]["stdin"] == stdin


def test_missing_cni_command(shim: Path, sock_dir: Path) -> None:
    with FakeAgent(sock_dir / "a.sock") as agent:
        proc = run_shim(shim, cni_env(None, sock_dir / "a.sock"), json.dumps(CONF))
        agent.sync()
        assert agent.requests == []
    err = cni_error(proc)
    assert (err["code"], err["msg"]) == (4, "CNI_COMMAND is not set")


@pytest.mark.parametrize("reply", [b"", b"0", b"hello\n{}", b"\n{}", b"-1\n{}", b"1234\n{}"],
                         ids=["empty", "no-newline", "not-a-number", "blank-line", "negative", "too-big"])
def test_malformed_reply(shim: Path, sock_dir: Path, reply: bytes) -> None:
    sock = sock_dir / "bad.sock"
    with FakeAgent(sock, reply=reply):
        err = cni_error(run_shim(shim, cni_env("ADD", sock), json.dumps(CONF)))
    assert err["code"] == 11
    assert err["msg"].startswith(f"malformed reply from calico-lite agent at {sock}")


def test_add_latency_figure(shim: Path, sock_dir: Path, capsys: pytest.CaptureFixture) -> None:
    """Figure for the report (printed, never asserted): shim ADD round trip vs `sh -c true`."""
    env = cni_env("ADD", sock_dir / "a.sock", CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=default")
    stdin = json.dumps(CONF).encode()

    def median_ms(argv: list[str]) -> float:
        times = []
        for _ in range(50):
            t0 = time.perf_counter()
            proc = subprocess.run(argv, env=env, input=stdin, capture_output=True, timeout=RUN_TIMEOUT)
            times.append((time.perf_counter() - t0) * 1000)
            assert proc.returncode == 0, proc
        return statistics.median(times)

    with FakeAgent(sock_dir / "a.sock", reply=b'0\n{"cniVersion":"1.0.0"}') as agent:
        shim_ms = median_ms([str(shim)])
        sh_ms = median_ms(["sh", "-c", "true"])
    assert len(agent.requests) == 50
    with capsys.disabled():
        print(f"\n[shim] median of 50: shim ADD via fake agent {shim_ms:.2f} ms, "
              f"`sh -c true` {sh_ms:.2f} ms", file=sys.stderr)


MALFORMED = [("{", "not valid JSON"), ('{"cniVersion": "1.0.0",}', "not valid JSON"),
             ("cniVersion: 1.0.0", "not valid JSON"), ('{"a": "b\\q"}', "not valid JSON"),
             ('{"a": 01}', "not valid JSON"), ('{"a": "tab\there"}', "not valid JSON"),
             ("[1, 2]", "must be a JSON object"), ('"calico-lite"', "must be a JSON object")]


@pytest.mark.parametrize(("stdin", "why"), MALFORMED)
def test_malformed_config_is_a_decoding_error_wherever_the_agent_is(
        shim: Path, sock_dir: Path, stdin: str, why: str) -> None:
    """Undecodable config cannot name agent_socket: the shim answers the spec's code 6 itself
    (not 11 for the default socket path), and never contacts an agent."""
    with FakeAgent(sock_dir / "a.sock") as agent:
        for env in (cni_env("ADD"), cni_env("DEL", sock_dir / "a.sock")):
            err = cni_error(run_shim(shim, env, stdin))
            assert err["code"] == 6 and why in err["msg"], err
            assert err["msg"].startswith("network config on stdin ")
            assert "/var/run/calico-lite" not in err["msg"]
        agent.sync()
        assert agent.requests == []


def _python_accepts(text: str) -> bool:
    """What the agent's decoder (json, strict: no NaN) makes of the start of stdin."""
    def no_constants(name: str):
        raise ValueError(name)
    try:
        value, _ = json.JSONDecoder(parse_constant=no_constants).raw_decode(text.lstrip(" \t\r\n"))
    except ValueError:
        return False
    return isinstance(value, dict)


def test_shim_and_python_agree_on_what_is_a_json_object(shim: Path, sock_dir: Path) -> None:
    """Random near-JSON through the real shim: code 6 exactly when Python's decoder refuses
    the config (or it is not an object); otherwise the call reaches the agent."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False,
                     allow_infinity=False), st.text(max_size=8))
    values = st.recursive(leaf, lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
        max_leaves=8)
    mangle = st.sampled_from(["", "drop", "insert", "truncate"])

    with FakeAgent(sock_dir / "a.sock", reply=b"0\n{}") as agent:
        @settings(max_examples=150, deadline=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture])
        @given(values, mangle, st.integers(min_value=0, max_value=200),
               st.sampled_from(list('{}[]",:\\ ex0-.')))
        def check(value, how, at, char):
            text = json.dumps(value, ensure_ascii=False)
            at = at % (len(text) + 1)
            if how == "drop":
                text = text[:at] + text[at + 1:]
            elif how == "insert":
                text = text[:at] + char + text[at:]
            elif how == "truncate":
                text = text[:at]
            if not text.strip():
                return   # empty stdin goes to the agent (DEL with no config)
            before = len(agent.requests)
            proc = run_shim(shim, cni_env("ADD", sock_dir / "a.sock"), text)
            agent.sync()
            if _python_accepts(text):
                assert proc.returncode == 0, (text, proc.stdout)
                assert len(agent.requests) == before + 1
            else:
                assert cni_error(proc)["code"] == 6, (text, proc.stdout)
                assert len(agent.requests) == before
        check()
