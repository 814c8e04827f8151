"""Incoming traffic end to end: the target's clients (in the host's network namespace, not the pod's) talk to
the sandbox pod's port 8080, and a local app listening under mirror-py gets a copy (mirror) or the traffic
itself (steal, whole or filtered per HTTP request)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import MIRROR_PY, ROOT, terminate

APP = str(Path(__file__).with_name("incoming_app.py"))
PORT = 8080  # the pod's HTTP server ("server": "podip") listens on 0.0.0.0:8080


# ------------------------------------------------------------------------------------------------ helpers
class Served:
    """A local app running under ``mirror-py exec`` against the pod."""

    def __init__(self, proc: subprocess.Popen, log: Path, ready: dict) -> None:
        self.proc = proc
        self.log = log
        self.ready = ready
        self.stderr = ""

    def stats(self) -> dict:
        """The agent's counters for this session's subscriptions, through the session's RPC socket."""
        return self._ask("incoming_stats")

    def info(self) -> dict:
        """What ``mirror-py session status --json`` shows of this session."""
        return self._ask("info")

    def _ask(self, op: str) -> dict:
        import struct

        with socket.socket(socket.AF_UNIX) as s:
            s.connect(self.ready["session"])
            body = json.dumps({"op": op}).encode()
            s.sendall(struct.pack(">I", len(body)) + body)
            f = s.makefile("rb")
            (size,) = struct.unpack(">I", f.read(4))
            return json.loads(f.read(size))["ok"]

    def seen(self) -> list[dict]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]


@contextlib.contextmanager
def serving(pod, tmp_path: Path, kind: str = "http", port: int = PORT, *, mode: str | None = None,
            config: str | None = None, name: str = "local", env: dict | None = None,
            extra: list[str] | None = None) -> Iterator[Served]:
    log = tmp_path / f"{name}-{kind}-{port}.log"
    args = ["exec", "--target", f"pid/{pod.pid}", *(["--incoming", mode] if mode else [])]
    if config is not None:
        conf = tmp_path / f"{name}.toml"
        conf.write_text(config)
        args += ["--config", str(conf)]
    full_env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    proc = subprocess.Popen([*MIRROR_PY, *args, *(extra or []), "--", sys.executable, APP, kind, str(port),
                             str(log), name], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=full_env, cwd=str(ROOT), start_new_session=True)
    served = None
    try:
        ready = _wait_ready(proc)
        served = Served(proc, log, ready)
        yield served
    finally:
        err = terminate(proc, timeout=20)
        if served is not None:
            served.stderr = err


def _wait_ready(proc: subprocess.Popen, timeout: float = 30) -> dict:
    import selectors

    sel = selectors.DefaultSelector()
    assert proc.stdout is not None
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sel.select(0.2):
            line = proc.stdout.readline()
            if line.startswith("READY "):
                time.sleep(0.3)  # listen() has subscribed; the agent's capture or rules are in place
                return json.loads(line[6:])
            if not line and proc.poll() is not None:
                break
    proc.kill()
    _, err = proc.communicate()
    raise AssertionError(f"the app did not get ready: {err[-3000:]}")


def get(host: str, path: str, headers: dict | None = None, conn: http.client.HTTPConnection | None = None,
        port: int = PORT) -> dict:
    own = conn is None
    c = conn or http.client.HTTPConnection(host, port, timeout=10)
    c.request("GET", path, headers=headers or {})
    r = c.getresponse()
    body = r.read()
    if own:
        c.close()
    assert r.status == 200, (r.status, body)
    return json.loads(body)


def chains(pod) -> list[str]:
    out = subprocess.run(["ip", "netns", "exec", pod.netns, "iptables", "-w", "-t", "nat", "-S"],
                         capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if "MIRRORPY" in line]


