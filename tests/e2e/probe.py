"""Client-side probes: each subcommand does one thing the way an app would and prints a JSON result.

The same probe runs natively inside a sandbox pod and, through ``mirror-py exec``, from the host: the two
results must match (parity), and the host run alone proves nothing leaked past the shim.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import select
import selectors
import socket
import ssl
import subprocess
import sys
import time

PROBES = {}


def probe(fn):
    PROBES[fn.__name__] = fn
    return fn


def _read_to_eof(s: socket.socket, size: int = 65536) -> bytes:
    data = b""
    while True:
        chunk = s.recv(size)
        if not chunk:
            return data
        data += chunk


def _err(exc: BaseException) -> dict:
    return {"error": type(exc).__name__, "errno": getattr(exc, "errno", None)}


@probe
def http_requests(url: str, ca: str | None = None) -> dict:
    import requests

    r = requests.get(url, timeout=10, verify=ca or True)
    return {"status": r.status_code, "body": r.json()}


@probe
def http_httpx(url: str) -> dict:
    import httpx

    with httpx.Client(timeout=10) as client:
        r = client.get(url)
    return {"status": r.status_code, "body": r.json()}


@probe
def http_httpx_async(url: str) -> dict:
    import httpx

    async def main() -> dict:
        async with httpx.AsyncClient(timeout=10) as client:
            r = await client.get(url)
            return {"status": r.status_code, "body": r.json()}

    return asyncio.run(main())


@probe
def http_aiohttp(url: str) -> dict:
    import aiohttp

    async def main() -> dict:
        async with aiohttp.ClientSession() as s, s.get(url) as r:
            return {"status": r.status, "body": await r.json()}

    return asyncio.run(main())


@probe
def redis_get(host: str, port: str, key: str) -> dict:
    import redis

    r = redis.Redis(host=host, port=int(port), socket_timeout=10)
    r.set("probe:written", "yes")
    return {"value": r.get(key).decode(), "written": r.get("probe:written").decode()}


@probe
def asyncio_echo(host: str, port: str) -> dict:
    async def main() -> dict:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"hello over asyncio")
        await writer.drain()
        writer.write_eof()
        data = await reader.read()
        peer = writer.get_extra_info("peername")
        writer.close()
        return {"echo": data.decode(), "peer": list(peer[:2])}

    return asyncio.run(main())


@probe
def socket_echo(host: str, port: str) -> dict:
    s = socket.create_connection((host, int(port)), timeout=10)
    peer = s.getpeername()
    s.sendall(b"x" * 100000)
    s.shutdown(socket.SHUT_WR)  # the server sees EOF; its echo must still arrive
    data = _read_to_eof(s)
    s.close()
    return {"received": len(data), "peer": list(peer[:2])}


@probe
def tls(host: str, port: str, ca: str) -> dict:
    ctx = ssl.create_default_context(cafile=ca)
    with socket.create_connection((host, int(port)), timeout=10) as raw, ctx.wrap_socket(
        raw, server_hostname=host
    ) as s:
        cert = s.getpeercert()
        peer = s.getpeername()
        s.sendall(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        data = _read_to_eof(s)
    body = json.loads(data.split(b"\r\n\r\n", 1)[1])
    names = [v for k, v in cert.get("subjectAltName", ()) if k == "DNS"]
    return {"body": body, "san": names, "peer": list(peer[:2])}


@probe
def tls_wrong_name(host: str, port: str, ca: str) -> dict:
    ctx = ssl.create_default_context(cafile=ca)
    try:
        with socket.create_connection((host, int(port)), timeout=10) as raw, ctx.wrap_socket(
            raw, server_hostname="wrong.example"
        ):
            return {"verified": True}
    except ssl.SSLCertVerificationError as exc:
        return {"verified": False, "reason": exc.verify_code}


@probe
def connect_error(host: str, port: str) -> dict:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(20)
    try:
        s.connect((host, int(port)))
        return {"connected": True}
    except OSError as exc:
        return _err(exc)
    finally:
        s.close()


@probe
def resolve(name: str) -> dict:
    try:
        infos = socket.getaddrinfo(name, 80, socket.AF_INET, socket.SOCK_STREAM)
        return {"addresses": sorted({i[4][0] for i in infos})}
    except socket.gaierror as exc:
        return {"error": "gaierror", "errno": exc.errno, "is_noname": exc.errno == socket.EAI_NONAME}


@probe
def threads(count: str, rounds: str = "4") -> dict:
    """Each thread resolves its own name, reads its own file and echoes its own bytes, all at once: an answer
    that reaches the wrong thread shows up as a mismatch."""
    import threading

    n, r = int(count), int(rounds)
    barrier = threading.Barrier(n)
    wrong: list[str] = []
    failed: list[str] = []

    def work(i: int) -> None:
        try:
            for k in range(r):
                barrier.wait(30)
                addr = socket.getaddrinfo(f"t{i}.pod.internal", 7000, socket.AF_INET, socket.SOCK_STREAM)[0][4]
                if addr != (f"127.0.1.{i + 1}", 7000):
                    wrong.append(f"{i}/{k} dns {addr}")
                with open(f"/srv/threads/{i}") as f:
                    text = f.read()
                if text != f"thread {i}\n" * (i + 1):
                    wrong.append(f"{i}/{k} file {text[:20]!r}")
                payload = (f"{i}:{k}:".encode() * 4096)[: 8192 + i * 512]
                with socket.create_connection(addr, timeout=20) as s:
                    s.sendall(payload)
                    s.shutdown(socket.SHUT_WR)
                    echo = _read_to_eof(s)
                if echo != payload:
                    wrong.append(f"{i}/{k} echo {len(echo)} bytes")
        except Exception as exc:
            failed.append(f"{i}: {type(exc).__name__}: {exc}")

    workers = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(120)
    return {"threads": n, "wrong": sorted(wrong), "failed": sorted(failed)}


@probe
def byname(name: str) -> dict:
    """The old resolver calls: answers, and for an unknown name the exception's class, errno and text."""
    out = {}
    for fn in (socket.gethostbyname, socket.gethostbyname_ex):
        try:
            out[fn.__name__] = fn(name)
        except OSError as exc:
            out[fn.__name__] = {"error": type(exc).__name__, "args": list(exc.args)}
    return out


@probe
def names(ip: str) -> dict:
    import platform

    out = {"hostname": socket.gethostname(), "fqdn": socket.getfqdn(), "nodename": os.uname().nodename,
           "platform_node": platform.node()}
    try:
        out["byaddr"] = socket.gethostbyaddr(ip)[0]
    except OSError as exc:
        out["byaddr"] = _err(exc)
    out["byname"] = socket.gethostbyname("localhost")
    out["nameinfo"] = list(socket.getnameinfo((ip, 8080), socket.NI_NUMERICSERV))
    return out


@probe
def nonblocking(host: str, port: str) -> dict:
    s = socket.socket()
    s.setblocking(False)
    rc = s.connect_ex((host, int(port)))
    _, writable, _ = select.select([], [s], [], 10)
    so_error = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    sel = selectors.DefaultSelector()
    s.sendall(b"ping")
    s.shutdown(socket.SHUT_WR)
    sel.register(s, selectors.EVENT_READ)
    data = b""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if sel.select(1):
            chunk = s.recv(100)
            if not chunk:
                break
            data += chunk
    s.close()
    return {"rc_ok": rc in (0, errno.EINPROGRESS), "writable": bool(writable), "so_error": so_error,
            "echo": data.decode()}


@probe
def udp(host: str, port: str) -> dict:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(10)
    s.sendto(b"one", (host, int(port)))
    data, addr = s.recvfrom(1024)
    buf = bytearray(1024)
    s.sendto(b"two", (host, int(port)))
    n, addr2 = s.recvfrom_into(buf)
    s.close()
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.settimeout(10)
    c.connect((host, int(port)))
    c.send(b"three")
    data3 = c.recv(1024)
    peer = c.getpeername()
    c.close()

    async def main() -> str:
        loop = asyncio.get_running_loop()
        got = loop.create_future()

        class P(asyncio.DatagramProtocol):
            def datagram_received(self, d: bytes, a: tuple) -> None:
                if not got.done():
                    got.set_result(d)

        transport, _ = await loop.create_datagram_endpoint(P, remote_addr=(host, int(port)))
        transport.sendto(b"four")
        d = await asyncio.wait_for(got, 10)
        transport.close()
        return d.decode()

    return {"one": data.decode(), "from": list(addr[:2]), "two": bytes(buf[:n]).decode(),
            "from2": list(addr2[:2]), "three": data3.decode(), "peer": list(peer[:2]),
            "four": asyncio.run(main())}