def wait_for(predicate, timeout: float = 5.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def agent_pids(pod) -> list[int]:
    """The mirror-py agents and dead-man helpers running in the pod's network namespace."""
    ns = os.stat(f"/run/netns/{pod.netns}")
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        ours = b"mirror-py" in cmdline
        if (st.st_dev, st.st_ino) == (ns.st_dev, ns.st_ino) and ours and b"-I\0-c" in cmdline:
            found.append(int(entry))
    return found


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


# -------------------------------------------------------------------------------------------------- mirror
def test_mirror_1000_requests_all_served_by_the_pod_and_copied(pod, tmp_path):
    """Every request is answered by the pod; the local app sees every one of them. What a copy may miss, and
    is not missed here: connections opened before the subscription (none are), and packets the kernel drops
    for a full capture buffer (a 32 MiB buffer holds far more than this load)."""
    def one(i: int) -> dict:
        return get(pod.ip, f"/m{i}")

    baseline = timed(lambda: one(-1), 300)
    with serving(pod, tmp_path, mode="mirror") as app:
        answers = [one(i) for i in range(1000)]
        mirrored = timed(lambda: one(-2), 300)
        assert all(a["server"] == "podip" for a in answers)
        assert wait_for(lambda: len({e["path"] for e in app.seen()} & {f"/m{i}" for i in range(1000)}) == 1000,
                        timeout=15), f"the app saw {len(app.seen())} of 1000"
        seen = {e["path"]: e for e in app.seen()}
        # The copy looks like the original connection: the client's address, the pod's address and port.
        host_side = answers[0]["client"][0]
        assert seen["/m0"]["peer"][0] == host_side and seen["/m0"]["client"][0] == host_side
        assert seen["/m0"]["sockname"] == [pod.ip, PORT]
        assert chains(pod) == []  # mirroring touches no rule
    p50_direct, p50_mirror = statistics.median(baseline), statistics.median(mirrored)
    # Within noise: the copy is taken off the wire; a generous bound for a shared 2-CPU machine.
    assert p50_mirror < p50_direct * 1.5 + 0.0005, (p50_direct, p50_mirror)
    assert "mirrored to the app's listener" in app.stderr or "Traceback" not in app.stderr


# --------------------------------------------------------------------------------------------------- steal
def test_steal_everything_goes_to_the_local_app_with_the_clients_address(pod, tmp_path):
    with serving(pod, tmp_path, mode="steal"):
        conn = http.client.HTTPConnection(pod.ip, PORT, timeout=10)
        answers = [get(pod.ip, f"/s{i}", conn=conn) for i in range(20)]
        client_port = conn.sock.getsockname()[1]
        conn.close()
        answers += [get(pod.ip, f"/n{i}") for i in range(20)]
        assert {a["server"] for a in answers} == {"local"}
        first = answers[0]
        assert first["peer"] == first["client"] and first["client"][1] == client_port
        assert first["sockname"] == [pod.ip, PORT]
        assert len(chains(pod)) >= 3
        # A client inside the pod (a sidecar, a probe through loopback) is stolen too: the OUTPUT rule on lo.
        for host in ("127.0.0.1", pod.ip):
            code = f"import urllib.request; print(urllib.request.urlopen('http://{host}:{PORT}/inpod').read().decode())"
            inside = json.loads(pod.exec_output([sys.executable, "-c", code]).strip().splitlines()[-1])
            assert inside["server"] == "local" and inside["sockname"] == [host, PORT], inside
    assert chains(pod) == []
    assert get(pod.ip, "/after")["server"] == "podip"


FILTER = '[network.incoming]\nmode = "steal"\n[network.incoming.http_filter]\nheader = "^x-user: me$"\n'


def _post(conn: http.client.HTTPConnection, path: str, body: bytes, headers: dict, chunked: bool = False) -> dict:
    if chunked:
        conn.putrequest("POST", path)
        for k, v in {**headers, "Transfer-Encoding": "chunked"}.items():
            conn.putheader(k, v)
        conn.endheaders()
        for part in (body[:3], body[3:]):
            conn.send(b"%x;ext=1\r\n%s\r\n" % (len(part), part))
        conn.send(b"0\r\nX-Trailer: t\r\n\r\n")
    else:
        conn.request("POST", path, body=body, headers=headers)
    r = conn.getresponse()
    data = r.read()
    assert r.status == 200, data
    return json.loads(data)


def _expect_continue(sock: socket.socket, path: str, user: str | None) -> tuple[bytes, dict]:
    """Sends headers with Expect: 100-continue, waits for the interim response, then the body."""
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n"
    if user:
        head += f"X-User: {user}\r\n"
    sock.sendall(head.encode() + b"\r\n")
    interim = b""
    while b"\r\n\r\n" not in interim:
        interim += sock.recv(1)
    sock.sendall(b"hello")
    f = sock.makefile("rb")
    status = f.readline()
    length = 0
    while True:
        line = f.readline()
        if line in (b"\r\n", b""):
            break
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    body = json.loads(f.read(length))
    f.close()
    assert status.startswith(b"HTTP/1.1 200"), status
    return interim, body


def test_steal_with_a_header_filter_splits_one_keepalive_connection(pod, tmp_path):
    with serving(pod, tmp_path, config=FILTER) as app:
        conn = http.client.HTTPConnection(pod.ip, PORT, timeout=10)
        order = []
        for i in range(10):
            mine = i % 2 == 0
            ans = get(pod.ip, f"/f{i}", {"X-User": "me"} if mine else {"X-User": "someone-else"}, conn=conn)
            order.append(ans["server"])
        local_port = conn.sock.getsockname()[1]
        # Bodies: Content-Length and chunked (extensions and trailers pass untouched), both ways.
        assert _post(conn, "/p1", b"abcdef", {"X-User": "me"})["body"] == "abcdef"
        remote = _post(conn, "/p2", b"abcdef", {"X-User": "nope"})
        assert remote["server"] == "podip" and remote["body"] == "abcdef"
        assert _post(conn, "/p3", b"chunky", {"X-User": "me"}, chunked=True)["body"] == "chunky"
        remote = _post(conn, "/p4", b"chunky", {}, chunked=True)
        assert remote["server"] == "podip" and remote["body"] == "chunky"
        assert conn.sock.getsockname()[1] == local_port, "all of it on one connection"
        conn.close()
        assert order == ["local", "podip"] * 5
        local_seen = [e for e in app.seen() if e["path"].startswith("/f")]
        assert [e["path"] for e in local_seen] == [f"/f{i}" for i in range(0, 10, 2)]
        assert local_seen[0]["client"][1] == local_port  # the app saw the real client connection
        # Expect: 100-continue, matching and not.
        for user, server in (("me", "local"), (None, "podip")):
            with socket.create_connection((pod.ip, PORT), timeout=10) as s:
                interim, body = _expect_continue(s, "/e", user)
            assert interim.startswith(b"HTTP/1.1 100"), interim
            assert body["server"] == server and body["body"] == "hello"
        # Matching is case-insensitive on the "Name: value" line.
        assert get(pod.ip, "/case", {"x-USER": "ME"})["server"] == "local"


def test_filtered_port_passes_non_http_through_untouched(pod, tmp_path):
    with serving(pod, tmp_path, "echo", config=FILTER, env={"ECHO_PORT": "7000"}):
        for payload in (b"\x16\x03\x01binary-not-http\x00\xff", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"hello echo"):
            with socket.create_connection((pod.ip, 7000), timeout=10) as s:
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
            assert data == payload, "the pod's echo server answered, byte for byte"
        # A client that never speaks (a server-first protocol, a TCP probe) reaches the pod's app too.
        with socket.create_connection((pod.ip, 7000), timeout=10) as s:
            time.sleep(2.5)
            s.sendall(b"late")
            s.shutdown(socket.SHUT_WR)
            assert s.recv(100) == b"late"


def _read_response(s: socket.socket) -> dict:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += s.recv(65536)
    assert head.startswith(b"HTTP/1.1 200"), head
    return json.loads(body)


def test_a_silent_local_app_hands_stolen_clients_to_the_target(pod, tmp_path):
    """The app never answers /hang: after steal_timeout the target's app answers instead (the client has
    received nothing from the laptop), whole connections and filtered requests alike."""
    with serving(pod, tmp_path, config='[network.incoming]\nmode = "steal"\nsteal_timeout = 1\n') as app:
        assert get(pod.ip, "/hang-whole")["server"] == "podip"
        assert get(pod.ip, "/fine")["server"] == "local"
        assert [e["path"] for e in app.seen()] == ["/hang-whole", "/fine"]
        assert [s["timed_out"] for s in app.stats()["subs"].values()] == [1]
    config = FILTER.replace('mode = "steal"\n', 'mode = "steal"\nsteal_timeout = 1\n')
    with serving(pod, tmp_path, config=config) as app:
        conn = http.client.HTTPConnection(pod.ip, PORT, timeout=10)
        assert get(pod.ip, "/hang-filtered", {"X-User": "me"}, conn=conn)["server"] == "podip"
        assert get(pod.ip, "/after", {"X-User": "me"}, conn=conn)["server"] == "local"
        conn.close()
        assert [e["path"] for e in app.seen()][-2:] == ["/hang-filtered", "/after"]


def test_a_slow_upload_the_local_app_keeps_taking_is_not_cut(pod, tmp_path):
    """steal_timeout bounds a silent local side, not a long request: an upload the app keeps reading for
    longer than the timeout (answered only at its end) stays with the app, whole or filtered."""
    chunk, count = b"u" * (128 << 10), 16

    def slowly():
        for _ in range(count):
            time.sleep(0.25)
            yield chunk

    for config in ('[network.incoming]\nmode = "steal"\nsteal_timeout = 1\n',
                   FILTER.replace('mode = "steal"\n', 'mode = "steal"\nsteal_timeout = 1\n')):
        with serving(pod, tmp_path, config=config) as app:
            conn = http.client.HTTPConnection(pod.ip, PORT, timeout=20)
            conn.request("POST", "/upload", body=slowly(),
                         headers={"Content-Length": str(len(chunk) * count), "X-User": "me"})
            r = conn.getresponse()
            body = json.loads(r.read())
            conn.close()
            assert r.status == 200 and body["server"] == "local" and len(body["body"]) == len(chunk) * count
            assert [s["timed_out"] for s in app.stats()["subs"].values()] == [0]


def test_a_client_that_trickles_its_request_head_goes_to_the_target(pod, tmp_path):
    """Slowloris on a filtered port: a head not complete within header_timeout of its first byte is not held
    by the agent; the connection goes to the target's app (which answers it like any client of its own)."""
    config = FILTER.replace('mode = "steal"\n', 'mode = "steal"\nheader_timeout = 1\n')
    with serving(pod, tmp_path, config=config) as app:
        for first, rest in ((b"GET /slow HTTP/1.1\r\nHost: x\r\n", b"X-User: me\r\n\r\n"),
                            (b"GE", b"T /slower HTTP/1.1\r\nX-User: me\r\n\r\n")):
            with socket.create_connection((pod.ip, PORT), timeout=10) as s:
                s.sendall(first)
                time.sleep(1.5)
                s.sendall(rest)
                assert _read_response(s)["server"] == "podip"
        assert get(pod.ip, "/quick", {"X-User": "me"})["server"] == "local"
        assert [e["path"] for e in app.seen()] == ["/quick"]
        assert [s["slow_heads"] for s in app.stats()["subs"].values()] == [1]


def test_sigkill_of_the_agent_gives_the_port_back_within_5_s(pod, tmp_path):
    with serving(pod, tmp_path, mode="steal"):
        assert get(pod.ip, "/k1")["server"] == "local"
        assert chains(pod)
        agents = agent_pids(pod)
        assert agents, "no agent found in the pod"
        main = [pid for pid in agents if _parent(pid) not in agents]  # the dead-man helper is forked from it
        assert len(main) == 1, agents
        killed_at = time.monotonic()
        os.kill(main[0], signal.SIGKILL)
        assert wait_for(lambda: chains(pod) == [], timeout=5), chains(pod)
        assert get(pod.ip, "/k2")["server"] == "podip"
        assert time.monotonic() - killed_at < 5


def test_stale_rules_of_a_crashed_session_are_removed_on_start(pod, tmp_path):
    with serving(pod, tmp_path, mode="steal"):
        assert get(pod.ip, "/c1")["server"] == "local"
        for pid in agent_pids(pod):  # the agent and its dead-man helper: as if the container was killed
            os.kill(pid, signal.SIGKILL)
        left = chains(pod)
        assert left, "the rules stayed behind"
    assert chains(pod) == left
    # A later session (any mode) finds them without a live owner and removes them.
    out = subprocess.run([*MIRROR_PY, "exec", "--target", f"pid/{pod.pid}", "--", sys.executable, "-c",
                          "import time; time.sleep(1.5)"], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=str(ROOT))
    assert out.returncode == 0, out.stderr
    assert chains(pod) == []
    assert "removed the steal rules that a crashed mirror-py session left" in out.stderr
    assert get(pod.ip, "/c2")["server"] == "podip"


def test_two_sessions_with_different_filters_share_the_port(pod, tmp_path):
    def config(user: str, local: int) -> str:
        return (f'[network.incoming]\nmode = "steal"\nport_mapping = [[{local}, {PORT}]]\n'
                f'[network.incoming.http_filter]\nheader = "^x-user: {user}$"\n')

    with serving(pod, tmp_path, port=18080, name="alice", config=config("alice", 18080)), \
            serving(pod, tmp_path, port=28080, name="bob", config=config("bob", 28080)):
        conn = http.client.HTTPConnection(pod.ip, PORT, timeout=10)
        users = ["alice", "bob", None, "bob", "alice", None]
        got = [get(pod.ip, f"/t{i}", {"X-User": u} if u else {}, conn=conn)["server"] for i, u in enumerate(users)]
        conn.close()
        assert got == ["alice", "bob", "podip", "bob", "alice", "podip"]
        assert len([c for c in chains(pod) if c.startswith("-N ")]) == 2
    assert chains(pod) == []


# ------------------------------------------------------------------------------------------ kinds of server
@pytest.mark.parametrize("kind", ["asyncio", "aiohttp", "fork", "exec", "spawn", "mp-spawn"])
def test_servers_and_inherited_listeners_get_stolen_connections(pod, tmp_path, kind):
    with serving(pod, tmp_path, kind, mode="steal") as app:
        answers = []
        for i in range(6):
            with socket.create_connection((pod.ip, PORT), timeout=10) as s:
                ours = s.getsockname()
                conn = http.client.HTTPConnection(pod.ip, PORT, timeout=10)
                conn.sock = s
                answers.append((get(pod.ip, f"/{kind}{i}", conn=conn), ours))
        for answer, ours in answers:
            assert answer["server"] == "local", answer
            assert answer["peer"] == [ours[0], ours[1]] and answer["client"] == [ours[0], ours[1]]
            assert answer["sockname"] == [pod.ip, PORT]
        if kind == "asyncio":
            assert answers[0][0]["transport_sockname"] == [pod.ip, PORT]
        if kind == "aiohttp":
            assert answers[0][0]["remote"] == answers[0][1][0]
        if kind == "fork":
            assert len({a["pid"] for a, _ in answers}) >= 1 and app.ready["pid"] not in {a["pid"] for a, _ in answers}


def test_a_taken_port_is_listened_on_elsewhere_and_reported_as_requested(pod, tmp_path):
    with socket.create_server(("0.0.0.0", 18181)):  # the port is taken on this machine
        conf = f'[network.incoming]\nmode = "steal"\nport_mapping = [[18181, {PORT}]]\n'
        with serving(pod, tmp_path, port=18181, config=conf) as app:
            assert app.ready["sockname"] == ["0.0.0.0", 18181], "getsockname reports the requested address"
            answer = get(pod.ip, "/taken")
            assert answer["server"] == "local" and answer["sockname"] == [pod.ip, PORT]


def test_closing_the_listener_gives_the_port_back(pod, tmp_path):
    with serving(pod, tmp_path, "close-after", mode="steal", env={"CLOSE_AFTER": "2"}) as app:
        assert [get(pod.ip, f"/x{i}")["server"] for i in range(2)] == ["local", "local"]
        assert wait_for(lambda: not [c for c in chains(pod) if "REDIRECT" in c], timeout=5), chains(pod)
        assert get(pod.ip, "/after-close")["server"] == "podip"
        assert app.proc.poll() is None  # the app goes on; only its listener is gone