def _addr(a) -> list:
    return [a[0], a[1]] if isinstance(a, tuple) else a


def _attempt(fn):
    """The result of ``fn()``, or the error it raised, as a JSON-able value: results are compared, not
    exceptions thrown at the probe runner."""
    try:
        return fn()
    except OSError as exc:
        return {"error": type(exc).__name__, "errno": exc.errno}


@probe
def dup_views(host: str, tcp_port: str, udp_port: str) -> dict:
    """Peer and local addresses through every Python object and descriptor of one socket, and a socket that
    keeps working when the descriptor it was made from is closed."""
    s = socket.create_connection((host, int(tcp_port)), timeout=10)
    views = {
        "dup": s.dup(),
        "fromfd": socket.fromfd(s.fileno(), s.family, s.type),
        "fileno": socket.socket(s.family, s.type, fileno=os.dup(s.fileno())),
    }
    own_name = s.getsockname()
    out: dict = {"peer": _addr(s.getpeername()), "sock_host": own_name[0]}
    for name, v in views.items():
        out[name] = {"peer": _addr(v.getpeername()), "same_sockname": v.getsockname() == own_name}
    s.close()  # the other descriptors still hold the socket
    d = views["dup"]
    out["after_close"] = _addr(d.getpeername())
    d.sendall(b"still here")
    d.shutdown(socket.SHUT_WR)
    out["echo_after_close"] = _read_to_eof(d).decode()
    for v in views.values():
        v.close()

    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(5)
    u.connect((host, int(udp_port)))
    ud = u.dup()
    out["udp_dup_peer"] = _addr(ud.getpeername())
    u.close()
    ud.send(b"dup")
    out["udp_dup_echo"] = _attempt(lambda: ud.recv(1024).decode())
    ud.close()
    return out


@probe
def udp_shared_with_child(host: str, port: str) -> dict:
    """A forked child closes its copy of a connected UDP socket; the parent's socket keeps working."""
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(5)
    u.connect((host, int(port)))
    u.send(b"before")
    first = _attempt(lambda: u.recv(1024).decode())
    pid = os.fork()
    if pid == 0:
        u.close()
        os._exit(0)
    os.waitpid(pid, 0)
    u.send(b"after")
    second = _attempt(lambda: u.recv(1024).decode())
    u.close()
    return {"before": first, "after": second}


@probe
def udp_connected(host: str, port: str, other_port: str) -> dict:
    """A connected UDP socket: the source every receive call reports, ``sendto``/``sendmsg`` to its peer and to
    another address (the other server records where that datagram came from), and ``sendmsg`` on an unconnected
    socket."""
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.settimeout(5)
    c.connect((host, int(port)))
    out: dict = {}
    c.send(b"a")
    out["recvfrom"] = _attempt(lambda: (lambda r: [r[0].decode(), _addr(r[1])])(c.recvfrom(1024)))
    c.send(b"c")
    buf = bytearray(64)
    out["recvfrom_into"] = _attempt(
        lambda: (lambda r: [bytes(buf[: r[0]]).decode(), _addr(r[1])])(c.recvfrom_into(buf))
    )
    c.send(b"d")
    out["recvmsg"] = _attempt(lambda: (lambda r: [r[0].decode(), _addr(r[3])])(c.recvmsg(1024)))
    c.sendto(b"e", (host, int(port)))
    out["sendto_peer"] = _attempt(lambda: c.recv(1024).decode())
    c.sendmsg([b"f", b"g"])
    out["sendmsg"] = _attempt(lambda: c.recv(1024).decode())
    c.sendmsg([b"h"], [], 0, (host, int(port)))
    out["sendmsg_peer"] = _attempt(lambda: c.recv(1024).decode())
    token = os.urandom(8).hex().encode()
    c.sendto(b"to-other:" + token, (host, int(other_port)))
    token2 = os.urandom(8).hex().encode()
    c.sendmsg([b"to-other:", token2], [], 0, (host, int(other_port)))
    own_port = c.getsockname()[1]
    q = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    q.settimeout(5)
    seen = []
    for t in (token, token2):
        q.sendto(b"?seen:to-other:" + t, (host, int(other_port)))
        seen.append(_attempt(lambda: json.loads(q.recvfrom(1024)[0][5:])))
    out["other_saw_our_port"] = [isinstance(x, list) and x[1] == own_port for x in seen]
    c.send(b"i")  # the other server's echoes were filtered out: the next datagram is our peer's
    out["after_other"] = _attempt(lambda: c.recv(1024).decode())
    c.close()
    q.sendmsg([b"un", b"connected"], [], 0, (host, int(port)))
    out["unconnected_sendmsg"] = _attempt(lambda: (lambda r: [r[0].decode(), _addr(r[1])])(q.recvfrom(1024)))
    q.close()

    async def main() -> list:
        loop = asyncio.get_running_loop()
        got = loop.create_future()

        class P(asyncio.DatagramProtocol):
            def datagram_received(self, d: bytes, a: tuple) -> None:
                if not got.done():
                    got.set_result([d.decode(), _addr(a)])

        transport, _ = await loop.create_datagram_endpoint(P, remote_addr=(host, int(port)))
        transport.sendto(b"aio")
        try:
            return await asyncio.wait_for(got, 5)
        finally:
            transport.close()

    out["asyncio"] = asyncio.run(main())
    return out


@probe
def ipv6(host: str, tcp_port: str, udp_port: str, v6only: str) -> dict:
    """An AF_INET6 socket (optionally IPV6_V6ONLY) to ``host``: TCP echo and the addresses it reports, and UDP."""
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
    s.settimeout(10)
    try:
        s.connect((host, int(tcp_port)))
    except OSError as exc:
        s.close()
        return {"connect": _err(exc)}
    out: dict = {"peer": list(s.getpeername()), "sock_host": s.getsockname()[0]}
    s.sendall(b"over six")
    s.shutdown(socket.SHUT_WR)
    out["echo"] = _read_to_eof(s).decode()
    s.close()
    u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    u.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
    u.settimeout(5)
    u.sendto(b"six", (host, int(udp_port)))
    out["udp"] = _attempt(lambda: (lambda r: [r[0].decode(), list(r[1])])(u.recvfrom(1024)))
    u.close()
    return out


@probe
def connect_timeout(host: str, port: str, seconds: str) -> dict:
    """A connect whose socket timeout expires, with connect() and with connect_ex()."""
    out = {}
    for how in ("connect", "connect_ex"):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(float(seconds))
        try:
            out[how] = getattr(s, how)((host, int(port)))
        except OSError as exc:
            out[how] = {"type": type(exc).__name__, "args": list(exc.args), "errno": exc.errno, "str": str(exc)}
        finally:
            s.close()
    return out


@probe
def refused_words(host: str, port: str) -> dict:
    """What a refused connect says: the exception's args and text, and redis-py's message built from them."""
    import redis

    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.connect((host, int(port)))
        plain = None
    except OSError as exc:
        plain = {"type": type(exc).__name__, "args": list(exc.args), "str": str(exc)}
    finally:
        s.close()
    try:
        redis.Redis(host=host, port=int(port), socket_timeout=10).ping()
        said = None
    except redis.ConnectionError as exc:
        said = str(exc)
    return {"socket": plain, "redis": said}


@probe
def env(*names_: str) -> dict:
    return {n: os.environ.get(n) for n in names_}


@probe
def child_process(url: str) -> dict:
    code = (
        "import urllib.request, json, os;"
        f"print(json.dumps({{'body': json.loads(urllib.request.urlopen({url!r}, timeout=10).read()),"
        "'env': os.environ.get('POD_ONLY')}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    return {"child": json.loads(out.stdout) if out.returncode == 0 else out.stderr[-500:]}


@probe
def forked(url: str) -> dict:
    import urllib.request

    first = json.loads(urllib.request.urlopen(url, timeout=10).read())  # the parent's RPC connection exists
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            body = json.loads(urllib.request.urlopen(url, timeout=10).read())
            os.write(w, json.dumps(body).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        data += chunk
    os.waitpid(pid, 0)
    again = json.loads(urllib.request.urlopen(url, timeout=10).read())
    return {"parent": first["server"], "child": json.loads(data)["server"], "after": again["server"]}


@probe
def user_sitecustomize() -> dict:
    return {"marker": os.environ.get("USER_SITECUSTOMIZE_RAN"), "module": sys.modules["sitecustomize"].__file__}


@probe
def sink(host: str, port: str, megabytes: str) -> dict:
    total = int(megabytes) << 20
    block = os.urandom(1 << 20)
    digest = hashlib.sha256()
    s = socket.create_connection((host, int(port)), timeout=60)
    start = time.perf_counter()
    sent = 0
    while sent < total:
        s.sendall(block)
        digest.update(block)
        sent += len(block)
    s.shutdown(socket.SHUT_WR)
    reply = _read_to_eof(s, 4096)
    elapsed = time.perf_counter() - start
    s.close()
    remote_hex, count = reply.decode().split()
    return {"match": remote_hex == digest.hexdigest(), "count": int(count), "sent": sent,
            "mb_per_s": sent / elapsed / 1e6}


@probe
def many_streams(host: str, port: str, count: str, kilobytes: str) -> dict:
    n, size = int(count), int(kilobytes) * 1024

    async def one(i: int) -> bool:
        payload = hashlib.sha256(str(i).encode()).digest() * (size // 32)
        reader, writer = await asyncio.open_connection(host, int(port))

        async def send() -> None:
            writer.write(payload)
            await writer.drain()
            writer.write_eof()

        sender = asyncio.ensure_future(send())
        echoed = await reader.read(-1)
        await sender
        writer.close()
        return hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()

    async def main() -> list[bool]:
        return await asyncio.gather(*(one(i) for i in range(n)))

    results = asyncio.run(main())
    return {"ok": sum(results), "total": n}


@probe
def stalled(host: str, slow_port: str, sink_port: str, megabytes: str) -> dict:
    """Fills one stream whose server never reads, then times a transfer on another stream."""
    slow = socket.create_connection((host, int(slow_port)), timeout=10)
    slow.setblocking(False)
    stuck = 0
    chunk = b"s" * 65536
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            stuck += slow.send(chunk)
        except BlockingIOError:
            if not select.select([], [slow], [], 0.5)[1]:
                break
    result = sink(host, sink_port, megabytes)
    slow.close()
    result["stuck_bytes"] = stuck
    return result


def main() -> None:
    name, *args = sys.argv[1:]
    try:
        result = PROBES[name](*args)
    except Exception as exc:
        result = {"exception": type(exc).__name__, "message": str(exc), **_err(exc)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
